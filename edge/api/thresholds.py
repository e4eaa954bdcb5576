"""Which threshold a calibration stores, and the conformal choice reported beside it.

``apply="balanced"`` is the threshold from the given OK (and NG) scores; ``"conformal"`` the
k-th smallest held-out OK score of the model (:mod:`engine.conformal`) at the target
false-reject rate. Either way the answer reports both, with the NG miss rate of each, so an
engineer can see what a stated false-reject rate costs in missed defects
(docs/THRESHOLDS.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import NamedTuple

import numpy as np

from edge.api.errors import BdiError
from edge.api.schemas import Apply, BalancedPublic, ConformalPublic
from engine import Engine, conformal
from engine import calibration as calib
from engine.calibration import Calibration, ScoreStats
from engine.conformal import ConformalRecord
from engine.patchcore import PatchCoreModel


class Choice(NamedTuple):
    """The calibration to store and what the answer says about it."""

    calibration: Calibration
    applied: Apply
    conformal: ConformalPublic | None
    balanced: BalancedPublic | None
    warnings: list[str]


def choose(
    engine: Engine,
    model: PatchCoreModel,
    ok_scores: Sequence[float],
    ng_scores: Sequence[float],
    apply: Apply = "balanced",
    target_frr: float | None = None,
    per_part_rois: int = 1,
) -> Choice:
    """The calibration ``apply`` asks for; the conformal record at ``target_frr /
    per_part_rois`` (the model's own alpha without ``target_frr``) goes with it, for
    p-values. 409 ``no_held_out_scores``: ``apply="conformal"`` on a model without them."""
    held = None if model.calibration is None else model.calibration.conformal
    if held is None and apply == "conformal":
        raise BdiError(
            "this model has no held-out OK scores (trained with the legacy percentile method "
            "or before conformal thresholds): refit it to apply a conformal threshold",
            409, "no_held_out_scores",
        )  # fmt: skip
    record = None if held is None else _at(held, target_frr, per_part_rois)
    pct = engine.config.score_percentile
    balanced = None
    if ok_scores:
        balanced = engine.calibrate(model, ok_scores, ng_scores or None)
    if apply == "conformal":
        assert record is not None
        calibration = calib.from_conformal(record.scores, record.alpha, pct)
        if ng_scores:
            miss = conformal.miss_rate(calibration.threshold, ng_scores)
            ng = ScoreStats.of(np.asarray(ng_scores, dtype=np.float64))
            calibration = replace(calibration, ng=ng, ng_miss_rate=miss)
    else:
        assert balanced is not None  # the request's validation: OK scores unless conformal
        calibration = balanced if record is None else replace(balanced, conformal=record)
    return Choice(
        calibration,
        apply,
        None if record is None else _report(record, target_frr, per_part_rois, ng_scores),
        _balanced(balanced) if balanced is not None and ng_scores else None,
        _warnings(record),
    )


def _at(held: ConformalRecord, target_frr: float | None, per_part_rois: int) -> ConformalRecord:
    """The model's held-out scores' conformal choice at the asked per-ROI rate."""
    alpha = held.alpha if target_frr is None else target_frr / per_part_rois
    return held if alpha == held.alpha else conformal.record(held.scores, alpha, held.split)


def _report(
    record: ConformalRecord,
    target_frr: float | None,
    per_part_rois: int,
    ng_scores: Sequence[float],
) -> ConformalPublic:
    return ConformalPublic(
        alpha=record.alpha,
        target_frr=record.alpha if target_frr is None else target_frr,
        per_part_rois=per_part_rois,
        n=record.n,
        k=record.k,
        bound=record.bound,
        guaranteed=record.guaranteed,
        needed=record.needed,
        threshold=record.threshold,
        ng_miss_rate=conformal.miss_rate(record.threshold, ng_scores) if ng_scores else None,
    )


def _balanced(calibration: Calibration) -> BalancedPublic:
    assert calibration.ng_miss_rate is not None
    return BalancedPublic(
        threshold=calibration.threshold,
        ng_miss_rate=calibration.ng_miss_rate,
        ok_reject_rate=calibration.ok_reject_rate,
    )


def _warnings(record: ConformalRecord | None) -> list[str]:
    if record is None or record.guaranteed:
        return []
    return [
        f"a false-reject rate of {record.alpha:g} needs at least {record.needed} held-out OK "
        f"images and this model has {record.n}: its conformal threshold is their highest "
        f"score, with no guarantee (a fit holds out at most half of its images: train on at "
        f"least {2 * record.needed}, or ask for a larger target_frr)"
    ]
