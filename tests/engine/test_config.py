"""The engine's config: the settings it reads, and nothing that ties it to them at run time."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from engine.config import EngineConfig
from tests.helpers.settings import tiny_settings


def test_from_settings_copies_each_engine_setting() -> None:
    settings = tiny_settings(knn_mode="exact", area_mm2_thr=2.5, engine_batch_size=3)
    config = EngineConfig.from_settings(settings)
    for field in dataclasses.fields(EngineConfig):
        assert getattr(config, field.name) == getattr(settings, field.name), field.name
    assert (config.knn_mode, config.area_mm2_thr, config.engine_batch_size) == ("exact", 2.5, 3)


def test_the_config_is_frozen() -> None:
    config = EngineConfig.from_settings(tiny_settings())
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.image_size = 28  # type: ignore[misc]


def test_the_engine_does_not_import_the_settings() -> None:
    """Data flows one way: the front doors read the settings and hand the engine its config."""
    code = "import sys, engine, engine.artifact; sys.exit('configs' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
