"""From fetched frames to outcomes: decode (worker threads), resolve models once per batch,
run the engine's batched inference, and turn every answer into a verdict plus the records
to publish (verdict, dead letter for every ERROR / NO_MODEL, heatmap for NG when enabled).

:meth:`BatchProcessor.infer` is blocking CPU/GPU work: the runner calls it in its
inference thread, so the event loop keeps heartbeating while it runs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Protocol

from consumers.dlq import dead_letter
from consumers.drift import DriftMonitor, canonical_ids
from consumers.frames import Decoded, Failure, Frame, decode_frame
from consumers.models import ModelResolver, preload_keys
from consumers.outcome import Outcome, OutRecord
from consumers.verdicts import Timings, VerdictMessage, build_verdict, inference_failure
from engine import EngineConfig, InferItem
from engine.provenance import Provenance

if TYPE_CHECKING:
    from typing import Any

    from configs.settings import Settings
    from engine import Inference
    from store import ModelStore

log = logging.getLogger(__name__)

# a frame that reached no engine slot without a recorded failure: never let it become OK
_NOT_SCORED = Failure("InferenceError", "frame was not scored")


class InferenceEngine(Protocol):
    def infer(self, items: Sequence[InferItem]) -> list[Inference]: ...


class BatchProcessor:
    def __init__(
        self,
        settings: Settings,
        engine: InferenceEngine,
        resolver: ModelResolver,
        drift: DriftMonitor | None = None,
    ):
        self.settings = settings
        self.drift = drift or DriftMonitor.from_settings(settings)
        self.engine = engine
        self.resolver = resolver
        self.max_bytes = int(settings.max_frame_mb * 1024 * 1024)
        self.heatmaps = settings.kafka_topic_heatmaps
        self.provenance = Provenance.of(EngineConfig.from_settings(settings))

    @classmethod
    def for_consumer(
        cls, settings: Settings, engine: InferenceEngine, store: ModelStore, consumer: str
    ) -> BatchProcessor:
        """A consumer's processor: models hot-reloaded from ``store``, drift reported
        under the store for ``GET /state`` as ``consumer``."""
        resolver = ModelResolver(store, settings.model_poll_s, cache=store.cache)
        drift = DriftMonitor.from_settings(settings, canonical_ids(store), store.root, consumer)
        return cls(settings, engine, resolver, drift)

    def preload(self, store: ModelStore) -> BatchProcessor:
        """Blocking: load the models of the store's inspection plans (or every stored model
        of a recipe without one) within the cache's budget, each ready to score, so that
        the first frames do not pay for loads; logs what was loaded. Returns itself."""
        from engine.footprint import prepare
        from store.cache import MB

        try:
            done = self.resolver.preload(preload_keys(store), prepare)
        except Exception:  # a start-up aid, never a reason not to start
            log.exception("models not preloaded; frames load them as they come")
            return self
        cache = store.cache
        log.info(
            "models preloaded",
            extra={
                "models": len(done.sizes_mb),
                "seconds": round(done.seconds, 3),
                "resident_mb": round(cache.resident_bytes / MB, 1),
                "budget_mb": None if cache.max_bytes is None else round(cache.max_bytes / MB, 1),
                "sizes_mb": done.sizes_mb,
                "left_out": done.left_out,
            },
        )
        if done.left_out:
            log.warning(
                "model cache full at start-up: not every model was preloaded",
                extra={"left_out": done.left_out, "max_entries": cache.max_entries},
            )
        return self

    def report(self) -> dict[str, Any]:
        """What the health port shows of the models: their versions, drift, and the model
        cache against its budget (each loaded model's resident size)."""
        cache = self.resolver.cache
        return {
            "models": self.resolver.versions(),
            "drift": self.drift.snapshot(),
            "model_cache": cache.report() if cache is not None else None,
        }

    async def decode(self, frames: Sequence[Frame], pool: Executor) -> list[Decoded]:
        """Decode a batch in ``pool``'s threads, order kept."""
        loop = asyncio.get_running_loop()
        max_px, checksum = self.settings.max_image_pixels, self.settings.require_checksum
        jobs = [
            loop.run_in_executor(pool, decode_frame, f, self.max_bytes, max_px, checksum)
            for f in frames
        ]
        return list(await asyncio.gather(*jobs))

    def infer(self, batch: Sequence[Decoded]) -> list[Outcome]:
        """Blocking: models, engine, verdicts. Never raises: even an unexpected bug turns
        into ERROR verdicts for the batch rather than a consumer crash-looping on it."""
        try:
            outcomes = self._infer(batch)
            self.drift.save()
            return outcomes
        except Exception as exc:
            log.exception("batch processing failed", extra={"frames": len(batch)})
            failure = Failure.of(exc)
            zero = Timings(0.0, 0.0, 0.0, 0.0)
            return [
                self._outcome(
                    d,
                    build_verdict(d, None, failure, zero, provenance=self.provenance),
                    None,
                    failure,
                )
                for d in batch
            ]

    def _infer(self, batch: Sequence[Decoded]) -> list[Outcome]:
        t_start = time.monotonic()
        failures, items, slots = self._plan(batch)
        inferences, engine_failure = self._run_engine(items)
        infer_ms = (time.monotonic() - t_start) * 1e3
        outcomes = []
        for d, failure, slot in zip(batch, failures, slots, strict=True):
            inference = inferences[slot] if slot is not None and inferences else None
            if failure is None:
                failure = engine_failure if slot is not None else _NOT_SCORED
            if failure is None and inference is not None:
                failure = inference_failure(inference)
            timings = Timings(
                queue_ms=(t_start - d.frame.fetched_at) * 1e3,
                decode_ms=d.decode_ms,
                inference_ms=infer_ms,
                total_ms=(time.monotonic() - d.frame.fetched_at) * 1e3,
            )
            p_value = inference.p_value if inference is not None and failure is None else None
            version = inference.model_version if inference is not None else None
            drift, alerts = self.drift.observe(d.frame.meta.model_key, version, p_value)
            verdict = build_verdict(
                d, inference, failure, timings, provenance=self.provenance, drift=drift
            )
            outcome = self._outcome(d, verdict, inference, failure)
            outcome.records.extend(alerts)  # delivered (committed) with the verdict
            outcomes.append(outcome)
        return outcomes

    def _plan(
        self, batch: Sequence[Decoded]
    ) -> tuple[list[Failure | None], list[InferItem], list[int | None]]:
        """Per frame: its failure so far, and its slot in the engine's items (or ``None``).
        Models are resolved once for the whole batch: one version per model per batch."""
        keys = [d.frame.meta.model_key for d in batch if d.failure is None]
        models = self.resolver.resolve(k for k in keys if k is not None)
        failures: list[Failure | None] = []
        items: list[InferItem] = []
        slots: list[int | None] = []
        for d in batch:
            key = d.frame.meta.model_key
            resolved = models.get(key) if key is not None else None
            failure = d.failure or (resolved.failure if resolved is not None else None)
            failures.append(failure)
            if failure is None and resolved is not None and resolved.model is not None:
                assert d.image is not None  # decoded without failure
                mm = d.frame.meta.mm_per_px
                slots.append(len(items))
                items.append(InferItem(resolved.model, d.image, mm, want_map=bool(self.heatmaps)))
            else:
                slots.append(None)
        return failures, items, slots

    def _run_engine(self, items: list[InferItem]) -> tuple[list[Inference], Failure | None]:
        if not items:
            return [], None
        try:
            results = self.engine.infer(items)
        except Exception as exc:  # a crashed batch is ERROR for its frames, never silence
            log.exception("engine failed on a batch", extra={"frames": len(items)})
            return [], Failure.of(exc)
        if len(results) != len(items):
            message = f"engine answered {len(results)} of {len(items)} frames"
            return [], Failure("InferenceError", message)
        return results, None

    def _outcome(
        self,
        d: Decoded,
        verdict: VerdictMessage,
        inference: Inference | None,
        failure: Failure | None,
    ) -> Outcome:
        s = self.settings
        key = verdict.frame_id.encode("utf-8", errors="replace")
        value = verdict.to_json()
        records = [OutRecord(s.kafka_topic_verdicts, key, value, _verdict_headers(verdict))]
        if failure is not None:
            records.append(dead_letter(d.frame, failure, s.kafka_topic_dlq))
            _log_failure(verdict)
        elif verdict.verdict == "NG" and self.heatmaps and inference is not None:
            png = _heatmap(d, inference)
            if png is not None:
                records.append(
                    OutRecord(self.heatmaps, key, png, _verdict_headers(verdict), "skip")
                )
        return Outcome(d.frame, verdict, records)


def _verdict_headers(v: VerdictMessage) -> tuple[tuple[str, bytes], ...]:
    """A few routing headers on verdicts and heatmaps, so filters need not parse JSON."""
    pairs = {
        "frame_id": v.frame_id,
        "verdict": v.verdict,
        "recipe_id": v.recipe_id,
        "role_id": v.role_id,
        "roi_id": v.roi_id,
        "part_id": v.part_id,
        "model_version": v.model_version,
    }
    return tuple((k, val.encode()) for k, val in pairs.items() if val is not None)


def _heatmap(d: Decoded, inference: Inference) -> bytes | None:
    from engine.heatmap import heatmap_png

    if d.image is None or inference.anomaly_map is None or not inference.threshold:
        return None
    try:  # same colour scale as the engine's own heatmaps: 2x the threshold is full red
        return heatmap_png(d.image, inference.anomaly_map, 2.0 * inference.threshold)
    except Exception:  # optional output: a failed overlay must not cost the verdict
        log.exception("heatmap failed", extra={"frame_id": d.frame.meta.frame_id})
        return None


def _log_failure(v: VerdictMessage) -> None:
    log.warning(
        "frame dead-lettered",
        extra={
            "frame_id": v.frame_id,
            "verdict": v.verdict,
            "error_class": v.error_class,
            "error": v.error,
            "topic": v.source.topic,
            "partition": v.source.partition,
            "offset": v.source.offset,
        },
    )
