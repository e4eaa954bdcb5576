"""The verdict of one scored frame: OK / NG / NO_MODEL / ERROR, with its defect regions.

Pure functions of a frame's scores and its model; :class:`engine.engine.Engine` calls them
after the backbone and the kNN search.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from engine.anomaly_map import full_size_box, resize_map
from engine.backbone import RANDOM_WEIGHTS
from engine.errors import NON_FINITE
from engine.heatmap import heatmap_png
from engine.patchcore import PatchCoreModel, region_floor
from engine.regions import Region, find_regions, significant

Verdict = Literal["OK", "NG", "ERROR", "NO_MODEL"]


@dataclass(frozen=True)
class InferItem:
    model: PatchCoreModel | None  # None: no model for this frame -> NO_MODEL
    image: np.ndarray  # (H, W, 3) uint8 RGB, original resolution
    mm_per_px: float | None = None
    want_map: bool = False
    want_heatmap: bool = False


@dataclass
class Inference:
    verdict: Verdict
    score: float | None
    threshold: float | None
    regions: list[Region] = field(default_factory=list)
    model_version: str | None = None
    calibration_version: str | None = None  # the threshold's identity (Calibration.version)
    # conformal p-value of the score against the model's held-out OK scores (uniform on OK
    # frames like them, small on outliers); None without them (legacy models) or a score
    p_value: float | None = None
    error: str | None = None
    error_kind: str | None = None  # the exception class behind an ERROR, for the front doors
    anomaly_map: np.ndarray | None = None  # (H, W) at the original resolution
    heatmap_png: bytes | None = None
    random_backbone: bool = False
    timings_ms: dict[str, float] = field(default_factory=dict)


def failed(exc: BaseException, model: PatchCoreModel | None = None) -> Inference:
    """``ERROR`` for a frame whose scoring raised ``exc`` (with its model, when known)."""
    return Inference(
        "ERROR", None, None if model is None else model.threshold,
        model_version=None if model is None else model.version,
        calibration_version=None if model is None else model.calibration_version,
        error=f"{type(exc).__name__}: {exc}", error_kind=type(exc).__name__,
    )  # fmt: skip


def may_have_regions(threshold: float | None, score: float, reweight: bool) -> bool:
    """Upsampling and blurring never exceed the grid's maximum, so without reweighting a
    frame scored below the threshold has no region: most frames on a line are OK and skip
    the pixel map entirely."""
    return threshold is not None and (score >= threshold or reweight)


def needs_map(item: InferItem, threshold: float | None, score: float, reweight: bool) -> bool:
    """Whether a frame's pixel map is drawn: it may have regions, or it is wanted."""
    return may_have_regions(threshold, score, reweight) or item.want_map or item.want_heatmap


def decide(
    item: InferItem,
    model: PatchCoreModel,
    score: float,
    patches: np.ndarray,
    baseline: np.ndarray | None,
    amap: np.ndarray | None,
    *,
    reweight: bool,
    area_mm2_thr: float,
) -> Inference:
    """Verdict and regions of one frame.

    ``score``: the image score (:func:`engine.patchcore.score`); ``patches (h, w)``: patch
    distances; ``baseline (H, W)``: the model's per-position OK baseline as a pixel map at
    the backbone's input size (:meth:`PatchCoreModel.baseline_map`), subtracted where the
    threshold applies (regions, heatmap) so that they agree with the image score;
    ``amap (H, W)``: the frame's pixel map at that size, where :func:`needs_map` asks for
    one, else None. ``reweight``: the image score was reweighted (paper eq. 7);
    ``area_mm2_thr``: regions smaller than this do not make the frame NG
    (``BDI_AREA_MM2_THR``).
    """
    random_bb = model.meta.backbone_weights == RANDOM_WEIGHTS
    threshold = model.threshold
    if not math.isfinite(score) or not np.isfinite(patches).all():
        return Inference(
            "ERROR", None, threshold, model_version=model.version,
            calibration_version=model.calibration_version, error="non-finite anomaly score",
            error_kind=NON_FINITE, random_backbone=random_bb,
        )  # fmt: skip
    h, w = item.image.shape[:2]
    mm = item.mm_per_px if item.mm_per_px is not None else model.meta.mm_per_px
    judged = None if amap is None else (amap if baseline is None else amap - baseline)
    # full-resolution maps: only when someone needs them (most frames on a line are OK).
    # Bilinear upsampling never exceeds the source maximum, so a map below the threshold
    # at input size has no region at full size either.
    # the map's peak per row: the map's maximum, and where it may reach the threshold
    peak_rows = (
        judged.max(axis=1)
        if judged is not None and may_have_regions(threshold, score, reweight)
        else None
    )
    needs_regions = (
        threshold is not None and peak_rows is not None and float(peak_rows.max()) >= threshold
    )
    full = (
        resize_map(judged, h, w)
        if judged is not None and (needs_regions or item.want_heatmap)
        else None
    )
    regions: list[Region] = []
    error: str | None = None
    if threshold is None:
        verdict: Verdict = "NO_MODEL"
        error = "model is not calibrated (no threshold)"
    else:
        verdict = "NG" if score >= threshold else "OK"
        if needs_regions:
            assert full is not None and judged is not None and peak_rows is not None
            # only the part of the full-size map that can reach the threshold is read
            floor = region_floor(threshold)
            box = full_size_box(peak_rows >= floor, judged.max(axis=0) >= floor, h, w)
            regions = find_regions(full, threshold, mm, within=box)
        if verdict == "NG" and area_mm2_thr > 0 and mm is not None and regions:
            # defects smaller than the minimum area do not reject the part
            verdict = "NG" if significant(regions, area_mm2_thr) else "OK"
    png = None
    if item.want_heatmap:
        assert full is not None
        png = heatmap_png(item.image, full, 2.0 * threshold if threshold else None)
    return Inference(
        verdict, score, threshold, regions, error=error, model_version=model.version,
        calibration_version=model.calibration_version,
        p_value=None if model.calibration is None else model.calibration.p_value(score),
        # the localisation map: patch distances, no baseline (the better pixel ranking)
        anomaly_map=resize_map(amap, h, w) if item.want_map and amap is not None else None,
        heatmap_png=png, random_backbone=random_bb,
    )  # fmt: skip
