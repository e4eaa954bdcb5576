"""Defect regions of the default kNN path (IVF + positional shortlist) equal those of an
exact search of every patch, frame by frame, on the shared inspection data."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from edge.bench.regions import exact_copy
from engine.decision import Inference, InferItem
from engine.engine import Engine
from engine.images import read_image
from engine.patchcore import PatchCoreModel

pytestmark = pytest.mark.slow

# (folder under the shared data, training images used, mm per pixel of the crops)
SETS = {
    "metal_plate": ("mpdd_metal_plate/metal_plate", 54, 0.05),
    "tire": ("mvtec3d_tire/tire", 80, 0.1),
    "kolektor": ("kolektorsdd/kolektor", 80, 0.02),
}


def _region_keys(result: Inference) -> list[tuple[object, ...]]:
    return [(r.bbox, r.area_px, r.area_mm2) for r in result.regions]


@pytest.mark.parametrize("name", list(SETS))
def test_default_path_regions_equal_exact_search_frame_by_frame(
    name: str, test_data: Path, make_engine: Callable[..., Engine]
) -> None:
    folder, n_train, mm_per_px = SETS[name]
    root = test_data / folder
    if not root.is_dir():
        pytest.skip(f"{root} missing")
    # the default kNN path (BDI_KNN_MODE=ivf, BDI_KNN_SHORTLIST=64) at the bench's size
    engine = make_engine(image_size=224, coreset_rate=0.1, knn_mode="ivf", knn_shortlist=64)
    train = [read_image(str(p)) for p in sorted((root / "train" / "good").glob("*.png"))]
    model = engine.fit(train[:n_train], mm_per_px=mm_per_px).model
    assert model.index.kind == "ivf" and model.shortlist is not None
    assert model.threshold is not None
    tests = sorted((root / "test").glob("*/*.png"))
    frames = [read_image(str(p)) for p in tests]
    exact = exact_copy(model)
    with_regions = _compare(engine, model, exact, tests, frames, mm_per_px)
    # the comparison means something: defects were found and measured
    assert with_regions >= 3
    # and near the threshold, where bounds and exact distances part: half the frames NG
    scores = [r.score for r in engine.infer([InferItem(exact, im) for im in frames])]
    lowered = replace(model.calibration, threshold=float(np.median(scores)))
    with_regions = _compare(
        engine, replace(model, calibration=lowered), replace(exact, calibration=lowered),
        tests, frames, mm_per_px,
    )  # fmt: skip
    assert with_regions >= len(tests) // 6


def _compare(
    engine: Engine,
    model: PatchCoreModel,
    exact: PatchCoreModel,
    tests: list[Path],
    frames: list[np.ndarray],
    mm_per_px: float,
) -> int:
    """Assert the two models' verdicts equal frame by frame; how many frames had regions."""
    with_regions = 0
    for start in range(0, len(frames), 16):
        images = frames[start : start + 16]
        fast = engine.infer([InferItem(model, im, mm_per_px) for im in images])
        slow = engine.infer([InferItem(exact, im, mm_per_px) for im in images])
        for path, a, b in zip(tests[start : start + 16], fast, slow, strict=True):
            assert a.score == b.score, path.name  # image scores identical, not just close
            assert a.verdict == b.verdict, path.name
            assert _region_keys(a) == _region_keys(b), path.name
            np.testing.assert_allclose(
                [r.max_score for r in a.regions], [r.max_score for r in b.regions], rtol=1e-5
            )
            with_regions += bool(b.regions)
    return with_regions
