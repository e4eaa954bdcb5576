"""``bdi train`` and ``bdi models`` (edge/cli/models.py) against a real store."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import pytest

from edge.cli.models import add_store_commands
from store import ConflictError, InvalidIdError, ModelStore
from tests.store.conftest import random_images


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bdi")
    add_store_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.fixture
def env_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "models"
    for name, value in {
        "MODELS_DIR": str(root),
        "BACKBONE": "efficientnet_lite0",
        "REQUIRE_CUDA": "0",
        "IMAGE_SIZE": "64",
        "CORESET_RATE": "0.5",
        "ENGINE_BATCH_SIZE": "4",
    }.items():
        monkeypatch.setenv(f"BDI_{name}", value)
    return root


def _folder(path: Path, seed: int, n: int) -> Path:
    path.mkdir(parents=True)
    for i, image in enumerate(random_images(seed, n)):
        cv2.imwrite(str(path / f"{i}.png"), image)
    (path / "notes.txt").write_text("not an image")
    return path


def test_models_on_an_empty_store(env_store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(["models", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["recipes"] == []
    assert _run(["models"]) == 0
    assert capsys.readouterr().out.split()[:3] == ["recipe_id", "role_id", "roi_id"]


@pytest.mark.slow
def test_train_calibrate_and_list(
    env_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ok = _folder(tmp_path / "ok", seed=1, n=4)
    ng = _folder(tmp_path / "ng", seed=2, n=2)
    argv = [
        "train",
        "--recipe",
        "Disc-A",
        "--role",
        "Master1",
        "--roi",
        "inspection-1",
        "--ok",
        str(ok),
        "--ng",
        str(ng),
        "--mm-per-px",
        "0.05",
        "--json",
    ]
    assert _run(argv) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["recipe_id"] == "disc-a" and result["n_ok"] == 4 and result["n_ng"] == 2
    assert "embed" in captured.err  # the progress bars go to stderr
    model = ModelStore(root=env_store).load_model("disc-a", "Master1", "inspection-1")
    assert model.version == result["version"] and model.calibration is not None
    assert model.calibration.method == "ok_ng" and model.meta.mm_per_px == 0.05

    assert _run(["models"]) == 0
    table = capsys.readouterr().out
    assert "disc-a" in table and result["version"] in table and "yes" in table

    with pytest.raises(ConflictError):  # edge/cli/main.py reports it as "bdi: error: ..."
        _run(
            [
                "train",
                "--recipe",
                "disc-a",
                "--role",
                "r",
                "--roi",
                "x",
                "--ok",
                str(ok),
                "--mm-per-px",
                "0.2",
                "--no-progress",
            ]
        )


def test_train_refuses_bad_input_before_training(env_store: Path, tmp_path: Path) -> None:
    ok = _folder(tmp_path / "ok", seed=1, n=2)
    with pytest.raises(InvalidIdError):
        _run(["train", "--recipe", "last", "--role", "r", "--roi", "x", "--ok", str(ok)])
    with pytest.raises(FileNotFoundError):
        _run(["train", "--recipe", "a", "--role", "r", "--roi", "x", "--ok", str(tmp_path / "no")])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no images"):
        _run(["train", "--recipe", "a", "--role", "r", "--roi", "x", "--ok", str(empty)])
    assert issubclass(InvalidIdError, ValueError)  # what edge/cli/main.py's main catches
