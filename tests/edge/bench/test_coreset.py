"""``bdi bench coreset`` run tiny on synthetic discs: its JSON has the keys and sane values
(the lazy path equals exact greedy on the sample), its options work, and bad input is one
clear line.

Nothing here asserts on a duration: benchmarks print numbers, tests check their shape.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from edge.bench import coreset as bench_coreset
from edge.bench.coreset import SHARED_SETS, anomalib_reference, default_sets
from edge.cli import main
from tests.helpers.images import ok_png

KEYS = {"data", "n_images", "n_patches", "k", "coreset_s", "radius", "distances_per_step",
        "sample_patches", "sample_k", "sample_radius", "sample_radius_exact", "radius_ratio",
        "sample_same_selection"}  # fmt: skip
BASELINE = {"coreset_s_pruned", "radius_pruned", "speedup_vs_pruned", "same_selection_as_pruned"}
README = """# data

## discs/disc
Synthetic. Measured: its greedy coreset selection takes about 76 s for 42,336
patches, and more.

## other/thing
greedy coreset 1,215 s for 164,640 patches (→ 16,464)
"""


@pytest.fixture(scope="module")
def disc_sets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two MVTec-layout sets of synthetic OK discs under one root, whose README gives an
    anomalib time for one of them (as the shared data's does)."""
    root = tmp_path_factory.mktemp("data")
    for name, seeds in (("discs/disc", range(4)), ("plain/plate", range(10, 13))):
        for sub in ("train/good", "test/good"):
            folder = root / name / sub
            folder.mkdir(parents=True)
            for seed in seeds:
                (folder / f"{seed:03d}.png").write_bytes(ok_png(seed))
    (root / "README.md").write_text(README, encoding="utf-8")
    return root


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    base = ["bench", "coreset", "--size", "64", "--weights", "random", "--json"]
    assert main([*base, *argv]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1
    return orjson.loads(lines[0])


def test_tiny_run_compares_lazy_with_pruned_and_exact(capsys, disc_sets: Path):
    result = _run(capsys, "--data", str(disc_sets / "discs/disc"),
                  "--data", str(disc_sets / "plain/plate"), "--sample", "100")  # fmt: skip
    assert result["coreset_rate"] == 0.1 and result["projection_dim"] == 128
    disc, plate = result["sets"]
    for got, images in ((disc, 4), (plate, 3)):
        assert got.keys() >= KEYS | BASELINE
        assert got["n_images"] == images
        assert got["n_patches"] % images == 0  # the same grid per image
        assert got["k"] == int(got["n_patches"] * 0.1)
        assert got["coreset_s"] >= 0 and got["coreset_s_pruned"] >= 0
        assert got["radius"] > 0
        assert got["radius_pruned"] == pytest.approx(got["radius"], rel=1e-4)
        assert got["sample_patches"] == min(100, got["n_patches"])
        assert got["sample_k"] == int(got["sample_patches"] * 0.1)
        # exact greedy: the lazy path's radius is the exact one
        assert got["radius_ratio"] == pytest.approx(1.0, abs=1e-5)
        assert got["sample_same_selection"] is True
    # anomalib's time comes from the README beside the set, where it gives one
    assert disc["anomalib_coreset_s"] == 76 and disc["anomalib_patches"] == 42_336
    assert disc["speedup_vs_anomalib"] > 0
    assert "anomalib_coreset_s" not in plate


def test_baseline_and_sample_can_be_skipped(capsys, disc_sets: Path):
    result = _run(capsys, "--data", str(disc_sets / "plain/plate"), "--skip-baseline",
                  "--sample", "0", "--coreset-rate", "0.5")  # fmt: skip
    (got,) = result["sets"]
    assert not got.keys() & BASELINE
    assert "radius_ratio" not in got
    assert got["k"] == int(got["n_patches"] * 0.5)


def test_anomalib_reference_reads_either_phrasing(disc_sets: Path, tmp_path: Path):
    assert anomalib_reference(disc_sets / "discs" / "disc") == {
        "anomalib_coreset_s": 76, "anomalib_patches": 42_336,
    }  # fmt: skip
    other = tmp_path / "other" / "thing"
    other.mkdir(parents=True)
    assert anomalib_reference(other) is None  # no README
    (tmp_path / "README.md").write_text(README, encoding="utf-8")
    assert anomalib_reference(other) == {"anomalib_coreset_s": 1215, "anomalib_patches": 164_640}
    assert anomalib_reference(disc_sets / "plain" / "plate") is None  # no section


def test_default_sets_are_the_shared_data(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("BDI_TEST_DATA", str(tmp_path))
    assert default_sets() == [tmp_path / name for name in SHARED_SETS]


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--data", "nowhere"], "MVTec"),
        (["--data", "{root}/discs"], "train"),  # a folder, but not an MVTec layout
    ],
)
def test_a_wrong_data_folder_is_one_clear_line(capsys, disc_sets: Path, argv, needle):
    argv = [a.replace("{root}", str(disc_sets)) for a in argv]
    assert main(["bench", "coreset", "--weights", "random", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("bdi: error: ") and needle in captured.err
    assert len(captured.err.splitlines()) == 1


@pytest.mark.parametrize("option", [["--coreset-rate", "1.5"], ["--sample", "-1"]])
def test_bad_options_are_usage_errors(capsys, option):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "coreset", *option])
    assert exc.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_without_numba_it_is_one_clear_line(capsys, disc_sets: Path, monkeypatch):
    monkeypatch.setattr(bench_coreset, "_lazy_kernels", lambda: None)
    assert main(["bench", "coreset", "--data", str(disc_sets / "plain/plate")]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("bdi: error: numba")
    assert len(captured.err.splitlines()) == 1
