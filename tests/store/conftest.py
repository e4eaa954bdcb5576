"""Store fixtures: a fresh store per test, and two small real models trained once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from store import ModelStore
from tests.conftest import tiny_settings as shared_tiny_settings

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Trained:
    """A trained model and its serialised files (``engine.artifact.to_bytes``)."""

    model: Any
    files: dict[str, bytes]

    @property
    def version(self) -> str:
        return self.model.version


def tiny_settings(models_dir: Path, **overrides: Any) -> Any:
    """The shared tiny settings, with the store rooted at ``models_dir``."""
    return shared_tiny_settings(models_dir=models_dir, **overrides)


def random_images(seed: int, n: int = 4, size: int = 64) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


@pytest.fixture(scope="session")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from engine import Engine

    return Engine.from_settings(tiny_settings(tmp_path_factory.mktemp("engine")))


@pytest.fixture(scope="session")
def make_trained(engine: Any) -> Any:
    """``make_trained(seed, mm_per_px=0.1) -> Trained``, memoised for the session."""
    from engine.artifact import to_bytes

    made: dict[tuple[int, float | None], Trained] = {}

    def make(seed: int, mm_per_px: float | None = 0.1) -> Trained:
        if (seed, mm_per_px) not in made:
            model = engine.fit(random_images(seed), mm_per_px=mm_per_px).model
            made[(seed, mm_per_px)] = Trained(model, to_bytes(model))
        return made[(seed, mm_per_px)]

    return make


def recalibrated(trained: Trained, threshold: float) -> Trained:
    """The same model (same version, bank and index) with another threshold."""
    import dataclasses

    from engine.artifact import to_bytes

    calibration = dataclasses.replace(trained.model.calibration, threshold=threshold)
    model = dataclasses.replace(trained.model, calibration=calibration)
    return Trained(model, to_bytes(model))


@pytest.fixture(scope="session")
def model_a(make_trained: Any) -> Trained:
    return make_trained(1)


@pytest.fixture(scope="session")
def model_b(make_trained: Any) -> Trained:
    return make_trained(2)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "models"


@pytest.fixture
def store(root: Path) -> ModelStore:
    return ModelStore(tiny_settings(root))
