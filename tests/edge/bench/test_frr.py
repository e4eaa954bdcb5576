"""``bdi bench frr`` run tiny on a few real images: its JSON has the keys and sane values.

Nothing here asserts on a duration or on the measured rates themselves (a handful of
images says nothing about them): benchmarks print numbers, tests check their shape.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from edge.bench.frr import split_sizes
from edge.cli import main
from tests.helpers.mvtec import mvtec_subset

TINY = ["--size", "64", "--coreset-rate", "0.5", "--json"]
KEYS = {"dataset", "alpha", "n_splits", "n_calibration", "frr_mean", "frr_p95", "ng_miss_rate",
        "guaranteed", "needed", "bound", "n_train", "n_test_ok", "n_ng", "training_draws",
        "splits_per_draw", "folded", "seconds", "backbone", "size"}  # fmt: skip


@pytest.fixture(scope="module")
def tiny_plate(tmp_path_factory: pytest.TempPathFactory, metal_plate: Path) -> Path:
    """8 + 4 OK images (a pool of 12) and 3 defects of metal_plate."""
    return mvtec_subset(metal_plate, tmp_path_factory.mktemp("plate") / "metal_plate", 8, 4, 3)


def _run(capsys: pytest.CaptureFixture[str], data: Path, *extra: str) -> dict:
    assert main(["bench", "frr", "--data", str(data), *TINY, *extra]) == 0
    return orjson.loads(capsys.readouterr().out)


def test_tiny_run_reports_the_rates_over_every_split(capsys, tiny_plate: Path):
    result = _run(capsys, tiny_plate, "--alpha", "0.2", "--splits", "6", "--draws", "2",
                  "--folded", "2")  # fmt: skip
    assert result.keys() >= KEYS
    assert result["dataset"] == "metal_plate" and result["alpha"] == 0.2
    assert result["n_splits"] == 6 and result["training_draws"] == 2
    assert result["splits_per_draw"] == 3
    # a pool of 12: test a quarter (3), the fit's 9 hold out what alpha 0.2 needs (4)
    assert (result["n_train"], result["n_calibration"], result["n_test_ok"]) == (5, 4, 3)
    assert result["n_ng"] == 3
    assert result["guaranteed"] is True and result["needed"] == 4
    assert 0.0 < result["bound"] <= 0.2
    assert 0.0 <= result["frr_mean"] <= result["frr_p95"] <= result["frr_max"] <= 1.0
    assert 0.0 <= result["ng_miss_rate"] <= 1.0
    folded = result["folded"]
    assert folded["n_splits"] == 2
    # the fold only adds bank rows: no score rises, so no more rejects
    assert folded["max_score_change"] <= 1e-5
    assert folded["frr_mean"] <= folded["frr_mean_before"]
    assert folded["ng_miss_rate"] >= folded["ng_miss_rate_before"]


def test_too_few_images_for_alpha_is_reported_not_refused(capsys, tiny_plate: Path):
    result = _run(capsys, tiny_plate, "--alpha", "0.01", "--splits", "2", "--draws", "1",
                  "--folded", "0")  # fmt: skip
    assert result["guaranteed"] is False and result["needed"] == 99
    assert result["n_calibration"] < 99
    assert result["folded"]["n_splits"] == 0 and result["folded"]["frr_mean"] is None


def test_split_sizes_reach_what_alpha_needs_when_the_pool_allows():
    assert split_sizes(235, 0.01, 0.2) == (99, 99, 37)  # tire: calibration 99 = needed
    assert split_sizes(80, 0.05, 0.2) == (41, 19, 20)  # metal_plate
    small = split_sizes(80, 0.01, 0.2)  # 99 cannot be had from 80: half the fit's images
    assert small.calibration == 36 and small.test == 8
    for n in (4, 10, 80, 235, 333):
        for alpha in (0.2, 0.05, 0.01):
            s = split_sizes(n, alpha, 0.2)
            assert min(s.train, s.calibration, s.test) >= 1 and sum((s.train, s.calibration,
                                                                    s.test)) == n  # fmt: skip
            assert s.test >= 0.1 * n and s.calibration <= 0.45 * n


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--alpha", "1.5"], "not in (0, 1)"),
        (["--alpha", "0.05", "--splits", "2", "--draws", "3"], "--draws"),
        (["--alpha", "0.05", "--data", "/nonexistent"], "not found"),
    ],
)
def test_bad_options_give_one_line_and_no_traceback(capsys, argv: list[str], message: str):
    argv = ["bench", "frr", "--data", "/nonexistent", *argv] if "--data" not in argv else [
        "bench", "frr", *argv]  # fmt: skip
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code
    err = capsys.readouterr().err
    assert code != 0
    assert message in err and "Traceback" not in err
