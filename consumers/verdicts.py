"""The verdict message: schema ``bdi.verdict/1``, built from an inference or a failure.

This module holds the last line of the "never OK because something failed" rule: whatever
the engine answered, an ``OK``/``NG`` without a finite score and threshold leaves here as
``ERROR``. See ``docs/KAFKA.md`` for the field-by-field contract.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson

from consumers.frames import Decoded, Failure, Source
from engine.errors import NON_FINITE

if TYPE_CHECKING:
    from engine import Inference, Verdict
    from engine.provenance import Provenance
    from engine.regions import Region

SCHEMA = "bdi.verdict/1"
MAX_REGIONS = 32  # largest first; bounds the message size on a badly damaged part
# the frame's own headers, copied into its verdict under the same names
FRAME_FIELDS = ("frame_id", "frame_id_derived", "part_id", "recipe_id", "role_id", "roi_id")


@dataclass(frozen=True)
class Timings:
    queue_ms: float  # fetched -> inference started (batching, decoding, previous batch)
    decode_ms: float
    inference_ms: float  # the engine call for the whole batch this frame was in
    total_ms: float  # fetched -> verdict built (delivery to the broker not included)

    def to_dict(self) -> dict[str, float]:
        return {name: round(value, 3) for name, value in asdict(self).items()}


@dataclass(frozen=True)
class VerdictMessage:
    """One frame's ``bdi.verdict/1`` message; the fields in the order the JSON has them."""

    frame_id: str
    frame_id_derived: bool
    part_id: str | None
    recipe_id: str | None
    role_id: str | None
    roi_id: str | None
    verdict: Verdict
    score: float | None
    threshold: float | None
    # conformal p-value against the model's held-out OK scores (null: none, or no score)
    p_value: float | None
    drift: bool  # the model's drift monitor was in drift when this verdict was made
    regions: list[dict[str, Any]]  # Region.to_dict(), as the REST API's regions
    regions_total: int
    model_version: str | None
    # provenance (docs/KAFKA.md): the threshold's identity, the image's, the code's and the
    # scoring settings'; null where unknown (no model: no calibration_version)
    calibration_version: str | None
    image_sha256: str | None  # of the record's value as received; null only for a tombstone
    code_version: str
    settings_fingerprint: str
    source: Source
    timings: Timings
    error_class: str | None
    error: str | None
    dead_lettered: bool
    produced_at: str

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"schema": SCHEMA}
        data.update((f.name, getattr(self, f.name)) for f in fields(self))
        data["source"] = asdict(self.source)
        data["timings"] = self.timings.to_dict()
        return data

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict())


def finite(value: float | None) -> float | None:
    """``value`` as a float, or ``None`` when absent or NaN/inf (JSON has no NaN)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


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
    provenance: Provenance,
    model_version: str | None = None,
    drift: bool = False,
) -> VerdictMessage:
    """The verdict of one frame. ``failure`` (input, model) wins over ``inference``; an
    inference that fails :func:`inference_failure` becomes ``ERROR``/``NO_MODEL``.
    ``provenance``: this process's code version and scoring-settings fingerprint."""
    meta = decoded.frame.meta
    calibration_version = None
    if failure is None and inference is not None:
        failure = inference_failure(inference)
    if failure is None and inference is None:
        failure = Failure("InferenceError", "no inference result for this frame")
    score = threshold = p_value = None
    regions: list[Region] = []
    if inference is not None:
        score, threshold = finite(inference.score), finite(inference.threshold)
        model_version = inference.model_version or model_version
        calibration_version = inference.calibration_version
        regions = list(inference.regions) if failure is None else []
        p_value = finite(inference.p_value) if failure is None else None
    verdict: Verdict = failure.verdict if failure is not None else _ok_ng(inference)
    return VerdictMessage(
        **{name: getattr(meta, name) for name in FRAME_FIELDS},
        verdict=verdict,
        score=score,
        threshold=threshold,
        p_value=p_value,
        drift=drift,
        model_version=model_version,
        calibration_version=calibration_version,
        image_sha256=decoded.image_sha256,
        code_version=provenance.code_version,
        settings_fingerprint=provenance.settings_fingerprint,
        source=decoded.frame.source,
        timings=timings,
        regions=[r.to_dict() for r in regions[:MAX_REGIONS]],
        regions_total=len(regions),
        error_class=None if failure is None else failure.error_class,
        error=None if failure is None else failure.message,
        dead_lettered=failure is not None,
        produced_at=now_iso(),
    )


def _ok_ng(inference: Inference | None) -> Verdict:
    assert inference is not None and inference.verdict in ("OK", "NG")
    return "NG" if inference.verdict == "NG" else "OK"
