"""Decision thresholds from OK scores alone, or from OK and NG scores together.

The calibration travels with the model (``<base>_calib.json``), with the statistics it
came from, so an engineer can see why a threshold is where it is.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from engine import conformal as conf
from engine.conformal import ConformalRecord
from engine.errors import EngineError

# A missed defect (NG scored as OK) ships a defective disc; a false reject costs a re-check.
NG_MISS_COST = 10.0


class CalibrationError(EngineError):
    """Scores unusable for calibration (empty, NaN/inf)."""


@dataclass(frozen=True)
class ScoreStats:
    n: int
    mean: float
    std: float
    min: float
    max: float
    p50: float
    p95: float
    p99: float

    @classmethod
    def of(cls, scores: np.ndarray) -> ScoreStats:
        s = np.asarray(scores, dtype=np.float64)
        q50, q95, q99 = np.percentile(s, [50, 95, 99])
        return cls(len(s), float(s.mean()), float(s.std()), float(s.min()), float(s.max()),
                   float(q50), float(q95), float(q99))  # fmt: skip


@dataclass(frozen=True)
class Calibration:
    threshold: float  # score >= threshold -> NG
    method: str  # "conformal", "ok_percentile" (legacy) or "ok_ng"
    percentile: float
    ok: ScoreStats
    ng: ScoreStats | None
    ok_reject_rate: float  # share of the OK scores at or above the threshold
    ng_miss_rate: float | None  # share of the NG scores below it
    created_at: float
    # the held-out OK scores and the conformal choice they give (engine.conformal): kept
    # whatever threshold is applied, for every verdict's p-value. None: a legacy model.
    conformal: ConformalRecord | None = None
    # content hash of the fields above but created_at (store.models.calibration_version):
    # named by every verdict, since a recalibration keeps the model's version. Not in the
    # file; a file's is computed from its JSON as read, so the store names the same one.
    # Never an argument: dataclasses.replace() must not carry a stale one over.
    version: str = field(default="", init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "version", _content_version(self.to_dict()))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        del data["version"]
        if self.conformal is None:
            del data["conformal"]  # as files written before the field have it
        else:
            data["conformal"] = self.conformal.to_dict()
        return data

    def p_value(self, score: float) -> float | None:
        """The conformal p-value of an image score (None without held-out OK scores)."""
        return None if self.conformal is None else self.conformal.p_value(score)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        ng = data.get("ng")
        calibration = cls(
            threshold=float(data["threshold"]),
            method=str(data.get("method", "ok_percentile")),
            percentile=float(data.get("percentile", 100.0)),
            ok=ScoreStats(**data["ok"]),
            ng=ScoreStats(**ng) if ng else None,
            ok_reject_rate=float(data.get("ok_reject_rate", 0.0)),
            ng_miss_rate=None if data.get("ng_miss_rate") is None else float(data["ng_miss_rate"]),
            created_at=float(data.get("created_at", 0.0)),
            conformal=(
                ConformalRecord.from_dict(data["conformal"]) if data.get("conformal") else None
            ),
        )
        # hashed as the file has it (a field it lacks stays absent): as the store names it
        object.__setattr__(calibration, "version", _content_version(data))
        return calibration


def _content_version(data: dict[str, Any]) -> str:
    from store.models import calibration_version  # the one definition; no torch there

    return calibration_version(data)


def _checked(scores: Any, name: str) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64).ravel()
    if s.size == 0:
        raise CalibrationError(f"no {name} scores to calibrate from")
    if not np.isfinite(s).all():
        raise CalibrationError(f"{name} scores contain NaN or infinite values")
    return s


def from_conformal(ok_scores: Any, alpha: float, percentile: float) -> Calibration:
    """Threshold with a false-reject rate of at most ``alpha`` (:mod:`engine.conformal`),
    from the scores of held-out OK images. Where there are too few for ``alpha``, the
    highest score, and the record says the bound is not guaranteed."""
    ok = _checked(ok_scores, "OK")
    record = conf.record(ok, alpha)
    return _ok_only(ok, record.threshold, conf.METHOD, percentile, record)


def from_ok(ok_scores: Any, percentile: float) -> Calibration:
    """Threshold at the ``percentile``-th OK score (the legacy OK-only method)."""
    ok = _checked(ok_scores, "OK")
    return _ok_only(ok, float(np.percentile(ok, percentile)), "ok_percentile", percentile)


def _ok_only(
    ok: np.ndarray,
    threshold: float,
    method: str,
    percentile: float,
    conformal: ConformalRecord | None = None,
) -> Calibration:
    return Calibration(
        threshold=threshold,
        method=method,
        percentile=percentile,
        ok=ScoreStats.of(ok),
        ng=None,
        ok_reject_rate=float((ok >= threshold).mean()),
        ng_miss_rate=None,
        created_at=time.time(),
        conformal=conformal,
    )


def from_ok_ng(
    ok_scores: Any, ng_scores: Any, percentile: float, conformal: ConformalRecord | None = None
) -> Calibration:
    """Threshold separating OK from NG scores.

    Separable: halfway between the highest OK and the lowest NG score. Overlapping: the
    threshold minimising ``NG_MISS_COST * misses + false rejects``, ties to the lowest
    (safest) one. ``conformal``: the model's held-out OK scores, kept for p-values.
    """
    ok = _checked(ok_scores, "OK")
    ng = _checked(ng_scores, "NG")
    if ok.max() < ng.min():
        threshold = float((ok.max() + ng.min()) / 2.0)
    else:
        candidates = np.unique(np.concatenate([ok, ng]))
        misses = np.searchsorted(np.sort(ng), candidates, side="left")  # NG below t
        rejects = len(ok) - np.searchsorted(np.sort(ok), candidates, side="left")  # OK >= t
        cost = NG_MISS_COST * misses + rejects
        threshold = float(candidates[int(np.argmin(cost))])
    return Calibration(
        threshold=threshold,
        method="ok_ng",
        percentile=percentile,
        ok=ScoreStats.of(ok),
        ng=ScoreStats.of(ng),
        ok_reject_rate=float((ok >= threshold).mean()),
        ng_miss_rate=float((ng < threshold).mean()),
        created_at=time.time(),
        conformal=conformal,
    )
