"""The consumer under test: its engine settings and group options, a calibrated model
trained on synthetic discs, and what its batcher logs."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pytest

from configs.settings import Settings
from consumers import FrameConsumer
from edge.simulator.discs import make_ng, make_ok
from engine import Engine
from tests.helpers.images import SIZE
from tests.helpers.settings import tiny_settings

MM_PER_PX = 0.1
ENGINE_SETTINGS = dict(image_size=SIZE, batch_max=16, batch_wait_ms=20.0, model_poll_s=0.5)
# Tansu holds a JoinGroup for half the session timeout: shorter sessions, quicker tests
GROUP_OPTIONS = {"session_timeout_ms": 4000, "heartbeat_interval_ms": 800}
TOO_SLOW = "full batch too slow for the poll interval"  # consumers.batcher.check_batch_time


@dataclass(frozen=True)
class Trained:
    """A calibrated model saved in a store shared by the session's tests (read-only)."""

    models_dir: Path
    engine: Engine
    version: str
    threshold: float

    def settings(self, **overrides: object) -> Settings:
        return tiny_settings(**{"models_dir": self.models_dir, **ENGINE_SETTINGS, **overrides})

    def consumer(self, settings: Settings) -> FrameConsumer:
        """An in-process group member sharing the session's engine."""
        return FrameConsumer(settings, engine=self.engine, consumer_options=dict(GROUP_OPTIONS))


def train_model(engine: Engine, seeds: range) -> tuple[object, float]:
    """A model from synthetic OK discs, calibrated with leave-one-out OK and a few NG scores."""
    fit = engine.fit([make_ok(s, SIZE).image for s in seeds], mm_per_px=MM_PER_PX)
    ng = engine.image_scores(fit.model, [make_ng(1000 + i, SIZE).image for i in range(8)])
    fit.model.calibration = engine.calibrate(fit.model, list(fit.ok_scores), list(ng))
    assert fit.model.threshold is not None
    return fit.model, float(fit.model.threshold)


def batcher_logs(caplog: pytest.LogCaptureFixture, message: str) -> list[logging.LogRecord]:
    """What ``consumers.batcher`` logged as ``message`` (its pacing warnings and notes)."""
    return [
        r for r in caplog.records if r.name == "consumers.batcher" and r.getMessage() == message
    ]
