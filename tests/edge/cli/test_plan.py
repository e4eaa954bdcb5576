"""``bdi plan show|set|history`` (edge/cli/plan.py) on the local store: JSON out, warnings
on stderr, ``bdi: error: ...`` and exit status 2 on bad input, never a traceback."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edge.cli import main
from edge.cli.plan import parse_roi
from store import InvalidPlanError, ModelStore, PlanRoi
from tests.helpers.paths import REPO


@pytest.fixture
def models_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "models"
    monkeypatch.setenv("BDI_MODELS_DIR", str(root))
    monkeypatch.setenv("BDI_REQUIRE_CUDA", "0")
    monkeypatch.setenv("BDI_BACKBONE", "efficientnet_lite0")
    return root


def _ok(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[object, str]:
    assert main(argv) == 0
    out, err = capsys.readouterr()
    return json.loads(out), err


def _fails(argv: list[str], capsys: pytest.CaptureFixture[str], message: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("bdi: error:") and message in err, err
    assert "Traceback" not in err


def test_set_from_roi_options_then_show(models_dir, capsys):
    argv = ["plan", "set", "Disc-A", "--roi", "Master1/inner-ring",
            "--roi", "Master1/outer-ring:optional", "--deadline-ms", "3000"]  # fmt: skip
    body, err = _ok(argv, capsys)
    assert body["recipe_id"] == "disc-a" and body["deadline_ms"] == 3000 and body["current"]
    assert body["rois"] == [
        {"role_id": "Master1", "roi_id": "inner-ring", "required": True},
        {"role_id": "Master1", "roi_id": "outer-ring", "required": False},
    ]
    assert [w["reason"] for w in body["warnings"]] == ["no_model", "no_model"]
    assert err.count("bdi: warning: no model stored for role 'Master1'") == 2
    shown, _ = _ok(["plan", "show", "disc-a"], capsys)
    assert shown == body
    stored = ModelStore(root=models_dir).read_plan("disc-a")  # the store the API reads
    assert stored.version == body["version"]


def test_set_from_a_file_and_the_output_of_show(models_dir, tmp_path, capsys):
    plan = {"rois": [{"role_id": "cam 1", "roi_id": "a/b"}], "deadline_ms": 2500}
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    first, _ = _ok(["plan", "set", "r", "--file", str(path)], capsys)
    assert first["rois"] == [{"role_id": "cam 1", "roi_id": "a/b", "required": True}]
    assert first["deadline_ms"] == 2500
    shown, _ = _ok(["plan", "show", "r"], capsys)
    path.write_text(json.dumps(shown))  # show's output, as is: the same plan
    again, _ = _ok(["plan", "set", "r", "--file", str(path)], capsys)
    assert again["version"] == first["version"]
    longer, _ = _ok(["plan", "set", "r", "--file", str(path), "--deadline-ms", "9000"], capsys)
    assert longer["deadline_ms"] == 9000 and longer["version"] != first["version"]
    history, _ = _ok(["plan", "history", "r"], capsys)
    assert [(h["version"], h["current"]) for h in history] == [
        (longer["version"], True),
        (first["version"], False),
    ]
    old, _ = _ok(["plan", "show", "r", "--version", first["version"]], capsys)
    assert old["deadline_ms"] == 2500 and old["current"] is False


def test_set_from_stdin(models_dir, monkeypatch, capsys):
    body = json.dumps({"rois": [{"role_id": "m", "roi_id": "x", "required": False}]})
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(body.encode())))
    out, _ = _ok(["plan", "set", "r", "--file", "-"], capsys)
    assert out["rois"] == [{"role_id": "m", "roi_id": "x", "required": False}]
    assert out["deadline_ms"] == 5000


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["plan", "show", "r"], "no inspection plan stored for recipe 'r'"),
        (["plan", "show", "Disc A"], "invalid recipe_id 'Disc A'"),
        (["plan", "show", "r", "--version", "../x"], "no plan version '../x'"),
        (["plan", "set", "r", "--roi", "no-slash"], "expected ROLE/ROI"),
        (["plan", "set", "r", "--roi", "/x"], "expected ROLE/ROI"),
        (["plan", "set", "r", "--roi", "m/x", "--roi", "m/x:optional"], "named twice"),
        (["plan", "set", "r", "--roi", "m/x", "--deadline-ms", "0"], "between 1 and"),
        (["plan", "set", "r", "--roi", "m/" + "x" * 65], "longer than 64 bytes"),
        (["plan", "set", "last", "--roi", "m/x"], "reserved"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(models_dir, capsys, argv, message):
    _fails(argv, capsys, message)


def test_bad_files_are_one_line_and_exit_2(models_dir, tmp_path, capsys):
    for content, message in [
        ("{not json", "not valid JSON"),
        ("[]", "JSON object"),
        ('{"rois": []}', "at least one ROI"),
        ('{"rois": [{"role_id": "m", "roi_id": "x", "extra": 1}]}', "unknown fields: extra"),
        ('{"rois": [{"role_id": "m", "roi_id": "x"}], "deadline_ms": 1.5}', "whole number"),
    ]:
        path = tmp_path / "plan.json"
        path.write_text(content)
        _fails(["plan", "set", "r", "--file", str(path)], capsys, message)
    _fails(["plan", "set", "r", "--file", str(tmp_path / "absent.json")], capsys, "absent.json")
    _fails(["plan", "set", "r", "--file", str(tmp_path)], capsys, "cannot read it")
    assert ModelStore(root=models_dir).find_plan("r") is None


def test_argument_errors_exit_2(models_dir, capsys):
    for argv in (
        ["plan"],
        ["plan", "set", "r"],
        ["plan", "set", "r", "--roi", "m/x", "--deadline-ms", "soon"],
        ["plan", "set", "r", "--roi", "m/x", "--file", "p"],
    ):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        assert "error:" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "roi"),
    [
        ("Master1/inner-ring", PlanRoi("Master1", "inner-ring", True)),
        ("Master1/inner-ring:optional", PlanRoi("Master1", "inner-ring", False)),
        ("Master1/inner-ring:required", PlanRoi("Master1", "inner-ring", True)),
        ("cam/a/b", PlanRoi("cam", "a/b", True)),
        ("cam/a:b", PlanRoi("cam", "a:b", True)),
    ],
)
def test_parse_roi(text, roi):
    assert parse_roi(text) == roi


def test_parse_roi_refuses_what_names_no_frame():
    for text in ("x", "x/", "/x", ":optional", "x/:optional"):
        with pytest.raises(InvalidPlanError):
            parse_roi(text)


def test_the_installed_command(tmp_path):
    """The real ``bdi`` process: exit statuses and streams as a shell script sees them."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BDI_")}
    (tmp_path / "bdi.env").write_text("")
    env.update(BDI_MODELS_DIR=str(tmp_path / "models"), BDI_ENV_FILE=str(tmp_path / "bdi.env"),
               BDI_REQUIRE_CUDA="0", BDI_BACKBONE="efficientnet_lite0")  # fmt: skip
    bdi = str(Path(sys.executable).parent / "bdi")
    done = subprocess.run([bdi, "plan", "set", "r", "--roi", "m/x"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["rois"] == [{"role_id": "m", "roi_id": "x", "required": True}]
    assert done.stderr.startswith("bdi: warning:")
    done = subprocess.run([bdi, "plan", "show", "s"], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == "bdi: error: no inspection plan stored for recipe 's'\n"
