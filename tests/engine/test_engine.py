"""Engine facade: batched inference across models, verdict rules, error confinement."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import cv2
import numpy as np
import pytest

import engine.engine as engine_module
from engine.config import EngineConfig
from engine.engine import Engine, InferItem
from engine.errors import EngineError
from engine.images import PNG_MAGIC
from engine.patchcore import PatchCoreModel, Scores
from tests.helpers.images import texture

DEFECT = dict(y=20, x=24, size=16)


@pytest.fixture(scope="module")
def stripes(trained_model: Callable[[str], PatchCoreModel]) -> PatchCoreModel:
    return trained_model("stripes")


@pytest.fixture(scope="module")
def checker(trained_model: Callable[[str], PatchCoreModel]) -> PatchCoreModel:
    return trained_model("checker")


@pytest.fixture(scope="module")
def defective(make_texture, add_defect) -> np.ndarray:
    return add_defect(make_texture("stripes", 200), **DEFECT)


def _with_threshold(model: PatchCoreModel, threshold: float | None) -> PatchCoreModel:
    """The same model under another threshold (``None``: uncalibrated)."""
    assert model.calibration is not None
    cal = None if threshold is None else replace(model.calibration, threshold=threshold)
    return PatchCoreModel(
        meta=model.meta, index=model.index, calibration=cal, version=model.version
    )


def test_fit_produces_a_calibrated_model(stripes: PatchCoreModel, checker: PatchCoreModel) -> None:
    for model in (stripes, checker):
        assert model.meta.backbone == "efficientnet_lite0"
        assert model.meta.backbone_weights.startswith("sha256:")
        assert model.meta.grid == (8, 8)
        assert model.meta.n_train_images == 4
        assert model.meta.memory_bank == model.index.size == 4 * 8 * 8 // 2
        assert model.threshold is not None and np.isfinite(model.threshold)
    assert stripes.version != checker.version


@pytest.mark.parametrize(("setting", "device", "expected"), [
    (0, "cpu", engine_module.CPU_BATCH), (0, "cuda", engine_module.CUDA_BATCH),
    (5, "cpu", 5), (5, "cuda", 5),
])  # fmt: skip
def test_backbone_forward_size_is_the_setting_or_the_device_default(
    setting: int, device: str, expected: int
) -> None:
    import torch

    from engine.device import DeviceSpec
    from tests.helpers.settings import tiny_settings

    spec = DeviceSpec(torch.device(device), torch.float32)  # nothing runs on it here
    config = EngineConfig.from_settings(tiny_settings(engine_batch_size=setting))
    assert Engine(config, spec).batch_size == expected


def test_one_call_runs_the_backbone_in_forwards_of_the_batch_size(
    make_engine: Callable[..., Engine], make_texture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Frames of one call go through the backbone in forwards of ``batch_size`` images and
    are scored together: the same results as one forward of the whole call."""
    images = [make_texture("stripes", 600 + i) for i in range(7)]
    split, whole = make_engine(engine_batch_size=3), make_engine(engine_batch_size=7)
    model = whole.fit(images[:4]).model
    bb = split.backbone()
    forward = bb.forward
    sizes: list[int] = []

    def counting(x, dtype=None):
        sizes.append(len(x))
        return forward(x, dtype)

    monkeypatch.setattr(bb, "forward", counting)
    a = split.infer([InferItem(model, im) for im in images])
    b = whole.infer([InferItem(model, im) for im in images])
    assert sizes == [3, 3, 1]
    assert [r.verdict for r in a] == [r.verdict for r in b]
    assert [r.score for r in a] == pytest.approx([r.score for r in b], rel=1e-5)


def test_fit_without_images_is_refused(tiny_engine: Engine) -> None:
    with pytest.raises(EngineError):
        tiny_engine.fit([])


