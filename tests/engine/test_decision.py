"""The verdict of one frame from its scores: pure functions, no backbone, no search."""

from __future__ import annotations

import numpy as np
import pytest

from engine import calibration
from engine.decision import InferItem, decide, failed, may_have_regions, needs_map
from engine.images import PNG_MAGIC
from engine.knn import KnnIndex
from engine.patchcore import ModelMeta, PatchCoreModel

SIZE = 32  # the model's input size: maps are (SIZE, SIZE)
FRAME = (64, 48)  # the frame's own resolution (H, W)


def model(
    threshold: float | None = 1.0,
    mm_per_px: float | None = None,
    baseline: np.ndarray | None = None,
) -> PatchCoreModel:
    meta = ModelMeta(
        backbone="efficientnet_lite0", backbone_weights="sha256:0", image_size=SIZE,
        grid=(4, 4), feature_dim=2, mm_per_px=mm_per_px, coreset_rate=1.0,
        n_train_images=1, n_patches=16, memory_bank=16,
    )  # fmt: skip
    bank = np.arange(32, dtype=np.float32).reshape(16, 2)
    calib = None if threshold is None else calibration.from_ok([threshold], 100.0)
    return PatchCoreModel(meta, KnnIndex("exact").fit(bank), calib, "v1", baseline)


def item(**kwargs: object) -> InferItem:
    image = np.full((*FRAME, 3), 128, dtype=np.uint8)
    return InferItem(None, image, **kwargs)  # type: ignore[arg-type]


def hot_map(y: int = 8, x: int = 16, size: int = 6, value: float = 3.0) -> np.ndarray:
    """A ``(SIZE, SIZE)`` map at 0.1 with one hot square."""
    amap = np.full((SIZE, SIZE), 0.1, dtype=np.float32)
    amap[y : y + size, x : x + size] = value
    return amap


PATCHES = np.zeros((4, 4), dtype=np.float32)
RULES = {"reweight": False, "area_mm2_thr": 0.0}


def test_only_a_calibrated_frame_at_the_threshold_may_have_regions() -> None:
    assert not may_have_regions(None, 5.0, reweight=True)
    assert not may_have_regions(1.0, 0.9, reweight=False)
    assert may_have_regions(1.0, 1.0, reweight=False)
    assert may_have_regions(1.0, 0.9, reweight=True)  # a reweighted score says less


def test_a_map_is_drawn_when_wanted_even_below_the_threshold() -> None:
    assert not needs_map(item(), 1.0, 0.5, reweight=False)
    assert needs_map(item(want_map=True), 1.0, 0.5, reweight=False)
    assert needs_map(item(want_heatmap=True), None, 0.5, reweight=False)
    assert needs_map(item(), 1.0, 1.5, reweight=False)


@pytest.mark.parametrize("where", ["score", "patches"])
def test_a_non_finite_score_is_an_error(where: str) -> None:
    patches = PATCHES.copy()
    if where == "patches":
        patches[1, 2] = np.inf
    value = np.nan if where == "score" else 0.5
    result = decide(item(), model(), value, patches, None, None, **RULES)
    assert (result.verdict, result.score, result.threshold) == ("ERROR", None, 1.0)
    assert result.error_kind == "NonFiniteScoreError" and result.model_version == "v1"


def test_an_uncalibrated_model_gives_no_model_with_its_score() -> None:
    result = decide(item(), model(threshold=None), 2.0, PATCHES, None, None, **RULES)
    assert (result.verdict, result.score, result.threshold) == ("NO_MODEL", 2.0, None)
    assert result.error == "model is not calibrated (no threshold)" and result.regions == []


def test_below_the_threshold_is_ok_without_regions() -> None:
    result = decide(item(), model(), 0.5, PATCHES, None, None, **RULES)
    assert (result.verdict, result.regions, result.error) == ("OK", [], None)
    assert result.anomaly_map is None and result.heatmap_png is None


def test_at_the_threshold_is_ng_with_regions_in_frame_pixels() -> None:
    result = decide(item(mm_per_px=0.1), model(), 3.0, PATCHES, None, hot_map(), **RULES)
    assert result.verdict == "NG" and len(result.regions) == 1
    (region,) = result.regions
    x, y, w, h = region.bbox
    # the hot square (x 16-21, y 8-13 of 32) lands on the 48 x 64 frame, about scaled
    assert 22 <= x <= 25 and 14 <= y <= 18 and 7 <= w <= 11 and 10 <= h <= 14
    assert region.area_mm2 == pytest.approx(region.area_px * 0.01)
    assert region.max_score <= 3.0


def test_regions_are_measured_after_the_baseline_is_subtracted() -> None:
    """Where OK parts always score high (the baseline), a high map value is no region."""
    base = hot_map(value=2.5)
    result = decide(item(), model(), 1.0, PATCHES, base, hot_map(), **RULES)
    assert result.verdict == "NG" and result.regions == []  # 3.0 - 2.5 < 1.0 everywhere
    elsewhere = decide(item(), model(), 3.0, PATCHES, base, hot_map(x=0, y=20), **RULES)
    assert elsewhere.regions and elsewhere.regions[0].bbox[0] == 0


def test_small_regions_do_not_reject_a_part_of_known_scale() -> None:
    rules = {"reweight": False, "area_mm2_thr": 1e6}
    scaled = decide(item(mm_per_px=0.1), model(), 3.0, PATCHES, None, hot_map(), **rules)
    assert scaled.verdict == "OK" and scaled.regions
    by_model = decide(item(), model(mm_per_px=0.1), 3.0, PATCHES, None, hot_map(), **rules)
    assert by_model.verdict == "OK"
    unscaled = decide(item(), model(), 3.0, PATCHES, None, hot_map(), **rules)
    assert unscaled.verdict == "NG" and unscaled.regions[0].area_mm2 is None


def test_the_map_comes_back_at_frame_size_without_the_baseline() -> None:
    amap, base = hot_map(), np.full((SIZE, SIZE), 0.05, dtype=np.float32)
    wanted = item(want_map=True, want_heatmap=True)
    result = decide(wanted, model(), 3.0, PATCHES, base, amap, **RULES)
    assert result.anomaly_map is not None and result.anomaly_map.shape == FRAME
    assert float(result.anomaly_map.max()) == pytest.approx(3.0)
    assert float(result.anomaly_map.min()) == pytest.approx(0.1)
    assert result.heatmap_png is not None and result.heatmap_png.startswith(PNG_MAGIC)


def test_a_failure_names_its_cause_and_the_model() -> None:
    plain = failed(RuntimeError("CUDA out of memory"))
    assert (plain.verdict, plain.threshold, plain.model_version) == ("ERROR", None, None)
    assert plain.error == "RuntimeError: CUDA out of memory" and plain.error_kind == "RuntimeError"
    known = failed(ValueError("grid"), model())
    assert (known.threshold, known.model_version, known.score) == (1.0, "v1", None)
