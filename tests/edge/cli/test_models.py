"""``bdi train`` and ``bdi models`` (edge/cli/models.py) against a real store: the
manifest, each model's revisions, and rolling back to one."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import cv2
import pytest

from configs.settings import load_settings
from edge.cli import main
from edge.cli.models import add_store_commands
from store import ConflictError, InvalidIdError, ModelStore, Revision
from tests.helpers.images import random_images
from tests.helpers.settings import tiny_settings


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
    store = ModelStore(root=env_store)
    model = store.load_model(store.ref("disc-a", "Master1", "inspection-1"))
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


# --- bdi models --revisions / --rollback -----------------------------------------------------
HISTORY_IDS = ["--recipe", "Disc-A", "--role", "Master1", "--roi", "inspection-1"]


@pytest.fixture(scope="module")
def history_template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Revision]]:
    """A store holding one model in two revisions: as trained, then calibrated with NG."""
    from engine import Engine

    root = tmp_path_factory.mktemp("history") / "models"
    settings = tiny_settings(models_dir=root)
    engine = Engine.from_settings(settings)
    model = engine.fit(random_images(1), mm_per_px=0.05).model
    store = ModelStore(settings)
    ref = store.ref("disc-a", "Master1", "inspection-1")
    store.save_model(ref, model)
    store.save_calibration(ref, engine.calibrate(model, [1.0, 2.0, 3.0], [10.0, 12.0]))
    return root, store.revisions(ref)


@pytest.fixture
def history(
    history_template: tuple[Path, list[Revision]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> list[Revision]:
    """A copy of the two-revision store as ``BDI_MODELS_DIR``; its revisions, current first."""
    template, revisions = history_template
    shutil.copytree(template, tmp_path / "models")
    monkeypatch.setenv("BDI_MODELS_DIR", str(tmp_path / "models"))
    return revisions


def test_revisions_table_says_which_is_calibrated_and_current(
    history: list[Revision], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["models", "--revisions"]) == 0
    header, *rows = capsys.readouterr().out.splitlines()
    assert header.split() == [
        "recipe_id", "role_id", "roi_id", "revision", "version", "threshold", "calibrated",
        "saved_at", "current",
    ]  # fmt: skip
    calibrated, trained = history
    assert len(rows) == 2 and rows[0].split()[3] == calibrated.revision
    assert rows[0].split()[-1] == "current" and rows[1].split()[3] == trained.revision
    assert f"{calibrated.threshold:.4g}" in rows[0] and f"{trained.threshold:.4g}" in rows[1]
    assert " yes " in rows[0] and " no " in rows[1]

    assert main(["models", "--revisions", *HISTORY_IDS, "--json"]) == 0
    (model,) = json.loads(capsys.readouterr().out)
    assert model["recipe_id"] == "disc-a"
    assert [(r["revision"], r["current"], r["calibrated"]) for r in model["revisions"]] == [
        (calibrated.revision, True, True),
        (trained.revision, False, False),
    ]


def test_rollback_by_revision_id(
    history: list[Revision], capsys: pytest.CaptureFixture[str]
) -> None:
    calibrated, trained = history
    assert main(["models", *HISTORY_IDS, "--rollback", trained.revision]) == 0
    out = capsys.readouterr().out
    assert f"rolled back to revision {trained.revision}" in out and calibrated.revision in out
    store = ModelStore(load_settings())
    state = store.state(store.ref("disc-a", "Master1", "inspection-1"))
    assert (state.revision, state.threshold) == (trained.revision, trained.threshold)


def test_rollback_refuses_what_it_cannot_do(
    history: list[Revision], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["models", *HISTORY_IDS, "--rollback", "0" * 16]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bdi: error: no revision '0000000000000000'") and "Traceback" not in err
    assert main(["models", "--role", "Master1", "--rollback", history[1].revision]) == 2
    assert "--rollback needs --recipe, --role and --roi" in capsys.readouterr().err
    store = ModelStore(load_settings())
    assert (
        store.state(store.ref("disc-a", "Master1", "inspection-1")).revision == history[0].revision
    )


@pytest.mark.slow
def test_models_table_says_how_each_threshold_was_set(
    env_store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``method`` and ``frr``: a conformal threshold's false-reject rate, marked when too
    few held-out OK images back it (docs/THRESHOLDS.md)."""
    from engine import Engine

    store = ModelStore(root=env_store)
    for roi, settings in (
        ("guaranteed", {"target_frr": 0.2}),  # 8 images: 4 held out, 4 needed
        ("unguaranteed", {"target_frr": 0.05}),  # 19 needed
        ("legacy", {"threshold_method": "percentile"}),
    ):
        engine = Engine.from_settings(tiny_settings(models_dir=env_store, **settings))
        store.save_model(store.ref("disc-a", "r", roi), engine.fit(random_images(3, 8)).model)
    assert _run(["models"]) == 0
    header, *rows = capsys.readouterr().out.splitlines()
    columns = header.split()
    assert columns[6:8] == ["method", "frr"]
    cells = {row.split()[2]: row.split()[6:8] for row in rows}
    assert cells == {
        "guaranteed": ["conformal", "<=0.2"],
        "unguaranteed": ["conformal", "0.05(unguaranteed)"],
        "legacy": ["ok_percentile", "-"],
    }
    assert _run(["models", "--json"]) == 0
    (recipe,) = json.loads(capsys.readouterr().out)["recipes"]
    facts = {m["roi_id"]: (m["target_frr"], m["frr_guaranteed"]) for m in recipe["models"]}
    assert facts == {"guaranteed": (0.2, True), "unguaranteed": (0.05, False),
                     "legacy": (None, None)}  # fmt: skip