def test_batch_across_models_keeps_order_and_models(
    tiny_engine: Engine, stripes: PatchCoreModel, checker: PatchCoreModel, make_texture, defective
) -> None:
    ok_stripes = make_texture("stripes", 101)
    ok_checker = make_texture("checker", 102)
    items = [
        InferItem(stripes, ok_stripes),
        InferItem(None, ok_stripes),
        InferItem(checker, ok_checker),
        InferItem(stripes, defective),
        InferItem(checker, ok_stripes),  # the wrong texture for this model
    ]
    results = tiny_engine.infer(items)

    assert [r.verdict for r in results] == ["OK", "NO_MODEL", "OK", "NG", "NG"]
    assert [r.model_version for r in results] == [
        stripes.version, None, checker.version, stripes.version, checker.version,
    ]  # fmt: skip
    assert results[1].score is None and results[1].error
    for item, result in zip(items, results, strict=True):
        if item.model is None:
            continue
        assert result.threshold == item.model.threshold
        assert not result.random_backbone
        alone = tiny_engine.image_scores(item.model, [item.image])[0]
        assert result.score == pytest.approx(alone, rel=1e-4)
    # the same stripes image, each against its own model
    assert results[4].score > 3 * results[0].score


def test_defect_scores_above_ok_images(
    tiny_engine: Engine, stripes: PatchCoreModel, make_texture, defective
) -> None:
    ok = tiny_engine.image_scores(stripes, [make_texture("stripes", s) for s in (110, 111, 112)])
    bad = tiny_engine.image_scores(stripes, [defective])[0]
    assert bad > 2 * ok.max()


def test_defect_is_ng_with_a_region_on_it(
    tiny_engine: Engine, stripes: PatchCoreModel, make_texture, defective
) -> None:
    ok_images = [make_texture("stripes", s) for s in (120, 121)]
    ok_max = tiny_engine.image_scores(stripes, ok_images).max()
    bad = tiny_engine.image_scores(stripes, [defective])[0]
    model = _with_threshold(stripes, ok_max + 0.25 * (bad - ok_max))

    results = tiny_engine.infer([InferItem(model, im) for im in [*ok_images, defective]])

    assert [r.verdict for r in results] == ["OK", "OK", "NG"]
    regions = results[2].regions
    assert regions
    x, y, w, h = regions[0].bbox
    cx, cy = DEFECT["x"] + DEFECT["size"] / 2, DEFECT["y"] + DEFECT["size"] / 2
    assert x <= cx <= x + w and y <= cy <= y + h
    assert regions[0].area_mm2 is None


def test_uncalibrated_model_gives_no_model(
    tiny_engine: Engine, stripes: PatchCoreModel, defective
) -> None:
    (result,) = tiny_engine.infer([InferItem(_with_threshold(stripes, None), defective)])
    assert result.verdict == "NO_MODEL"
    assert result.threshold is None
    assert result.error and "calibrated" in result.error
    assert result.regions == []
    assert result.model_version == stripes.version


@pytest.mark.parametrize("where", ["image", "map"])
def test_non_finite_score_is_an_error_never_ok(
    tiny_engine: Engine,
    stripes: PatchCoreModel,
    make_texture,
    monkeypatch: pytest.MonkeyPatch,
    where: str,
) -> None:
    real_score = engine_module.score

    def poisoned(*args, **kwargs) -> Scores:
        s = real_score(*args, **kwargs)
        if where == "image":
            return Scores(np.full_like(s.image, np.nan), s.patches)
        patches = s.patches.copy()
        patches[:, 0, 0] = np.inf
        return Scores(s.image, patches)

    monkeypatch.setattr(engine_module, "score", poisoned)
    results = tiny_engine.infer(
        [InferItem(stripes, make_texture("stripes", s)) for s in (130, 131)]
    )
    for result in results:
        assert result.verdict == "ERROR"
        assert result.score is None
        assert result.error and "non-finite" in result.error
        assert result.error_kind == "NonFiniteScoreError"


