"""``bdi bench incremental`` run tiny on a few real images: its JSON has the keys and sane
values, and the coverage radius it reports is the one it says.

Nothing here asserts on a duration: benchmarks print numbers, tests check their shape.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from edge.bench.engine import _read, load_mvtec
from edge.bench.incremental import coverage_radii
from edge.cli import main
from engine.engine import Engine
from tests.helpers.mvtec import mvtec_subset
from tests.helpers.settings import tiny_settings

KEYS = {"full_fit_s", "append_s", "image_auroc_full", "image_auroc_append", "pixel_auroc_full",
        "pixel_auroc_append", "radius_full", "radius_append", "append_vs_full_s",
        "radius_ratio", "memory_bank_full", "memory_bank_append", "bank_ratio"}  # fmt: skip


@pytest.fixture(scope="module")
def tiny_plate(tmp_path_factory: pytest.TempPathFactory, metal_plate: Path) -> Path:
    """10 training images, 3 good and 3 defective (with masks) test images of metal_plate."""
    return mvtec_subset(metal_plate, tmp_path_factory.mktemp("plate") / "metal_plate", 10, 3, 3)


def test_tiny_run_compares_append_with_a_full_fit(capsys, tiny_plate: Path):
    argv = ["bench", "incremental", "--data", str(tiny_plate), "--size", "64",
            "--coreset-rate", "0.5", "--rounds", "2", "--json"]  # fmt: skip
    assert main(argv) == 0
    result = orjson.loads(capsys.readouterr().out)
    assert result.keys() >= KEYS
    assert (result["n_train"], result["n_base"], result["n_appended"]) == (10, 8, 2)
    assert result["rounds"] == 2
    assert result["full_fit_s"] > 0 and result["append_s"] > 0
    # the seconds are printed to the millisecond, the ratio from the unrounded ones
    rounding = 0.0006 * (1 + result["append_s"] / result["full_fit_s"]) / result["full_fit_s"]
    assert result["append_vs_full_s"] == pytest.approx(
        result["append_s"] / result["full_fit_s"], rel=0.05, abs=rounding + 1e-4
    )
    for key in ("image_auroc_full", "image_auroc_append", "pixel_auroc_full",
                "pixel_auroc_append"):  # fmt: skip
        assert 0.0 <= result[key] <= 1.0, key
    assert result["radius_full"] > 0 and result["radius_append"] > 0
    # the appended bank holds the base bank and rows for the 2 new images
    assert result["memory_bank_base"] < result["memory_bank_append"]
    assert result["threshold_full"] is not None and result["threshold_append"] is not None


def test_a_bank_of_every_patch_covers_them_all(tiny_plate: Path):
    """coreset rate 1: every training patch is a bank row, so the radius is 0 (to the
    rounding of distances taken as |x|² + |m|² - 2 x·m in float32); at half of them it is
    not."""
    paths, _ = load_mvtec(tiny_plate)
    images = [_read(p) for p in paths[:4]]
    everything = Engine.from_settings(tiny_settings(coreset_rate=1.0))
    half = Engine.from_settings(tiny_settings(coreset_rate=0.5))
    (zero,) = coverage_radii(everything, images, [everything.fit(images).model])
    (radius,) = coverage_radii(half, images, [half.fit(images).model])
    assert zero < 0.02 * radius


def test_a_missing_folder_gives_one_line(capsys):
    assert main(["bench", "incremental", "--data", "/nonexistent", "--json"]) != 0
    err = capsys.readouterr().err
    assert "not found" in err and "Traceback" not in err
