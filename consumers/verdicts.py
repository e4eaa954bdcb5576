"""The verdict message: schema ``bdi.verdict/1``, built from an inference or a failure.

This module holds the last line of the "never OK because something failed" rule: whatever
the engine answered, an ``OK``/``NG`` without a finite score and threshold leaves here as
``ERROR``. See ``docs/KAFKA.md`` for the field-by-field contract.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import orjson

from consumers.frames import Decoded, Failure, Source
from engine.errors import NON_FINITE

if TYPE_CHECKING:
    from engine import Inference
    from engine.regions import Region

SCHEMA = "bdi.verdict/1"
MAX_REGIONS = 32  # largest first; bounds the message size on a badly damaged part
VerdictName = Literal["OK", "NG", "ERROR", "NO_MODEL"]


@dataclass(frozen=True)
class Timings:
    queue_ms: float  # fetched -> inference started (batching, decoding, previous batch)
    decode_ms: float
    inference_ms: float  # the engine call for the whole batch this frame was in
    total_ms: float  # fetched -> verdict built (delivery to the broker not included)

    def to_dict(self) -> dict[str, float]:
        return {
            "queue_ms": round(self.queue_ms, 3),
            "decode_ms": round(self.decode_ms, 3),
            "inference_ms": round(self.inference_ms, 3),
            "total_ms": round(self.total_ms, 3),
        }


@dataclass(frozen=True)
class Verdict:
    frame_id: str
    frame_id_derived: bool
    part_id: str | None
    recipe_id: str | None
    role_id: str | None
    roi_id: str | None
    verdict: VerdictName
    score: float | None
    threshold: float | None
    model_version: str | None
    source: Source
    timings: Timings
    regions: list[dict[str, Any]] = field(default_factory=list)
    regions_total: int = 0
    error_class: str | None = None
    error: str | None = None
    dead_lettered: bool = False
    produced_at: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "frame_id": self.frame_id,
            "frame_id_derived": self.frame_id_derived,
            "part_id": self.part_id,
            "recipe_id": self.recipe_id,
            "role_id": self.role_id,
            "roi_id": self.roi_id,
            "verdict": self.verdict,
            "score": self.score,
            "threshold": self.threshold,
            "regions": self.regions,
            "regions_total": self.regions_total,
            "model_version": self.model_version,
            "source": {
                "topic": self.source.topic,
                "partition": self.source.partition,
                "offset": self.source.offset,
            },
            "timings": self.timings.to_dict(),
            "error_class": self.error_class,
            "error": self.error,
            "dead_lettered": self.dead_lettered,
            "produced_at": self.produced_at,
        }

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict())


def finite(value: float | None) -> float | None:
    """``value`` as a float, or ``None`` when absent or NaN/inf (JSON has no NaN)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def region_dict(region: Region) -> dict[str, Any]:
    x, y, w, h = region.bbox
    return {
        "bbox": [int(x), int(y), int(w), int(h)],
        "area_px": int(region.area_px),
        "area_mm2": finite(region.area_mm2),
        "max_score": finite(region.max_score),
    }


def inference_failure(inference: Inference) -> Failure | None:
    """Why an engine answer must not stand as OK/NG (``None``: it may)."""
    if inference.verdict == "ERROR":
        # the engine's own finding of a non-finite score keeps its policy name
        kind = NON_FINITE if inference.error_kind == NON_FINITE else "InferenceError"
        return Failure(kind, inference.error or "inference failed")
    if inference.verdict == "NO_MODEL":
        return Failure("UncalibratedModelError", inference.error or "no model", "NO_MODEL")
    if inference.verdict not in ("OK", "NG"):
        return Failure("InferenceError", f"unknown engine verdict {inference.verdict!r}")
    if finite(inference.score) is None:
        return Failure(NON_FINITE, f"anomaly score {inference.score!r} is not finite")
    if finite(inference.threshold) is None:
        return Failure("InvalidThresholdError", f"threshold {inference.threshold!r} is unusable")
    return None


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def build_verdict(
    decoded: Decoded,
    inference: Inference | None,
    failure: Failure | None,
    timings: Timings,
    *,
    model_version: str | None = None,
) -> Verdict:
    """The verdict of one frame. ``failure`` (input, model) wins over ``inference``; an
    inference that fails :func:`inference_failure` becomes ``ERROR``/``NO_MODEL``."""
    meta = decoded.frame.meta
    if failure is None and inference is not None:
        failure = inference_failure(inference)
    if failure is None and inference is None:
        failure = Failure("InferenceError", "no inference result for this frame")
    score = threshold = None
    regions: list[Region] = []
    if inference is not None:
        score, threshold = finite(inference.score), finite(inference.threshold)
        model_version = inference.model_version or model_version
        regions = list(inference.regions) if failure is None else []
    verdict: VerdictName = failure.verdict if failure is not None else _ok_ng(inference)
    return Verdict(
        frame_id=meta.frame_id,
        frame_id_derived=meta.frame_id_derived,
        part_id=meta.part_id,
        recipe_id=meta.recipe_id,
        role_id=meta.role_id,
        roi_id=meta.roi_id,
        verdict=verdict,
        score=score,
        threshold=threshold,
        model_version=model_version,
        source=decoded.frame.source,
        timings=timings,
        regions=[region_dict(r) for r in regions[:MAX_REGIONS]],
        regions_total=len(regions),
        error_class=None if failure is None else failure.error_class,
        error=None if failure is None else failure.message,
        dead_lettered=failure is not None,
        produced_at=now_iso(),
    )


def _ok_ng(inference: Inference | None) -> VerdictName:
    assert inference is not None and inference.verdict in ("OK", "NG")
    return "NG" if inference.verdict == "NG" else "OK"