def test_grid_mismatch_is_confined_to_its_frames(
    tiny_engine: Engine, stripes: PatchCoreModel, checker: PatchCoreModel, make_texture
) -> None:
    wrong = PatchCoreModel(
        meta=replace(stripes.meta, grid=(3, 3)), index=stripes.index,
        calibration=stripes.calibration, version="wrong-grid",
    )  # fmt: skip
    results = tiny_engine.infer([
        InferItem(stripes, make_texture("stripes", 140)),
        InferItem(wrong, make_texture("stripes", 141)),
        InferItem(checker, make_texture("checker", 142)),
    ])  # fmt: skip
    assert [r.verdict for r in results] == ["OK", "ERROR", "OK"]
    assert "GridMismatch" in (results[1].error or "")
    assert results[1].model_version == "wrong-grid"
    assert results[1].score is None


def test_heatmap_and_map_at_the_original_size(
    tiny_engine: Engine, stripes: PatchCoreModel, make_texture, add_defect
) -> None:
    image = add_defect(make_texture("stripes", 150, height=80, width=96), y=30, x=40)
    with_extras, plain = tiny_engine.infer([
        InferItem(stripes, image, want_map=True, want_heatmap=True),
        InferItem(stripes, image),
    ])  # fmt: skip

    png = with_extras.heatmap_png
    assert png is not None and png.startswith(PNG_MAGIC)
    decoded = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape == (80, 96, 3)

    amap = with_extras.anomaly_map
    assert amap is not None and amap.shape == (80, 96)
    assert np.isfinite(amap).all()
    # the hottest pixel lies on the pasted square (rows 30..46, cols 40..56), give or take blur
    hot_y, hot_x = np.unravel_index(int(amap.argmax()), amap.shape)
    assert 22 <= hot_y <= 54 and 32 <= hot_x <= 64

    assert plain.anomaly_map is None and plain.heatmap_png is None
    assert plain.score == pytest.approx(with_extras.score)


@pytest.fixture(scope="module")
def ng_setup(
    tiny_engine: Engine, stripes: PatchCoreModel, make_texture, defective
) -> tuple[PatchCoreModel, np.ndarray]:
    """A threshold under which the defect is NG with at least one region."""
    ok_max = tiny_engine.image_scores(stripes, [make_texture("stripes", 160)]).max()
    bad = tiny_engine.image_scores(stripes, [defective])[0]
    model = _with_threshold(stripes, ok_max + 0.25 * (bad - ok_max))
    (result,) = tiny_engine.infer([InferItem(model, defective)])
    assert result.verdict == "NG" and result.regions
    return model, defective


def test_area_rule_small_defects_pass_with_known_scale(make_engine, ng_setup) -> None:
    model, image = ng_setup
    lenient = make_engine(area_mm2_thr=1e6)
    (result,) = lenient.infer([InferItem(model, image, mm_per_px=0.1)])
    assert result.regions
    assert all(r.area_mm2 is not None and r.area_mm2 < 1e6 for r in result.regions)
    assert result.verdict == "OK"


def test_area_rule_uses_the_model_scale_when_the_frame_has_none(make_engine, ng_setup) -> None:
    model, image = ng_setup
    scaled = PatchCoreModel(
        meta=replace(model.meta, mm_per_px=0.1), index=model.index,
        calibration=model.calibration, version=model.version,
    )  # fmt: skip
    (result,) = make_engine(area_mm2_thr=1e6).infer([InferItem(scaled, image)])
    assert result.verdict == "OK"
    assert result.regions[0].area_mm2 == pytest.approx(result.regions[0].area_px * 0.01)


def test_area_rule_keeps_large_defects_ng(make_engine, ng_setup) -> None:
    model, image = ng_setup
    strict = make_engine(area_mm2_thr=1.0)
    (result,) = strict.infer([InferItem(model, image, mm_per_px=0.1)])
    assert result.regions[0].area_mm2 >= 1.0
    assert result.verdict == "NG"


