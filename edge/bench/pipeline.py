"""``bdi bench pipeline``: camera -> Kafka -> ``bdi consume`` -> verdicts, end to end.

One run, one JSON object:

1. a broker (``BDI_KAFKA_BOOTSTRAP``, else a local one: Tansu, or a one-node Apache Kafka with
   ``--broker kafka``), fresh uniquely named topics, a
   model trained here on synthetic OK discs and calibrated with held-out OK / NG discs,
   saved into a temporary store;
2. ``--consumers`` real ``bdi consume`` processes on that store; the run waits until they
   own every partition and have answered warm-up frames (not counted);
3. ``--rounds`` times: an **engine-only baseline** (the same frames, decoded, through
   ``Engine.infer`` in batches of ``--batch`` in this process, the consumers idle), then a
   **max-rate run** (all frames published at once as pre-encoded PNGs, the consumers drain
   the backlog; ``pipeline_img_per_s`` = frames / (first send -> last verdict));
4. **paced**: as many new frames at 70 % of the best max rate; send -> verdict latency;
5. with ``--models``, the model sweep (:mod:`edge.bench.pipeline_models`).

Every process and the local broker are stopped at the end, on errors and on Ctrl-C.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from configs.settings import load_settings
from edge.bench.pipeline_report import Round, pipeline_result

if TYPE_CHECKING:
    import numpy as np

    from consumers import LocalBroker
    from consumers.apache_kafka import KafkaCluster
    from edge.bench.consumers import ConsumerGroup, PhaseResult
    from edge.simulator.camera import CameraFrame
    from engine import Engine
    from engine.patchcore import PatchCoreModel
    from store import ModelStore

RECIPE, ROLE, ROI = "bench", "Master1", "inspection-1"
HELD_OUT_SEED = 3_000_000  # calibration discs: seeds neither training nor cameras use
Say = Callable[[str], None]


@dataclass(frozen=True)
class BenchConfig:
    frames: int = 400
    batch: int = 16
    size: int = 224
    consumers: int = 1
    train_images: int = 30
    ng_fraction: float = 0.05
    paced_share: float = 0.7  # of the measured maximum rate
    bootstrap: str | None = None  # None: BDI_KAFKA_BOOTSTRAP, else a local broker
    broker: str = "tansu"  # the local broker: "tansu" or "kafka" (one Apache Kafka node)
    consumer_options: tuple[str, ...] = ()  # KEY=VALUE, as `bdi consume --consumer-option`
    rounds: int = 1  # engine-only + max-rate pairs; the best of each is reported
    models: tuple[int, ...] = ()  # then the model sweep (edge/bench/pipeline_models.py)

    @property
    def partitions(self) -> int:
        return max(4, self.consumers)

    @property
    def timeout_s(self) -> float:
        """Deadline for a phase's verdicts to *arrive* (nothing is judged on it)."""
        return 120.0 + self.frames


def _say(message: str) -> None:
    print(f"[bench pipeline] {message}", file=sys.stderr, flush=True)


# --- the run -------------------------------------------------------------------------------
def run_pipeline_benchmark(cfg: BenchConfig, say: Say = _say) -> dict[str, Any]:
    """The whole benchmark; the JSON object as a dict."""
    return PipelineRun(cfg, say).run()


@dataclass
class Streams:
    """Pre-encoded frames (generated before anything is timed) and the burst's images."""

    warm: list[CameraFrame]
    burst: list[CameraFrame]
    paced: list[CameraFrame]
    images: list[np.ndarray]  # ``burst`` decoded, for the engine-only baseline


