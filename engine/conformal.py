"""A threshold from OK scores alone whose false-reject rate is bounded, and conformal p-values.

Split conformal (Bates, Candès, Lei, Romano, Sesia, "Testing for outliers with conformal
p-values", Ann. Statist. 2023): given the image scores ``s_1 … s_n`` of OK images that the
scoring function never saw, and a future OK frame exchangeable with them, the frame's rank
among the ``n + 1`` scores is uniform. With ``s_(k)`` the ``k``-th smallest score,
``k = ⌈(1 − α)(n + 1)⌉``, and NG meaning a score above it::

    P(an OK frame is rejected) = P(score > s_(k)) <= (n + 1 − k) / (n + 1) <= α

(equal to the bound for scores without ties; ties only make a rejection rarer). A frame is
NG at ``score >= threshold``, so the threshold is the next float above ``s_(k)``: a frame
scoring exactly ``s_(k)`` stays OK, as the bound needs. When
``n < 1/α − 1`` no calibration score is high enough (``k > n``): the bound cannot reach α,
and the record says so (``guaranteed`` false, ``needed`` calibration images).

How the engine gets exchangeable scores (a held-out split, folded into the memory bank
afterwards, which can only lower a frame's score) is told in docs/THRESHOLDS.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

METHOD = "conformal"
# how the calibration scores were obtained (ConformalRecord.split)
HELD_OUT = "held_out"
# 1/α − 1 computed in floating point (1/0.01 − 1 = 99.00000000000001) is rounded first
_EPS = 1e-9


def needed(alpha: float) -> int:
    """The fewest calibration scores for which the bound reaches ``alpha``."""
    return max(1, math.ceil((1.0 - alpha) / alpha - _EPS))


def rank(alpha: float, n: int) -> int:
    """``k = ⌈(1 − α)(n + 1)⌉``: the calibration score (1-based, ascending) that is the
    threshold. Above ``n`` when ``n`` is too small for ``alpha``."""
    return max(1, math.ceil((1.0 - alpha) * (n + 1) - _EPS))


@dataclass(frozen=True)
class ConformalRecord:
    """How a conformal threshold was chosen: what a calibration record keeps."""

    alpha: float  # the target false-reject rate
    n: int  # calibration scores
    k: int  # the threshold is the k-th smallest of them (clipped to n when unguaranteed)
    bound: float  # (n + 1 − k) / (n + 1): the guaranteed false-reject rate, <= alpha
    guaranteed: bool  # n >= needed(alpha)
    needed: int  # calibration scores alpha needs
    split: str  # how the scores were made (HELD_OUT)
    scores: tuple[float, ...]  # the calibration scores, ascending (for p-values)

    @property
    def threshold(self) -> float:
        """The next float above ``s_(k)`` (NG at ``score >= threshold``: above ``s_(k)``)."""
        return float(np.nextafter(self.scores[self.k - 1], np.inf))

    def p_value(self, score: float) -> float:
        """``(1 + #{calibration scores >= score}) / (n + 1)``: uniform on an OK frame
        exchangeable with the calibration images, small on an outlier."""
        return p_value(self._sorted, score)

    @cached_property
    def _sorted(self) -> np.ndarray:
        return np.asarray(self.scores, dtype=np.float64)

    def to_dict(self) -> dict[str, Any]:
        return {
            "alpha": self.alpha, "n": self.n, "k": self.k, "bound": self.bound,
            "guaranteed": self.guaranteed, "needed": self.needed, "split": self.split,
            "scores": list(self.scores),
        }  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ConformalRecord:
        scores = tuple(sorted(float(s) for s in data["scores"]))
        record = cls(
            alpha=float(data["alpha"]), n=int(data["n"]), k=int(data["k"]),
            bound=float(data["bound"]), guaranteed=bool(data["guaranteed"]),
            needed=int(data["needed"]), split=str(data.get("split", HELD_OUT)), scores=scores,
        )  # fmt: skip
        if record.n != len(scores) or not 1 <= record.k <= record.n:
            raise ValueError(f"conformal record of {len(scores)} scores says n={record.n}, "
                             f"k={record.k}")  # fmt: skip
        return record


def record(scores: Any, alpha: float, split: str = HELD_OUT) -> ConformalRecord:
    """The conformal choice for ``scores`` (finite, at least one) and target ``alpha``."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"target false-reject rate must be in (0, 1), got {alpha}")
    s = np.sort(np.asarray(scores, dtype=np.float64).ravel())
    n = int(s.size)
    k = rank(alpha, n)
    guaranteed = k <= n
    k = min(k, n)
    return ConformalRecord(
        alpha=float(alpha), n=n, k=k, bound=(n + 1 - k) / (n + 1), guaranteed=guaranteed,
        needed=needed(alpha), split=split, scores=tuple(float(v) for v in s),
    )  # fmt: skip


def p_value(sorted_scores: np.ndarray, score: float) -> float:
    """Conformal p-value of ``score`` against ascending calibration scores."""
    n = len(sorted_scores)
    at_or_above = n - int(np.searchsorted(sorted_scores, score, side="left"))
    return (1 + at_or_above) / (n + 1)


def miss_rate(threshold: float, ng_scores: Any) -> float:
    """Share of NG scores below ``threshold`` (judged OK)."""
    ng = np.asarray(ng_scores, dtype=np.float64).ravel()
    return float((ng < threshold).mean()) if ng.size else float("nan")