def test_area_rule_needs_a_scale(make_engine, ng_setup) -> None:
    model, image = ng_setup
    assert model.meta.mm_per_px is None
    (result,) = make_engine(area_mm2_thr=1e6).infer([InferItem(model, image)])
    assert result.verdict == "NG"
    assert all(r.area_mm2 is None for r in result.regions)


def test_fit_returns_leave_one_out_ok_scores(make_engine):
    """Legacy method: OK scores for calibration come from each image scored without its own
    patches, so they sit above the near-zero scores of re-scoring training images against
    the bank."""
    tiny_engine = make_engine(threshold_method="percentile")
    images = [texture("stripes", seed) for seed in range(5)]
    fit = tiny_engine.fit(images)
    assert fit.ok_scores.shape == (5,)
    assert np.isfinite(fit.ok_scores).all()
    assert fit.model.calibration is not None and fit.model.calibration.ok.n == 5
    rescored = tiny_engine.image_scores(fit.model, images)
    assert fit.ok_scores.mean() > rescored.mean()


@pytest.mark.parametrize("scale", [0.0, 0.5, 1.0, 1.5])
def test_skipping_the_map_of_ok_frames_changes_nothing(
    tiny_engine: Engine, stripes: PatchCoreModel, make_texture, defective, scale
) -> None:
    """OK frames skip the pixel map; the verdicts and regions are those of the full path."""
    images = [make_texture("stripes", s) for s in (130, 131)] + [defective]
    scores = tiny_engine.image_scores(stripes, images)
    # thresholds below, between and above the scores: every branch of the shortcut
    model = _with_threshold(stripes, float(scores.min() + scale * (scores.max() - scores.min())))
    lean = tiny_engine.infer([InferItem(model, im) for im in images])
    full = tiny_engine.infer([InferItem(model, im, want_map=True) for im in images])
    assert [r.verdict for r in lean] == [r.verdict for r in full]
    assert [r.regions for r in lean] == [r.regions for r in full]
    assert all(r.anomaly_map is None for r in lean) and all(
        r.anomaly_map is not None for r in full)  # fmt: skip


def test_shortlist_changes_no_score_and_no_map(
    tiny_engine: Engine, stripes: PatchCoreModel, defective: np.ndarray, make_texture
) -> None:
    """The positional shortlist is only a speed aid: same scores, same maps where wanted."""
    assert stripes.shortlist is not None
    plain = PatchCoreModel(
        meta=stripes.meta, index=stripes.index, calibration=stripes.calibration,
        version=stripes.version, baseline=stripes.baseline,
    )  # fmt: skip
    images = [make_texture("stripes", 300 + i) for i in range(3)] + [defective]
    fast = tiny_engine.infer([InferItem(stripes, im, want_map=True) for im in images])
    slow = tiny_engine.infer([InferItem(plain, im, want_map=True) for im in images])
    for a, b in zip(fast, slow, strict=True):
        assert a.verdict == b.verdict
        assert a.score == pytest.approx(b.score, rel=1e-5)
        assert a.anomaly_map is not None and b.anomaly_map is not None
        np.testing.assert_allclose(a.anomaly_map, b.anomaly_map, rtol=1e-5, atol=1e-5)
    assert fast[-1].verdict == "NG" and fast[-1].regions


def test_a_model_of_an_older_feature_layout_is_refused_clearly(
    tiny_engine: Engine, stripes: PatchCoreModel, defective: np.ndarray
) -> None:
    """A model stored when EfficientNet-Lite0 gave 152-channel patches (blocks 2 + 4) cannot
    be scored by today's 176-channel features: ERROR naming the cause, never OK."""
    old = PatchCoreModel(
        meta=replace(stripes.meta, feature_dim=152), index=stripes.index,
        calibration=stripes.calibration, version="old-layout",
    )  # fmt: skip
    (result,) = tiny_engine.infer([InferItem(old, defective)])
    assert result.verdict == "ERROR"
    assert result.error is not None and "retrain" in result.error and "152" in result.error


