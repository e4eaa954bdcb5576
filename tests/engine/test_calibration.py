"""Thresholds from OK scores, or OK and NG scores together."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import orjson
import pytest

from engine.calibration import (
    NG_MISS_COST,
    Calibration,
    CalibrationError,
    from_ok,
    from_ok_ng,
)


@pytest.mark.parametrize("percentile", [50.0, 95.0, 99.5, 100.0])
def test_from_ok_is_the_percentile(percentile: float) -> None:
    ok = np.random.default_rng(0).gamma(2.0, 1.0, size=200)
    cal = from_ok(ok, percentile)
    assert cal.threshold == pytest.approx(np.percentile(ok, percentile))
    assert cal.method == "ok_percentile"
    assert cal.percentile == percentile
    assert cal.ng is None and cal.ng_miss_rate is None
    assert cal.ok_reject_rate == pytest.approx(float((ok >= cal.threshold).mean()))
    assert cal.ok.n == 200
    assert cal.ok.max == pytest.approx(ok.max())
    assert cal.ok.p95 == pytest.approx(np.percentile(ok, 95))


def test_from_ok_at_100_rejects_only_the_top_score() -> None:
    cal = from_ok([1.0, 2.0, 3.0, 4.0], 100.0)
    assert cal.threshold == 4.0
    assert cal.ok_reject_rate == pytest.approx(0.25)


def test_separable_threshold_is_the_midpoint() -> None:
    cal = from_ok_ng([0.1, 0.3, 0.2], [0.9, 0.7, 1.5], 99.0)
    assert cal.threshold == pytest.approx(0.5)
    assert cal.method == "ok_ng"
    assert cal.ng_miss_rate == 0.0
    assert cal.ok_reject_rate == 0.0
    assert cal.ng is not None and cal.ng.min == pytest.approx(0.7)


def test_overlap_prefers_rejecting_ok_to_missing_ng() -> None:
    ok = [1.0, 2.0, 3.0, 4.0, 5.0]
    ng = [4.5, 6.0, 7.0]
    cal = from_ok_ng(ok, ng, 99.0)
    # t=4.5 catches every NG and rejects one OK (cost 1); any higher t misses an NG (>= 10)
    assert cal.threshold == pytest.approx(4.5)
    assert cal.ng_miss_rate == 0.0
    assert cal.ok_reject_rate == pytest.approx(0.2)


def test_overlap_misses_ng_only_when_catching_it_costs_more() -> None:
    ok = np.arange(20.0)  # catching the NG at 0.5 would reject 19 OK parts (> NG_MISS_COST)
    ng = [0.5, 30.0, 31.0]
    assert NG_MISS_COST < 19
    cal = from_ok_ng(ok, ng, 99.0)
    assert cal.threshold == pytest.approx(30.0)
    assert cal.ng_miss_rate == pytest.approx(1 / 3)
    assert cal.ok_reject_rate == 0.0


def test_overlap_cost_ties_go_to_the_lowest_threshold() -> None:
    # t=5: no miss, 10 rejects (cost 10); t=9: one miss, no reject (cost 10) -> 5
    ok = [5.0] * 10 + [1.0]
    ng = [5.0, 9.0]
    cal = from_ok_ng(ok, ng, 99.0)
    assert cal.threshold == pytest.approx(5.0)
    assert cal.ng_miss_rate == 0.0


def test_overlap_threshold_minimises_the_cost() -> None:
    rng = np.random.default_rng(1)
    ok = rng.normal(0.0, 1.0, 300)
    ng = rng.normal(1.5, 1.0, 40)
    cal = from_ok_ng(ok, ng, 99.0)

    def cost(t: float) -> float:
        return NG_MISS_COST * float((ng < t).sum()) + float((ok >= t).sum())

    candidates = np.unique(np.concatenate([ok, ng, [ok.max() + 1.0]]))
    assert cost(cal.threshold) == min(cost(t) for t in candidates)


@pytest.mark.parametrize("bad", [[], [1.0, float("nan")], [1.0, float("inf")], [-math.inf]])
def test_unusable_ok_scores_are_refused(bad: list[float]) -> None:
    with pytest.raises(CalibrationError):
        from_ok(bad, 99.0)
    with pytest.raises(CalibrationError):
        from_ok_ng(bad, [5.0], 99.0)


@pytest.mark.parametrize("bad", [[], [5.0, float("nan")], [float("inf")]])
def test_unusable_ng_scores_are_refused(bad: list[float]) -> None:
    with pytest.raises(CalibrationError):
        from_ok_ng([1.0, 2.0], bad, 99.0)


@pytest.mark.parametrize(
    "cal",
    [from_ok([1.0, 2.0, 3.5], 95.0), from_ok_ng([1.0, 2.0, 3.0], [2.5, 9.0], 99.0)],
    ids=["ok", "ok_ng"],
)
def test_dict_round_trip(cal: Calibration) -> None:
    assert Calibration.from_dict(cal.to_dict()) == cal
    assert Calibration.from_dict(orjson.loads(orjson.dumps(cal.to_dict()))) == cal


def _recalibrated() -> tuple[Calibration, Calibration]:
    ok = np.random.default_rng(1).gamma(2.0, 1.0, size=100)
    return from_ok(ok, 99.0), from_ok_ng(ok, ok + 10.0, 99.0)


def test_the_calibration_version_names_its_content_not_when_it_was_made() -> None:
    trained, calibrated = _recalibrated()
    assert len(trained.version) == 16 and trained.version != calibrated.version
    again = Calibration.from_dict({**trained.to_dict(), "created_at": 1.0})
    assert again.version == trained.version  # same threshold and statistics
    moved = Calibration.from_dict({**trained.to_dict(), "threshold": trained.threshold + 1e-9})
    assert moved.version != trained.version
    # a copy with another threshold is another calibration, never the old version carried over
    replaced = dataclasses.replace(trained, threshold=moved.threshold)
    assert replaced.version == moved.version
    assert "version" not in trained.to_dict()  # the file format is unchanged


def test_a_file_written_before_calibration_versions_gets_one_when_read() -> None:
    """Written by an older release: no version in it, numbers as the JSON had them."""
    stats = {"n": 12, "mean": 3, "std": 1.5, "min": 1, "max": 7, "p50": 3, "p95": 6, "p99": 7}
    old = {"threshold": 7, "method": "ok_percentile", "percentile": 99.5, "ok": stats,
           "ng": None, "ok_reject_rate": 0.0833, "ng_miss_rate": None,
           "created_at": 1e9}  # fmt: skip
    from_file = Calibration.from_dict(orjson.loads(orjson.dumps(old)))
    floats = {k: float(v) if isinstance(v, int) else v for k, v in stats.items()}
    as_floats = {**old, "threshold": 7.0, "ok": floats}
    assert from_file.version == Calibration.from_dict(as_floats).version
    # the store, which never imports the engine, names the same version from the file
    from store.models import calibration_facts

    assert calibration_facts(orjson.dumps(old)).version == from_file.version
    # ...also for a file that leaves out fields the engine fills with their defaults
    sparse = {k: v for k, v in old.items() if k not in ("method", "ok_reject_rate")}
    assert calibration_facts(orjson.dumps(sparse)).version == (
        Calibration.from_dict(sparse).version
    )


def test_a_calibration_written_and_read_back_keeps_its_version() -> None:
    for calibration in _recalibrated():
        data = orjson.loads(orjson.dumps(calibration.to_dict(), option=orjson.OPT_INDENT_2))
        assert Calibration.from_dict(data).version == calibration.version
