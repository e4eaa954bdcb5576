"""``bdi bench fewshot`` run tiny on synthetic discs with random weights: its JSON has the
table's shape (benchmarks print numbers; tests check their shape, not the numbers)."""

from __future__ import annotations

from pathlib import Path

import cv2
import orjson
import pytest

from edge.cli import main
from edge.simulator.discs import make_ng, make_ok
from engine.fewshot import FEWSHOT_DEFAULT, FewShot
from tests.helpers.images import SIZE

TINY = ["--weights", "random", "--size", "64", "--coreset-rate", "0.5", "--json"]


@pytest.fixture(scope="module")
def discs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MVTec-layout set: 6 OK training discs, 2 OK and 3 defective test discs (masks)."""
    root = tmp_path_factory.mktemp("fewshot") / "discs"
    for folder in ("train/good", "test/good", "test/crack", "ground_truth/crack"):
        (root / folder).mkdir(parents=True)
    for seed in range(6):
        cv2.imwrite(str(root / "train/good" / f"{seed:03d}.png"), make_ok(seed, SIZE).image)
    for seed in range(2):
        cv2.imwrite(str(root / "test/good" / f"{seed:03d}.png"), make_ok(100 + seed, SIZE).image)
    for seed in range(3):
        disc = make_ng(200 + seed, SIZE)
        cv2.imwrite(str(root / "test/crack" / f"{seed:03d}.png"), disc.image)
        mask = disc.mask.astype("uint8") * 255
        cv2.imwrite(str(root / "ground_truth/crack" / f"{seed:03d}_mask.png"), mask)
    return root


def test_tiny_run_reports_every_option_set_and_shot_count(capsys, discs: Path) -> None:
    argv = ["bench", "fewshot", "--data", str(discs), "--shots", "2,1", "--draws", "2",
            "--options", "plain,rot8+top1", *TINY]  # fmt: skip
    assert main(argv) == 0
    result = orjson.loads(capsys.readouterr().out)
    assert result["dataset"] == "discs" and result["random_weights"] is True
    assert result["shots"] == [1, 2] and result["draws"] == 2
    assert result["n_train"] == 6 and result["n_test"] == 5
    table = result["table"]
    assert list(table) == ["plain", "rot8+top1"]
    assert list(table["plain"]) == ["1", "2", "full"]  # the full-training anchor beside
    assert list(table["rot8+top1"]) == ["1", "2"]  # no rotated full training
    for rows in table.values():
        for row in rows.values():
            assert 0.0 <= row["image_auroc"] <= 1.0 and 0.0 <= row["pixel_auroc"] <= 1.0
            assert row["image_std"] >= 0.0
    assert len(table["plain"]["1"]["image_draws"]) == 2


def test_base2_has_no_full_anchor_and_the_threshold_method_is_reported(capsys, discs: Path) -> None:
    argv = ["bench", "fewshot", "--data", str(discs), "--shots", "4", "--draws", "1",
            "--options", "base2", "--threshold-method", "percentile", *TINY]  # fmt: skip
    assert main(argv) == 0
    result = orjson.loads(capsys.readouterr().out)
    assert result["threshold_method"] == "percentile"
    assert result["input_mode"] == "square" and result["input_shape"] == [64, 64]
    # a full training set has 16 leave-one-out images and more: base2 is plain there
    assert list(result["table"]["base2"]) == ["4"]


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--shots", "0,2"),
        ("--shots", "a"),
        ("--options", "nope"),
        ("--shots", "99"),
        ("--threshold-method", "nope"),
    ],
)
def test_bad_options_get_one_clear_line(capsys, discs: Path, flag: str, value: str) -> None:
    try:
        code = main(["bench", "fewshot", "--data", str(discs), *TINY, flag, value])
    except SystemExit as exc:  # a usage error
        code = int(exc.code or 0)
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0
    assert "Traceback" not in "\n".join(err)
    assert err and err[-1]


@pytest.mark.parametrize(("below", "options"), [("0", FewShot()), ("100", FEWSHOT_DEFAULT)])
def test_bench_engine_reports_the_models_options(
    capsys, monkeypatch: pytest.MonkeyPatch, discs: Path, below: str, options: FewShot
) -> None:
    monkeypatch.setenv("BDI_FEWSHOT_BELOW", below)
    argv = ["bench", "engine", "--data", str(discs), "--max-train", "3", "--rounds", "1",
            *TINY]  # fmt: skip
    assert main(argv) == 0
    result = orjson.loads(capsys.readouterr().out)
    assert result["n_train"] == 3
    assert FewShot(result["feature_norm"], result["rotations"], result["top_share"]) == options