@pytest.mark.parametrize("frame", [(224, 224), (300, 260), (150, 170)])
def test_ng_frame_regions_are_unchanged_when_only_the_cells_near_them_are_searched(
    make_texture, add_defect, monkeypatch, frame: tuple[int, int]
) -> None:
    """At 224 px (28 x 28 cells) an NG frame that wants no map is searched only around the
    pixels that may reach the threshold; its regions must equal those of the model without
    a shortlist, whose frames are searched everywhere. Frames of another size are measured
    on the map resized to them, whose pixels interpolate their neighbours too."""
    from tests.helpers.settings import tiny_settings

    # the legacy threshold, which these frames were chosen around (the OK one stays OK)
    engine = Engine.from_settings(tiny_settings(image_size=224, threshold_method="percentile"))
    train = [make_texture("stripes", 400 + i, 224, 224) for i in range(6)]
    model = engine.fit(train).model
    assert model.shortlist is not None and model.meta.grid == (28, 28)
    plain = PatchCoreModel(
        meta=model.meta, index=model.index, calibration=model.calibration,
        version=model.version, baseline=model.baseline,
    )  # fmt: skip
    height, width = frame

    def sized(image: np.ndarray) -> np.ndarray:
        # the same part seen at another resolution
        return cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)

    frames = [
        sized(add_defect(make_texture("stripes", 500, 224, 224), y=8, x=8, size=20)),
        sized(add_defect(make_texture("stripes", 501, 224, 224), y=180, x=150, size=12)),
        sized(make_texture("stripes", 502, 224, 224)),
    ]
    searched: list[int] = []
    settle = model.index.settle

    def counting(queries, dist, where, exact=False):
        searched.append(int(where.sum()))
        return settle(queries, dist, where, exact)

    monkeypatch.setattr(model.index, "settle", counting)
    fast = engine.infer([InferItem(model, f, mm_per_px=0.1) for f in frames])
    monkeypatch.undo()
    slow = engine.infer([InferItem(plain, f, mm_per_px=0.1) for f in frames])
    assert [r.verdict for r in fast] == [r.verdict for r in slow]
    assert fast[0].verdict == "NG" and fast[1].verdict == "NG"
    assert fast[0].regions and fast[1].regions
    for a, b in zip(fast, slow, strict=True):
        assert a.score == pytest.approx(b.score, rel=1e-5)
        assert [(r.bbox, r.area_px) for r in a.regions] == [(r.bbox, r.area_px) for r in b.regions]
        for ra, rb in zip(a.regions, b.regions, strict=True):
            assert ra.max_score == pytest.approx(rb.max_score, rel=1e-5, abs=1e-5)
            assert ra.mean_score == pytest.approx(rb.mean_score, rel=1e-5, abs=1e-5)
    # fewer than every patch of the two NG frames was searched
    assert 0 < sum(searched) < 2 * 28 * 28


def test_warm_up_runs_one_forward_twice_and_times_the_second(
    make_engine: Callable[..., Engine], monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = make_engine(engine_batch_size=3)
    bb = engine.backbone()
    forward = bb.forward
    sizes: list[tuple[int, ...]] = []

    def counting(x, dtype=None):
        sizes.append(tuple(x.shape))
        return forward(x, dtype)

    monkeypatch.setattr(bb, "forward", counting)
    size = engine.config.image_size
    per_frame = engine.warm_up(16)
    assert sizes == [(3, 3, size, size)] * 2  # one forward of the engine's size, twice
    assert 0 < per_frame < 10
    sizes.clear()
    engine.warm_up(2)
    assert sizes == [(2, 3, size, size)] * 2  # a smaller batch than a forward: its own size
