"""Adding OK images to a fitted model without a refit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.artifact import load, save
from engine.coreset import continue_coreset, coverage_radius, greedy_coreset, random_projection
from engine.decision import InferItem
from engine.incremental import extend_shortlist, reference_scores
from engine.knn import KnnIndex
from tests.helpers.images import texture


def test_continuing_the_greedy_rule_covers_nearly_as_well_as_a_refit() -> None:
    x = torch.randn(6000, 48, generator=torch.Generator().manual_seed(1))
    full = greedy_coreset(x, 600, 32, 0)
    first = greedy_coreset(x[:4800], 480, 32, 0)
    more = continue_coreset(x[4800:], x[:4800][first.indices], 120, 32, 0)
    together = torch.cat([first.indices, 4800 + more.indices])
    assert len(set(together.tolist())) == 600
    radius = coverage_radius(random_projection(x, 32, 0), together)
    assert radius <= 1.05 * full.radius
    # the reported radius is the new rows' coverage by every centre, old and new
    z_new = random_projection(x[4800:], 32, 0)
    centres = random_projection(x[:4800][first.indices], 32, 0)
    centres = torch.cat([centres, z_new[more.indices]])
    assert more.radius == pytest.approx(
        float(torch.cdist(z_new, centres).min(1).values.max()), rel=1e-4
    )


@pytest.mark.parametrize("mode", ["exact", "ivf"])
def test_an_index_gains_rows_and_the_old_one_stays(mode: str) -> None:
    rng = np.random.default_rng(0)
    bank = rng.normal(size=(3000, 16)).astype(np.float32)
    extra = rng.normal(size=(50, 16)).astype(np.float32) + 10.0
    index = KnnIndex(mode, nprobe=64).fit(bank)
    grown = index.add(extra)
    assert grown.size == 3050 and index.size == 3000 and grown.kind == index.kind
    np.testing.assert_array_equal(grown.bank()[3000:], extra)
    dist, ids = grown.search(extra[:5], exact=True)
    assert (ids[:, 0] == np.arange(3000, 3005)).all() and np.allclose(dist, 0.0, atol=1e-3)
    if mode == "ivf":  # the lists were not retrained
        assert grown.cpu_index().nlist == index.cpu_index().nlist


def test_new_rows_join_the_shortlist_where_they_came_from() -> None:
    shortlist = np.zeros((16, 8), dtype=np.int32)
    out = extend_shortlist(shortlist, (4, 4), np.array([5]), first_row=100)
    around = {0, 1, 2, 4, 5, 6, 8, 9, 10}
    for cell in range(16):
        assert (100 in out[cell]) == (cell in around)
    assert (out[5, :-1] == 0).all()  # only the last entry replaced


def test_append_adds_rows_keeps_the_bound_and_scores_the_new_images_low(make_engine) -> None:
    engine = make_engine(threshold_method="conformal", target_frr=0.2, calibration_share=0.3)
    base = engine.fit([texture("stripes", seed) for seed in range(10)]).model
    new_images = [texture("checker", seed) for seed in range(6)]
    before = engine.image_scores(base, new_images)
    out = engine.append(base, new_images)
    model = out.model
    assert model.version != base.version
    assert model.meta.n_train_images == 16
    assert model.index.size > base.index.size
    assert model.held_out is not None and len(model.held_out) == model.index.size
    np.testing.assert_array_equal(model.index.bank()[: base.index.size], base.index.bank())
    after = engine.image_scores(model, new_images)
    assert (after < before).all()  # the new kind is now known
    # the threshold was recomputed from the old and the new held-out scores
    cal = model.calibration
    assert cal is not None and cal.conformal is not None
    assert out.n_calibration == 2 and cal.conformal.n == base.calibration.conformal.n + 2
    assert set(base.calibration.conformal.scores) <= set(cal.conformal.scores)
    # and old images score no higher than before (rows only added)
    old = [texture("stripes", seed) for seed in range(20, 24)]
    assert (engine.image_scores(model, old) <= engine.image_scores(base, old) + 1e-6).all()


def test_reference_scores_leave_out_the_held_out_rows(make_engine) -> None:
    engine = make_engine(threshold_method="conformal", target_frr=0.2, calibration_share=0.3)
    model = engine.fit([texture("stripes", seed) for seed in range(10)]).model
    images = [texture("stripes", seed) for seed in range(30, 33)]
    feats = engine.embed(images, engine.backbone_for(model), model.meta.image_size)
    ref = reference_scores(model, feats)
    full = engine.image_scores(model, images)
    assert (ref >= full - 1e-5).all()


def test_one_appended_image_goes_to_the_bank_and_the_threshold_stays(make_engine) -> None:
    engine = make_engine(threshold_method="conformal", target_frr=0.2)
    base = engine.fit([texture("stripes", seed) for seed in range(10)]).model
    image = texture("checker", 3)
    out = engine.append(base, [image])
    assert out.n_calibration == 0
    assert out.model.threshold == base.threshold
    (result,) = engine.infer([InferItem(out.model, image)])
    assert result.verdict == "OK" and result.score < base.threshold


def test_an_appended_model_round_trips(make_engine, tmp_path) -> None:
    engine = make_engine(threshold_method="conformal", target_frr=0.2, calibration_share=0.3)
    base = engine.fit([texture("stripes", seed) for seed in range(10)]).model
    model = engine.append(base, [texture("checker", s) for s in range(4)]).model
    save(model, tmp_path, "m")
    back = load(tmp_path, "m")
    assert back.version == model.version
    np.testing.assert_array_equal(back.held_out, model.held_out)
    assert back.meta.coverage_radius == model.meta.coverage_radius is not None
    assert back.calibration == model.calibration


def test_append_refuses_an_empty_list(make_engine) -> None:
    from engine.errors import EngineError

    engine = make_engine()
    base = engine.fit([texture("stripes", seed) for seed in range(4)]).model
    with pytest.raises(EngineError, match="no OK images"):
        engine.append(base, [])


@pytest.mark.parametrize("radius", [None, 0.5, 0.0])
def test_the_device_continuation_matches_the_pruned_one(radius: float | None) -> None:
    """Same picks from the device path (run here on CPU tensors) as from the CPU path, with
    and without a radius to reach (0.0: every row)."""
    from engine.coreset import _continue_dense, _nearest_centres

    x = torch.randn(400, 16, generator=torch.Generator().manual_seed(2))
    prior = torch.randn(50, 16, generator=torch.Generator().manual_seed(3))
    cpu = continue_coreset(x, prior, 20, 16, 0, radius=radius)
    z, zp = random_projection(x, 16, 0), random_projection(prior, 16, 0)
    dist, _ = _nearest_centres(z, zp)
    dense = _continue_dense(z, dist.square(), 20, radius)
    assert set(dense.indices.tolist()) == set(cpu.indices.tolist())
    assert dense.radius == pytest.approx(cpu.radius, abs=1e-4)
    if radius is not None:
        assert cpu.radius <= radius + 1e-6 or len(cpu.indices) == 400