class PipelineRun:
    def __init__(self, cfg: BenchConfig, say: Say = _say) -> None:
        self.cfg = cfg
        self.say = say
        self.tag = uuid.uuid4().hex[:10]
        self.topics = {k: f"bench-{self.tag}.{k}" for k in ("frames", "verdicts", "dlq")}
        self.bootstrap = cfg.bootstrap or os.environ.get("BDI_KAFKA_BOOTSTRAP", "").strip()
        self.broker: LocalBroker | KafkaCluster | None = None
        self.group: ConsumerGroup | None = None
        self.options: dict[str, Any] = {}  # TLS / SASL of the clients made here

    def run(self) -> dict[str, Any]:
        load_avg = round(os.getloadavg()[0], 2)
        with tempfile.TemporaryDirectory(prefix="bdi-bench-") as tmp:
            try:
                engine, runs = self._run(Path(tmp))
            finally:  # errors and Ctrl-C too
                if self.group is not None:
                    self.group.stop()
                if self.broker is not None:
                    self.broker.stop()
        threads = _consumer_threads(self.cfg.consumers)
        return pipeline_result(self.cfg, engine, self._broker_name(), runs, load_avg, threads)

    def _broker_name(self) -> str:
        from consumers.apache_kafka import KAFKA_VERSION

        if self.broker is None:
            return self.bootstrap
        if self.cfg.broker == "kafka":
            return f"local apache-kafka {KAFKA_VERSION}"
        return "local tansu"

    def _start_broker(self) -> LocalBroker | KafkaCluster:
        from consumers import LocalBroker
        from consumers.apache_kafka import KafkaCluster

        if self.cfg.broker == "kafka":
            self.say("starting Apache Kafka (one KRaft node)")
            return KafkaCluster(nodes=1).start()
        return LocalBroker().start()

    def _run(self, tmp: Path) -> tuple[Engine, dict[str, Any]]:
        from consumers.security import plaintext_overrides, security_options
        from edge.bench.consumers import ConsumerGroup
        from engine import Engine
        from store import ModelStore

        cfg, say = self.cfg, self.say
        if not self.bootstrap:
            self.broker = self._start_broker()
            self.bootstrap = self.broker.bootstrap
            say(f"local broker at {self.bootstrap}")
        overrides = _overrides(cfg, self.bootstrap, self.topics, tmp / "models", self.tag)
        if self.broker is not None:  # the settings' TLS / SASL are for BDI_KAFKA_BOOTSTRAP's
            overrides |= plaintext_overrides()
        settings = load_settings(**overrides)
        self.options = security_options(settings)
        _create_topics(self.bootstrap, self.topics, cfg.partitions, self.options)
        threads = _consumer_threads(cfg.consumers)
        env = consumer_env({**overrides, **({"torch_threads": threads} if threads else {})})
        options = [f"--consumer-option={o}" for o in cfg.consumer_options]
        command = [sys.executable, "-m", "edge.cli", "consume", *options]
        self.group = ConsumerGroup(command, env, tmp, settings.shutdown_grace_s, say)
        self.group.start(cfg.consumers)  # they import and load the backbone meanwhile
        say(f"{cfg.consumers} consumer(s) starting; training on {cfg.train_images} OK discs")
        engine = Engine.from_settings(settings)
        model = train_model(engine, cfg.size, cfg.train_images)
        store = ModelStore(settings)
        store.save_model(store.ref(RECIPE, ROLE, ROI), model)
        say(f"model {model.version} saved, threshold {model.threshold:.3f}")
        return engine, asyncio.run(self._measure(engine, model, self._streams(), store))

    def _streams(self) -> Streams:
        from edge.simulator.camera import synthetic_frames
        from engine.images import decode_image

        cfg, tag = self.cfg, self.tag
        n_warm = 2 * cfg.batch * cfg.consumers
        burst = synthetic_frames(cfg.frames, cfg.size, 1, cfg.ng_fraction, f"max-{tag}")
        return Streams(
            warm=synthetic_frames(n_warm, cfg.size, 7, cfg.ng_fraction, f"warm-{tag}"),
            burst=burst,
            paced=synthetic_frames(cfg.frames, cfg.size, 2, cfg.ng_fraction, f"paced-{tag}"),
            images=[decode_image(f.value) for f in burst],
        )

    async def _measure(
        self, engine: Engine, model: PatchCoreModel, streams: Streams, store: ModelStore
    ) -> dict[str, Any]:
        from edge.bench.consumers import check_warm_up, misjudged, recount, run_phase
        from edge.bench.pipeline_models import ModelSweep, RoundRobinCamera
        from edge.simulator.camera import VerdictReader

        cfg, say, group = self.cfg, self.say, self.group
        assert group is not None
        camera = RoundRobinCamera(
            self.bootstrap, self.topics["frames"], RECIPE, ROLE, ROI, options=self.options
        )
        await camera.start()
        reader = await VerdictReader(
            self.bootstrap, self.topics["verdicts"], options=self.options
        ).start()
        timeout = cfg.timeout_s

        async def phase(frames: list[CameraFrame], fps: float | None = None) -> PhaseResult:
            return await run_phase(camera, reader, frames, fps=fps, timeout_s=timeout,
                                   check=group.check)  # fmt: skip

        try:
            await group.wait_assigned(cfg.partitions, timeout)
            warm = await phase(streams.warm)
            check_warm_up(warm, misjudged(streams.warm, reader.verdicts), say)
            say("consumers warm")
            rounds = []
            for index in range(cfg.rounds):
                frames = streams.burst
                if index:  # same images, new ids: every round's frames are new to the group
                    frames = [replace(f, frame_id=f"{f.frame_id}-r{index}") for f in frames]
                rounds.append(await self._round(engine, model, streams.images, frames, phase))
            fps = cfg.paced_share * max(r.result.img_per_s for r in rounds)
            say(f"paced run at {fps:.1f} img/s")
            paced = await phase(streams.paced, fps)
            t_end = time.monotonic() + 1.0  # late duplicates (a redelivery) still count
            while time.monotonic() < t_end:
                await reader.poll(timeout_ms=100)
            by_models: list[dict[str, Any]] | None = None
            if cfg.models:
                ids = (RECIPE, ROLE, ROI)
                sweep = ModelSweep(cfg.models, *ids, store, model, camera, reader, group, say)
                by_models = await sweep.run(streams.burst, phase, cfg.rounds)
        finally:
            await camera.stop()
            await reader.stop()
        for r in rounds:
            r.result = recount(r.result, r.frames, reader)
        paced = recount(paced, streams.paced, reader)
        return {"rounds": rounds, "paced": paced, "paced_fps": fps, "models": by_models}

    async def _round(
        self,
        engine: Engine,
        model: PatchCoreModel,
        images: list[np.ndarray],
        frames: list[CameraFrame],
        phase: Callable[[list[CameraFrame]], Awaitable[PhaseResult]],
    ) -> Round:
        """Engine-only baseline (consumers idle), then the max-rate run, back to back."""
        from edge.bench.consumers import cpu_seconds

        assert self.group is not None
        engine_s, engine_cpu = await asyncio.to_thread(
            engine_baseline, engine, model, images, self.cfg.batch
        )
        broker = self.broker.process if self.broker is not None else None
        pids = self.group.pids + ([broker.pid] if broker is not None else [])
        cpu0 = cpu_seconds(pids)
        result = await phase(frames)
        cpu = [b - a for a, b in zip(cpu0, cpu_seconds(pids), strict=True)]
        self.say(
            f"engine {len(frames) / engine_s:.1f} img/s, pipeline {result.img_per_s:.1f} img/s"
        )
        return Round(engine_s, engine_cpu, frames, result, cpu)


