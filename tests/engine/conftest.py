"""Engine fixtures: a small CPU engine, synthetic textures and models fitted on them."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from configs.settings import Settings
from engine.device import DeviceSpec, select_device
from engine.engine import Engine
from engine.patchcore import PatchCoreModel
from tests.conftest import tiny_settings as shared_tiny_settings

Texture = Callable[..., np.ndarray]


def texture(kind: str, seed: int, height: int = 64, width: int = 64) -> np.ndarray:
    """A noisy periodic RGB texture ``(H, W, 3)`` uint8: ``stripes`` or ``checker``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    if kind == "stripes":
        base = 0.5 + 0.5 * np.sin(2 * np.pi * yy / 8.0)
        rgb = np.stack([60 + 120 * base, 50 + 90 * base, 40 + 60 * base], -1)
    elif kind == "checker":
        base = ((yy // 8 + xx // 8) % 2).astype(np.float64)
        rgb = np.stack([30 + 40 * base, 80 + 120 * base, 150 - 60 * base], -1)
    else:
        raise ValueError(kind)
    rgb = rgb + rng.normal(0.0, 6.0, rgb.shape)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def with_defect(image: np.ndarray, y: int = 20, x: int = 24, size: int = 16) -> np.ndarray:
    """A copy of ``image`` with a bright white square pasted in."""
    out = image.copy()
    out[y : y + size, x : x + size] = 255
    return out


def tiny_settings(**overrides: object) -> Settings:
    """The shared tiny settings with the exact kNN, so engine tests see exact distances."""
    return shared_tiny_settings(**{"knn_mode": "exact", **overrides})


@pytest.fixture(scope="session")
def cpu_spec() -> DeviceSpec:
    return select_device(require_cuda=False)


@pytest.fixture(scope="session")
def make_engine(cpu_spec: DeviceSpec) -> Callable[..., Engine]:
    """Factory: a CPU engine with the tiny settings plus ``overrides``."""

    def make(**overrides: object) -> Engine:
        return Engine(tiny_settings(**overrides), cpu_spec)

    return make


@pytest.fixture(scope="session")
def tiny_engine(make_engine: Callable[..., Engine]) -> Engine:
    return make_engine()


@pytest.fixture(scope="session")
def trained_model(tiny_engine: Engine) -> Callable[[str], PatchCoreModel]:
    """Factory: a model fitted (once per session) on four images of texture ``kind``."""
    cache: dict[str, PatchCoreModel] = {}

    def get(kind: str) -> PatchCoreModel:
        if kind not in cache:
            cache[kind] = tiny_engine.fit([texture(kind, seed) for seed in range(4)]).model
        return cache[kind]

    return get


@pytest.fixture(scope="session")
def make_texture() -> Texture:
    return texture


@pytest.fixture(scope="session")
def add_defect() -> Callable[..., np.ndarray]:
    return with_defect
