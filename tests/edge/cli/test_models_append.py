"""``bdi train --target-frr`` and ``bdi train --append`` (edge/cli/models.py) against a real
store, through ``bdi``'s own entry point: the conformal threshold's facts in the output,
an append stored as a new version, and the refusals as one ``bdi: error:`` line, exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import pytest

from edge.cli import main
from edge.simulator.discs import make_ng, make_ok
from store import ModelStore

pytestmark = pytest.mark.slow  # trains (tiny) models
IDS = ["--recipe", "Disc-A", "--role", "Master1", "--roi", "inspection-1"]


@pytest.fixture
def env_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "models"
    for name, value in {
        "MODELS_DIR": str(root), "BACKBONE": "efficientnet_lite0", "REQUIRE_CUDA": "0",
        "IMAGE_SIZE": "64", "CORESET_RATE": "0.5", "ENGINE_BATCH_SIZE": "4",
    }.items():  # fmt: skip
        monkeypatch.setenv(f"BDI_{name}", value)
    return root


def _folder(path: Path, images: list) -> Path:
    path.mkdir(parents=True)
    for i, image in enumerate(images):
        cv2.imwrite(str(path / f"{i}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return path


def _train(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict, str]:
    code = main(["train", *IDS, "--no-progress", "--json", *argv])
    out = capsys.readouterr()
    return code, (json.loads(out.out) if code == 0 else {}), out.err


def test_train_states_the_conformal_threshold(
    env_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ok = _folder(tmp_path / "ok", [make_ok(s, 64).image for s in range(8)])
    code, result, err = _train(capsys, "--ok", str(ok), "--target-frr", "0.25")
    assert code == 0, err
    assert (result["mode"], result["method"], result["alpha"]) == ("fit", "conformal", 0.25)
    assert (result["n_calibration"], result["needed"], result["guaranteed"]) == (3, 3, True)
    assert result["warnings"] == [] and err == ""

    code, result, err = _train(capsys, "--ok", str(ok))  # BDI_TARGET_FRR: 0.05
    assert (result["alpha"], result["guaranteed"], result["needed"]) == (0.05, False, 19)
    assert err.startswith("bdi: warning: the false-reject rate 0.05 is not guaranteed")

    assert main(["train", *IDS, "--no-progress", "--ok", str(ok)]) == 0
    text = capsys.readouterr().out
    for line in ("mode       fit", "method     conformal", "alpha      0.05",
                 "guaranteed False"):  # fmt: skip
        assert line in text


def test_train_append_adds_images_as_a_new_version(
    env_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ok = _folder(tmp_path / "ok", [make_ok(s, 64).image for s in range(8)])
    code, fitted, err = _train(capsys, "--ok", str(ok), "--mm-per-px", "0.1")
    assert code == 0, err
    defect = make_ng(3, 64).image
    more = _folder(tmp_path / "more", [defect])
    store = ModelStore(root=env_store)
    ref = store.ref("disc-a", "Master1", "inspection-1")
    from engine import Engine
    from tests.helpers.settings import tiny_settings

    engine = Engine.from_settings(tiny_settings(models_dir=env_store))
    before = float(engine.image_scores(store.load_model(ref), [defect])[0])
    code, result, err = _train(capsys, "--ok", str(more), "--append")
    assert code == 0, err
    assert (result["mode"], result["previous_version"]) == ("append", fitted["version"])
    assert result["version"] != fitted["version"] and result["added_rows"] > 0
    assert result["threshold"] == fitted["threshold"] and result["mm_per_px"] == 0.1
    model = store.load_model(ref)
    assert model.version == result["version"]
    assert float(engine.image_scores(model, [defect])[0]) < before
    assert [r.version for r in store.revisions(ref)] == [result["version"], fitted["version"]]


@pytest.mark.parametrize(
    ("setup", "argv", "words"),
    [
        (None, ["--append"], "no model stored for recipe 'disc-a'"),
        ({}, ["--append", "--mm-per-px", "0.2"], "mm_per_px 0.2 differs from 0.1"),
        ({"BDI_IMAGE_SIZE": "96"}, ["--append"], "trained with efficientnet_lite0@64"),
        ({}, ["--append", "--target-frr", "0.1"], "--append keeps the stored model's"),
    ],
)
def test_train_append_refusals_are_one_line_and_exit_2(
    env_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch, setup, argv, words,
) -> None:  # fmt: skip
    ok = _folder(tmp_path / "ok", [make_ok(s, 64).image for s in range(3)])
    if setup is not None:
        assert main(["train", *IDS, "--no-progress", "--ok", str(ok), "--mm-per-px", "0.1"]) == 0
        for name, value in setup.items():
            monkeypatch.setenv(name, value)
    capsys.readouterr()
    store = ModelStore(root=env_store)
    ref = store.ref("disc-a", "Master1", "inspection-1")
    version = store.model_version(ref)
    assert main(["train", *IDS, "--no-progress", "--ok", str(ok), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bdi: error: ") and words in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert store.model_version(ref) == version  # nothing stored


@pytest.mark.parametrize("value", ["0", "1", "x", "-0.5"])
def test_a_target_frr_outside_0_1_is_a_usage_error(
    env_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["train", *IDS, "--ok", str(tmp_path), "--target-frr", value])
    assert exc.value.code == 2
    assert "--target-frr: must be a number between 0 and 1" in capsys.readouterr().err
