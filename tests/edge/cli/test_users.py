"""``bdi users add|list|passwd|role|disable|enable|remove`` (edge/cli/users.py) on the local
store: passwords from stdin, ``bdi: error: ...`` and exit status 2 on bad input, never a
traceback, never a hash in the output."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edge.cli import main
from store.users import Users
from tests.helpers.paths import REPO

PW = "a-long-password-1"


@pytest.fixture
def models_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "models"
    monkeypatch.setenv("BDI_MODELS_DIR", str(root))
    return root


def run(argv: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        stdin: str = "") -> tuple[int, str, str]:  # fmt: skip
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = main(["users", *argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def test_users_are_added_listed_and_changed(models_dir, capsys, monkeypatch):
    code, out, _ = run(["add", "ana", "--role", "engineer", "--password-stdin"], capsys,
                       monkeypatch, PW + "\n")  # fmt: skip
    assert code == 0 and out.strip() == "user ana added, role engineer"
    assert run(["add", "olo", "--role", "operator", "--password-stdin"], capsys, monkeypatch,
               "olo-password-2\n")[0] == 0  # fmt: skip
    code, out, _ = run(["list", "--json"], capsys, monkeypatch)
    rows = json.loads(out)
    assert [(r["name"], r["role"], r["disabled"]) for r in rows] == [
        ("ana", "engineer", False), ("olo", "operator", False)]  # fmt: skip
    assert "argon2" not in out and PW not in out
    assert run(["role", "olo", "engineer"], capsys, monkeypatch)[0] == 0
    assert run(["disable", "ana"], capsys, monkeypatch)[1].strip() == "user ana disabled"
    code, out, _ = run(["list"], capsys, monkeypatch)
    assert "ana  engineer  disabled" in out and "olo  engineer  enabled" in out
    users = Users(models_dir)
    assert users.verify("ana", PW) is None  # disabled
    assert run(["enable", "ana"], capsys, monkeypatch)[0] == 0
    assert users.verify("ana", PW) is not None
    assert run(["passwd", "ana", "--password-stdin"], capsys, monkeypatch,
               "new-password-99\n")[0] == 0  # fmt: skip
    assert users.verify("ana", "new-password-99") is not None
    assert run(["remove", "olo"], capsys, monkeypatch)[1].strip() == "user olo removed"
    assert sorted(users.load()) == ["ana"]


@pytest.mark.parametrize(
    ("argv", "stdin", "message"),
    [
        (["add", "Ana", "--role", "operator", "--password-stdin"], PW, "is not allowed"),
        (["add", "ana", "--role", "admin", "--password-stdin"], PW, "role 'admin' is unknown"),
        (["add", "ana", "--role", "operator", "--password-stdin"], "short\n", "too short"),
        (["add", "ana", "--role", "operator", "--password-stdin"], "", "stdin is empty"),
        (["add", "ana", "--role", "operator"], "", "use --password-stdin"),
        (["passwd", "nobody", "--password-stdin"], PW, "no user 'nobody'"),
        (["role", "nobody", "operator"], "", "no user 'nobody'"),
        (["disable", "nobody"], "", "no user 'nobody'"),
        (["remove", "nobody"], "", "no user 'nobody'"),
    ],
)
def test_bad_input_is_one_error_line_and_status_2(
    models_dir, capsys, monkeypatch, argv, stdin, message
):
    code, out, err = run(argv, capsys, monkeypatch, stdin)
    assert code == 2 and out == ""
    assert err.startswith("bdi: error:") and message in err and err.count("\n") == 1, err


def test_a_taken_name_is_refused(models_dir, capsys, monkeypatch):
    argv = ["add", "ana", "--role", "operator", "--password-stdin"]
    assert run(argv, capsys, monkeypatch, PW)[0] == 0
    code, _, err = run(argv, capsys, monkeypatch, PW)
    assert code == 2 and "user 'ana' exists already" in err


def test_the_installed_command_reads_the_password_from_a_pipe(models_dir):
    env = {**os.environ, "BDI_MODELS_DIR": str(models_dir)}
    done = subprocess.run(
        [sys.executable, "-m", "edge.cli", "users", "add", "eve", "--role", "operator",
         "--password-stdin"], input=PW + "\n", capture_output=True, text=True, cwd=REPO,
        env=env, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert Users(models_dir).verify("eve", PW) is not None
