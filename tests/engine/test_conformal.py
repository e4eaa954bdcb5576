"""The conformal OK-only threshold: its rank, its bound, its p-values, and on a real fit."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from engine import conformal
from engine.calibration import Calibration, from_conformal, from_ok_ng
from engine.training import held_out_count, split
from tests.helpers.images import texture


@pytest.mark.parametrize(
    ("alpha", "n", "k"),
    [(0.05, 19, 19), (0.05, 20, 20), (0.05, 39, 38), (0.01, 99, 99), (0.1, 9, 9), (0.1, 100, 91)],
)
def test_the_threshold_is_the_kth_smallest_score(alpha: float, n: int, k: int) -> None:
    scores = np.random.default_rng(n).normal(size=n)
    record = conformal.record(scores, alpha)
    assert record.k == k == conformal.rank(alpha, n)
    kth = np.sort(scores)[k - 1]
    assert record.threshold == np.nextafter(kth, np.inf)  # a score equal to s_(k) is OK
    assert record.threshold > kth and not record.threshold > np.nextafter(kth, np.inf)
    assert record.guaranteed
    assert record.bound == pytest.approx((n + 1 - k) / (n + 1)) and record.bound <= alpha


@pytest.mark.parametrize(("alpha", "needed"), [(0.05, 19), (0.01, 99), (0.1, 9), (0.2, 4)])
def test_too_few_scores_are_marked_unguaranteed(alpha: float, needed: int) -> None:
    assert conformal.needed(alpha) == needed
    record = conformal.record(np.arange(needed - 1, dtype=float), alpha)
    assert not record.guaranteed and record.needed == needed
    assert record.k == record.n and record.threshold == np.nextafter(needed - 2, np.inf)
    assert record.bound > alpha
    assert conformal.record(np.arange(needed, dtype=float), alpha).guaranteed


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.1, 1.5])
def test_a_target_outside_zero_one_is_refused(alpha: float) -> None:
    with pytest.raises(ValueError, match="false-reject rate"):
        conformal.record([1.0, 2.0], alpha)


def test_the_false_reject_rate_of_exchangeable_ok_scores_is_at_most_alpha() -> None:
    """Simulated: calibration and test OK scores from one distribution; the share of test
    scores at or above the threshold, averaged over many draws, stays at or below alpha."""
    rng = np.random.default_rng(7)
    for alpha, n in ((0.05, 40), (0.1, 30), (0.01, 120)):
        rates = []
        for _ in range(2000):
            cal = conformal.record(rng.gamma(2.0, size=n), alpha)
            rates.append((rng.gamma(2.0, size=50) >= cal.threshold).mean())
        assert np.mean(rates) <= alpha + 0.003, (alpha, n, np.mean(rates))
        assert np.mean(rates) >= cal.bound - 0.01  # and not far below the bound


def test_p_values_count_the_scores_at_or_above() -> None:
    record = conformal.record([1.0, 2.0, 3.0, 4.0], 0.2)
    assert record.p_value(10.0) == pytest.approx(1 / 5)
    assert record.p_value(3.0) == pytest.approx(3 / 5)
    assert record.p_value(2.5) == pytest.approx(3 / 5)
    assert record.p_value(0.0) == pytest.approx(1.0)


def test_p_values_of_exchangeable_scores_are_uniform() -> None:
    rng = np.random.default_rng(3)
    record = conformal.record(rng.normal(size=200), 0.05)
    p = np.array([record.p_value(s) for s in rng.normal(size=5000)])
    for u in (0.05, 0.1, 0.5):
        assert abs((p <= u).mean() - u) < 0.03


def test_the_record_travels_with_the_calibration_file() -> None:
    cal = from_conformal([3.0, 1.0, 2.0] * 10, 0.05, 99.5)
    assert cal.method == "conformal" and cal.conformal is not None
    data = orjson.loads(orjson.dumps(cal.to_dict()))
    assert data["conformal"]["alpha"] == 0.05 and data["conformal"]["n"] == 30
    back = Calibration.from_dict(data)
    assert back == cal and back.version == cal.version
    assert back.p_value(2.5) == cal.p_value(2.5) == pytest.approx((1 + 10) / 31)


def test_an_ng_calibration_keeps_the_held_out_scores() -> None:
    held = conformal.record(np.linspace(0, 1, 30), 0.05)
    cal = from_ok_ng([0.1, 0.2], [5.0, 6.0], 99.5, held)
    assert cal.method == "ok_ng" and cal.conformal == held
    assert cal.p_value(0.5) == held.p_value(0.5)


def test_legacy_files_have_no_record_and_keep_their_version() -> None:
    old = from_ok_ng([0.1, 0.2], [5.0, 6.0], 99.5)
    assert "conformal" not in old.to_dict() and old.p_value(1.0) is None


def test_a_damaged_record_is_refused() -> None:
    data = from_conformal(np.arange(30.0), 0.05, 99.5).to_dict()
    data["conformal"]["n"] = 31
    with pytest.raises(ValueError, match="conformal record"):
        Calibration.from_dict(data)


@pytest.mark.parametrize(
    ("n", "alpha", "share", "held"),
    [
        (1, 0.05, 0.2, 0),
        (10, 0.05, 0.2, 5),
        (50, 0.05, 0.2, 19),
        (200, 0.05, 0.2, 40),
        (300, 0.01, 0.2, 99),
    ],
)
def test_held_out_count(n: int, alpha: float, share: float, held: int) -> None:
    assert held_out_count(n, alpha, share) == held


def test_the_split_is_random_but_reproducible() -> None:
    train, cal = split(40, 10, seed=0)
    assert len(cal) == 10 and len(train) == 30 and not set(train) & set(cal)
    assert list(cal) != list(range(10)) and list(cal) != list(range(30, 40))
    again = split(40, 10, seed=0)
    assert (again[1] == cal).all()


def test_a_conformal_fit_holds_out_images_then_banks_them(make_engine) -> None:
    engine = make_engine(threshold_method="conformal", target_frr=0.2, calibration_share=0.3)
    images = [texture("stripes", seed) for seed in range(10)]
    fit = engine.fit(images)
    cal = fit.model.calibration
    assert cal is not None and cal.method == "conformal" and cal.conformal is not None
    assert fit.n_calibration == cal.conformal.n == 4  # needed(0.2) = 4 > 0.3 * 10
    assert cal.conformal.guaranteed and cal.conformal.alpha == 0.2
    # every image ends up in the bank: the held-out ones too, flagged
    assert fit.model.meta.n_train_images == 10
    assert fit.model.held_out is not None and fit.model.held_out.any()
    assert not fit.model.held_out.all()
    # the held-out images scored high before they joined; now, in the bank, they score low
    rescored = engine.image_scores(fit.model, images)
    assert rescored.max() <= max(cal.conformal.scores) + 1e-6
    # every verdict carries its p-value
    from engine.decision import InferItem

    (result,) = engine.infer([InferItem(fit.model, texture("stripes", 99))])
    assert result.p_value is not None and 0 < result.p_value <= 1
    assert result.p_value == cal.p_value(result.score)


def test_an_explicit_target_overrides_the_setting(make_engine) -> None:
    engine = make_engine(threshold_method="conformal", target_frr=0.2)
    fit = engine.fit([texture("stripes", seed) for seed in range(8)], target_frr=0.5)
    assert fit.model.calibration is not None and fit.model.calibration.conformal is not None
    assert fit.model.calibration.conformal.alpha == 0.5
