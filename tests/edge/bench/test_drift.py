"""``bdi bench drift`` run tiny on a few real images: its JSON has the keys the issue names
and both detectors' numbers. Nothing here asserts on the measured numbers themselves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest

from edge.bench.drift import SHIFTS, jitter
from edge.cli import main
from tests.helpers.mvtec import mvtec_subset

KEYS = {"dataset", "detector", "stable_frames", "false_alarms", "false_alarm_rate", "shifts",
        "candidates", "n_calibration", "machine"}  # fmt: skip


@pytest.fixture(scope="module")
def tiny_plate(tmp_path_factory: pytest.TempPathFactory, metal_plate: Path) -> Path:
    return mvtec_subset(metal_plate, tmp_path_factory.mktemp("plate") / "metal_plate", 10, 4, 1)


def test_tiny_run_reports_false_alarms_and_frames_to_alarm(capsys, tiny_plate: Path):
    args = ["bench", "drift", "--data", str(tiny_plate), "--size", "64", "--stable", "300",
            "--distinct", "16", "--shift-distinct", "8", "--prefix", "50", "--max-shifted",
            "60", "--repeats", "2", "--json"]  # fmt: skip
    assert main(args) == 0
    result = orjson.loads(capsys.readouterr().out)
    assert result.keys() >= KEYS
    assert result["dataset"] == "metal_plate" and result["stable_frames"] == 300
    assert result["detector"] == "adwin" and set(result["candidates"]) == {"adwin", "martingale"}
    for numbers in result["candidates"].values():
        assert set(numbers["shifts"]) == set(SHIFTS)
        for shift in numbers["shifts"].values():
            assert shift.keys() >= {"detected", "frames_to_alarm"}
    assert result["false_alarm_rate"] == pytest.approx(1000 * result["false_alarms"] / 300)


def test_jitter_keeps_the_size_and_makes_frames_distinct():
    rng = np.random.default_rng(0)
    image = np.random.default_rng(1).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    a, b = jitter(image, rng, noise=2.0), jitter(image, rng, noise=2.0)
    assert a.shape == image.shape and a.dtype == np.uint8 and not np.array_equal(a, b)
    moved = jitter(image, rng)  # a shift alone: the same pixels, moved
    assert moved.shape == image.shape and not np.array_equal(moved, image)
    for shift in SHIFTS.values():
        assert shift(image).shape == image.shape


def test_a_folder_that_is_not_mvtec_is_one_clear_line(tmp_path, capsys):
    assert main(["bench", "drift", "--data", str(tmp_path), "--json"]) != 0
    err = capsys.readouterr().err
    assert "MVTec-layout" in err and "Traceback" not in err
