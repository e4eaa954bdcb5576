"""Store fixtures: a fresh store per test, and two small real models trained once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from store import ModelStore
from tests.helpers.images import random_images
from tests.helpers.store import Trained, tiny_settings


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