def _overrides(
    cfg: BenchConfig, bootstrap: str, topics: dict[str, str], models_dir: Path, tag: str
) -> dict[str, Any]:
    """The settings both the consumers and the baseline run with."""
    return {
        "backbone": "efficientnet_lite0",
        "backbone_weights": "",  # the packaged weights, whatever the environment says
        "require_cuda": False,
        "image_size": cfg.size,
        "batch_max": cfg.batch,
        "engine_batch_size": cfg.batch,  # one backbone call per consumer batch
        "models_dir": models_dir,
        "kafka_bootstrap": bootstrap,
        "kafka_group": f"bench-{tag}",
        "kafka_topic_frames": topics["frames"],
        "kafka_topic_verdicts": topics["verdicts"],
        "kafka_topic_dlq": topics["dlq"],
        "kafka_topic_heatmaps": "",
        "kafka_exactly_once": False,
    }


def _consumer_threads(consumers: int) -> int | None:
    """Several consumers on one CPU box share its cores instead of each taking all."""
    if consumers == 1 or os.environ.get("BDI_TORCH_THREADS"):
        return None
    return max(1, (os.cpu_count() or 1) // consumers)


def consumer_env(overrides: dict[str, Any]) -> dict[str, str]:
    """This process's environment with ``BDI_*`` set from ``overrides`` (legacy aliases of
    the same settings removed, so they cannot win over ours)."""
    from configs.settings import env_names

    env = dict(os.environ)
    for name, value in overrides.items():
        for var in env_names(name).split(" / "):
            env.pop(var, None)
        text = ("1" if value else "0") if isinstance(value, bool) else str(value)
        env[f"BDI_{name.upper()}"] = text
    return env


def _create_topics(
    bootstrap: str, topics: dict[str, str], partitions: int, options: dict[str, Any]
) -> None:
    from consumers import ensure_topics

    wanted = {topics["frames"]: partitions, topics["verdicts"]: partitions, topics["dlq"]: 1}
    asyncio.run(ensure_topics(bootstrap, wanted, options=options))


def train_model(engine: Engine, size: int, n_train: int) -> PatchCoreModel:
    """Fit on synthetic OK discs; calibrate with leave-one-out OK scores plus held-out OK
    and NG discs (every defect kind), so that the cameras' NG discs come out NG."""
    from edge.simulator.camera import training_images
    from edge.simulator.discs import make_ng, make_ok
    from engine.images import decode_image

    fit = engine.fit([decode_image(b) for b in training_images(n_train, size)])
    model = fit.model
    held_ok = [make_ok(HELD_OUT_SEED + i, size).image for i in range(12)]
    held_ng = [make_ng(HELD_OUT_SEED + 100 + i, size).image for i in range(12)]
    ok = [*fit.ok_scores.tolist(), *engine.image_scores(model, held_ok).tolist()]
    model.calibration = engine.calibrate(model, ok, engine.image_scores(model, held_ng).tolist())
    return model


def engine_baseline(
    engine: Engine, model: PatchCoreModel, images: Sequence[np.ndarray], batch: int
) -> tuple[float, float]:
    """``Engine.infer`` over ``images`` in batches, as a consumer calls it: wall seconds,
    and CPU seconds of this process meanwhile."""
    from engine import InferItem

    batches = [images[i : i + batch] for i in range(0, len(images), batch)]
    engine.infer([InferItem(model, im) for im in batches[0]])  # warm-up
    c0, t0 = os.times(), time.perf_counter()
    for chunk in batches:
        engine.infer([InferItem(model, im) for im in chunk])
    wall, c1 = time.perf_counter() - t0, os.times()
    return wall, (c1.user + c1.system) - (c0.user + c0.system)
