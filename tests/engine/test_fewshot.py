"""Few-shot options (engine.fewshot): stored with the model, applied at fit, append and score."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from engine import fewshot
from engine.artifact import load, save
from engine.decision import InferItem
from engine.engine import Engine
from engine.fewshot import FEWSHOT_DEFAULT, FewShot
from engine.knn import KnnIndex
from engine.meta import ModelMeta
from engine.patchcore import PatchCoreModel, score
from engine.training import fit_bank, fit_embedded, split
from tests.helpers.images import texture

OPTIONS = {"feature_norm": True, "rotations": 8, "top_share": 0.01}


def _meta(**fields: object) -> ModelMeta:
    base: dict[str, object] = dict(
        backbone="efficientnet_lite0", backbone_weights="random", image_size=64, grid=(4, 4),
        feature_dim=8, mm_per_px=None, coreset_rate=1.0, n_train_images=1, n_patches=16,
        memory_bank=16,
    )  # fmt: skip
    return ModelMeta(**{**base, **fields})  # type: ignore[arg-type]


def test_default_options_stay_out_of_the_metadata_and_old_metadata_means_plain() -> None:
    plain = _meta()
    d = plain.to_dict()
    assert not {"feature_norm", "rotations", "top_share"} & d.keys()
    old = ModelMeta.from_dict(d)  # as stored before the options existed
    assert FewShot.of(old) == FewShot()
    assert old.to_dict() == d  # same metadata, so the same version


def test_options_round_trip_in_the_metadata() -> None:
    meta = _meta(**OPTIONS)
    d = meta.to_dict()
    assert {k: d[k] for k in OPTIONS} == OPTIONS
    assert FewShot.of(ModelMeta.from_dict(d)) == FewShot(**OPTIONS)


def _images(kind: str, n: int, start: int = 0) -> list[np.ndarray]:
    return [texture(kind, seed) for seed in range(start, start + n)]


@pytest.fixture(scope="module")
def fewshot_engine(make_engine: Callable[..., Engine]) -> Engine:
    """An engine whose new fits below 100 images get the few-shot defaults."""
    return make_engine(fewshot_below=100)


def test_a_few_images_get_the_defaults_and_a_stored_model_keeps_them(
    fewshot_engine: Engine, make_engine: Callable[..., Engine], tmp_path: Path
) -> None:
    model = fewshot_engine.fit(_images("stripes", 4)).model
    assert FewShot.of(model.meta) == FEWSHOT_DEFAULT
    assert model.meta.n_train_images == 4
    # every bank image joined with its 7 rotated views
    cells = model.meta.grid[0] * model.meta.grid[1]
    assert model.meta.n_patches == 4 * 8 * cells
    plain = make_engine(fewshot_below=4).fit(_images("stripes", 4)).model
    assert FewShot.of(plain.meta) == FewShot()
    save(model, tmp_path, "m")
    back = load(tmp_path, "m")
    assert back.meta == model.meta and back.version == model.version
    probe = _images("stripes", 2, start=50)
    assert np.array_equal(
        fewshot_engine.image_scores(back, probe), fewshot_engine.image_scores(model, probe)
    )


def _fit(engine: Engine, images: list[np.ndarray], **options: object) -> PatchCoreModel:
    """A model of ``images`` fitted with ``options`` (engine.fewshot) whatever the defaults."""
    bb = engine.backbone()
    feats = engine.embed(images, bb, 64)

    def views(picked: np.ndarray) -> np.ndarray:
        rotated = fewshot.rotated_views([images[i] for i in picked], meta.rotations)
        return engine.embed(rotated, bb, 64)

    meta = _meta(grid=feats.shape[1:3], feature_dim=feats.shape[3], coreset_rate=0.5,
                 n_train_images=0, n_patches=0, memory_bank=0,
                 backbone_weights=engine.weights_fingerprint(bb), **options)  # fmt: skip
    return fit_embedded(engine, feats, views, meta, None, lambda *_: None).model


def test_a_normalised_model_holds_unit_rows_and_scores_normalised_queries(
    fewshot_engine: Engine,
) -> None:
    model = _fit(fewshot_engine, _images("checker", 3), feature_norm=True)
    assert model.meta.feature_norm
    norms = np.linalg.norm(model.index.bank(), axis=1)
    assert np.allclose(norms, 1.0, atol=1e-5)
    feats = fewshot_engine.embed(_images("checker", 2, start=30), fewshot_engine.backbone(), 64)
    # a query is normalised as the bank is: its scale does not matter
    a = score(model, feats)
    b = score(model, 3.0 * feats)
    assert np.allclose(a.image, b.image, atol=1e-5)
    assert np.allclose(a.patches, b.patches, atol=1e-5)


def test_the_top_share_score_is_the_mean_of_the_top_one_percent_exact_distances() -> None:
    rng = np.random.default_rng(0)
    h, w, c = 12, 12, 8
    bank = rng.normal(size=(300, c)).astype(np.float32)
    baseline = rng.uniform(0, 0.5, size=(h, w)).astype(np.float32)
    meta = _meta(grid=(h, w), feature_dim=c, n_patches=300, memory_bank=300, top_share=0.01)
    model = PatchCoreModel(
        meta=meta, index=KnnIndex("exact").fit(bank), baseline=baseline,
        shortlist=rng.integers(0, 300, size=(h * w, 4)),
    )  # fmt: skip
    feats = rng.normal(size=(3, h, w, c)).astype(np.float32)
    got = score(model, feats)
    q = feats.reshape(3, h * w, c).astype(np.float64)
    dist = np.sqrt(((q[:, :, None, :] - bank[None, None].astype(np.float64)) ** 2).sum(-1))
    nearest = dist.min(axis=2)
    judged = nearest - baseline.ravel()
    k = math.ceil(0.01 * h * w)
    assert k == 2
    expected = np.sort(judged, axis=1)[:, -k:].mean(axis=1)
    assert np.allclose(got.image, expected, atol=1e-4)
    assert np.allclose(got.patches.reshape(3, -1), nearest, atol=1e-4)  # all exact


def test_rotated_views_join_the_bank_only_and_calibration_images_stay_as_they_are(
    fewshot_engine: Engine,
) -> None:
    engine = fewshot_engine
    images = _images("stripes", 6)
    bb = engine.backbone()
    feats = engine.embed(images, bb, 64)
    asked: list[list[int]] = []

    def views(picked: np.ndarray) -> np.ndarray:
        asked.append(picked.tolist())
        return engine.embed(fewshot.rotated_views([images[i] for i in picked], 8), bb, 64)

    meta = _meta(grid=feats.shape[1:3], feature_dim=feats.shape[3], coreset_rate=0.5,
                 n_train_images=0, n_patches=0, memory_bank=0, **OPTIONS)  # fmt: skip
    out = fit_embedded(engine, feats, views, meta, None, lambda *_: None)
    train, cal = split(6, out.n_calibration, engine.config.seed)
    assert out.n_calibration == 3
    # first the bank images' views; the calibration images' only after their scores
    assert asked == [train.tolist(), cal.tolist()]
    prepared = fewshot.normalise(feats)
    rotated = fewshot.normalise(views(train))
    bank_only, _, _ = fit_bank(engine, prepared[train], meta, lambda *_: None, rotated)
    no_maps = np.zeros(len(cal), dtype=bool)
    expected = score(bank_only, prepared[cal], False, no_maps).image
    assert np.allclose(np.sort(out.ok_scores), np.sort(expected))
    assert out.model.meta.n_train_images == 6
    assert out.model.meta.n_patches == 6 * 8 * feats.shape[1] * feats.shape[2]


def test_one_image_fits_without_baseline_or_threshold(fewshot_engine: Engine) -> None:
    fit = fewshot_engine.fit(_images("checker", 1))
    model = fit.model
    assert model.baseline is None and model.threshold is None and fit.n_calibration == 0
    res = fewshot_engine.infer([InferItem(model, texture("checker", 40))])[0]
    assert res.verdict == "NO_MODEL" and res.score is not None
    assert res.error is not None and "not calibrated" in res.error


def test_appended_images_get_the_models_options(fewshot_engine: Engine) -> None:
    model = _fit(fewshot_engine, _images("stripes", 4), **OPTIONS)
    out = fewshot_engine.append(model, _images("stripes", 2, start=20)).model
    assert FewShot.of(out.meta) == FewShot.of(model.meta)
    assert out.meta.n_train_images == 6
    cells = model.meta.grid[0] * model.meta.grid[1]
    assert out.meta.n_patches == model.meta.n_patches + 2 * 8 * cells
    norms = np.linalg.norm(out.index.bank(), axis=1)
    assert np.allclose(norms, 1.0, atol=1e-5)


def test_baseline_min_stays_out_of_the_metadata_at_its_plain_value_and_round_trips() -> None:
    assert "baseline_min" not in _meta().to_dict()
    d = _meta(baseline_min=2).to_dict()
    assert d["baseline_min"] == 2
    assert FewShot.of(ModelMeta.from_dict(d)).baseline_min == 2


def test_a_few_leave_one_out_images_give_a_baseline_with_baseline_min(
    fewshot_engine: Engine,
) -> None:
    images = _images("stripes", 8)  # 4 held out: 4 bank images scored leave-one-out
    plain = _fit(fewshot_engine, images)
    assert plain.baseline is None and plain.meta.baseline_images == 0
    few = _fit(fewshot_engine, images, baseline_min=2)
    assert few.baseline is not None and few.baseline.shape == tuple(few.meta.grid)
    assert few.meta.baseline_images == 4
    # frames are scored less what OK parts show at each place
    feats = fewshot_engine.embed(_images("stripes", 2, start=40), fewshot_engine.backbone(), 64)
    b = score(few, feats)
    judged = b.patches.reshape(2, -1) - few.baseline.ravel()
    assert np.allclose(b.image, judged.max(axis=1), atol=1e-5)
