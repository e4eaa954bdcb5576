"""A trained model with its serialised files, and the tiny settings rooted at a store."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.helpers.settings import tiny_settings as shared_tiny_settings


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


def recalibrated(trained: Trained, threshold: float) -> Trained:
    """The same model (same version, bank and index) with another threshold."""
    from engine.artifact import to_bytes

    calibration = dataclasses.replace(trained.model.calibration, threshold=threshold)
    model = dataclasses.replace(trained.model, calibration=calibration)
    return Trained(model, to_bytes(model))
