"""Shared fixtures: settings isolation, the real test data, a CPU engine."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from configs.settings import Settings, load_settings

REPO = Path(__file__).resolve().parents[1]


def _test_data_root() -> Path:
    return Path(os.environ.get("BDI_TEST_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never see the developer's own BDI_* / BRAKEDISC_* variables."""
    for name in list(os.environ):
        if name.startswith(("BDI_", "BRAKEDISC_")) and name != "BDI_TEST_DATA":
            monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def test_data() -> Path:
    root = _test_data_root()
    if not root.is_dir():
        pytest.skip(f"real inspection data not found at {root} (set BDI_TEST_DATA)")
    return root


@pytest.fixture(scope="session")
def metal_plate(test_data: Path) -> Path:
    path = test_data / "mpdd_metal_plate" / "metal_plate"
    if not path.is_dir():
        pytest.skip(f"{path} missing")
    return path


# The smallest real engine configuration: packaged EfficientNet-Lite0 weights, CPU, 64 px.
TINY = dict(
    backbone="efficientnet_lite0",
    require_cuda=False,
    image_size=64,
    coreset_rate=0.5,
    engine_batch_size=4,
)


def tiny_settings(**overrides: object) -> Settings:
    """Tiny CPU settings, immune to the developer's own BDI_* variables (session fixtures
    are built before the per-test environment cleaning applies)."""
    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            if name.startswith(("BDI_", "BRAKEDISC_")) and name != "BDI_TEST_DATA":
                mp.delenv(name)
        return load_settings(**{**TINY, **overrides})
