"""Engine fixtures: a small CPU engine, synthetic textures and models fitted on them."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from configs.settings import Settings
from engine.config import EngineConfig
from engine.device import DeviceSpec, select_device
from engine.engine import Engine
from engine.patchcore import PatchCoreModel
from tests.helpers.images import texture, with_defect
from tests.helpers.settings import tiny_settings as shared_tiny_settings

Texture = Callable[..., np.ndarray]


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
        return Engine(EngineConfig.from_settings(tiny_settings(**overrides)), cpu_spec)

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
