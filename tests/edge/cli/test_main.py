"""The ``bdi`` entry point: clear errors, never a traceback."""

import argparse
import subprocess
import sys
from importlib.metadata import version

import pytest

from edge.cli import build_parser, main
from edge.cli.main import subcommands


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"BDI_BACKBONE": "dinov2_vits14"}, "BDI_BACKBONE_WEIGHTS is not set"),
        ({"BDI_BACKBONE_WEIGHTS": "/nonexistent.pth"}, "not found"),
        ({"BDI_REQUIRE_CUDA": "perhaps"}, "BDI_REQUIRE_CUDA"),
        ({"BDI_REQUIRE_CUDA": "1"}, "CUDA is required"),
    ],
)
def test_up_fails_before_starting_anything(monkeypatch, capsys, env, message):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    if "CUDA is required" in message:
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
    assert main(["up"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bdi: error:") and message in err
    assert "Traceback" not in err


def test_bench_engine_rejects_non_mvtec_folder(tmp_path, capsys):
    assert main(["bench", "engine", "--data", str(tmp_path), "--json"]) == 2
    assert "MVTec" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        (["train/good"], "test not found"),  # no test folder
        (["train/good", "test/good"], "no PNG/JPEG images in"),  # no training image
        (["train/good/a.png", "test/good"], "no PNG/JPEG images in the folders of"),
        (["train/good/a.png", "test/good/b.png"], "a.png: empty image"),
    ],
)
def test_bench_engine_refuses_empty_sets_with_a_message(tmp_path, capsys, layout, message):
    for entry in layout:
        path = tmp_path / entry
        if path.suffix:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"")  # an empty file: not an image
        else:
            path.mkdir(parents=True, exist_ok=True)
    assert main(["bench", "engine", "--data", str(tmp_path), "--json"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bdi: error:") and message in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--max-train", "-1"),
        ("--batch", "0"),
        ("--rounds", "0"),
        ("--chunk", "-1"),
        ("--batch", "x"),
    ],
)
def test_bench_engine_refuses_bad_counts_before_any_work(tmp_path, capsys, flag, value):
    with pytest.raises(SystemExit) as stop:
        main(["bench", "engine", "--data", str(tmp_path), flag, value])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}" in err and "Traceback" not in err


def _options(parser):
    return [
        a
        for a in parser._actions
        if not isinstance(a, argparse._HelpAction | argparse._SubParsersAction)
    ]


def test_every_command_has_a_description_and_every_option_help():
    commands = subcommands(build_parser())
    assert {" ".join(words) for words, _, _ in commands} >= {
        "bdi up", "bdi demo", "bdi serve", "bdi consume", "bdi train", "bdi models",
        "bdi export-model", "bdi import-model", "bdi bench engine", "bdi bench pipeline",
    }  # fmt: skip
    for words, parser, help_text in commands:
        assert help_text, f"{' '.join(words)} has no help in its parent's list"
        assert parser.description, f"{' '.join(words)} has no description"
        for action in _options(parser):
            assert action.help, f"{' '.join(words)} {action.option_strings}: no help"


def test_help_shows_defaults(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["demo", "--help"])
    assert stop.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "Train a demo recipe" in out  # the description
    assert "camera frames per second (default: 10.0)" in out
    assert "seconds (0: until Ctrl-C) (default: 0.0)" in out
    assert "(default: None)" not in out and "(default: False)" not in out


def test_version(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out == f"bdi {version('bdi-edge')}\n"


def test_a_production_start_without_cuda_names_the_step_to_development(monkeypatch, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bdi: error: CUDA is required") and err.count("\n") == 1
    assert "`make dev` (writes BDI_PROFILE=dev to ./bdi.env)" in err


def test_the_dev_profile_gets_no_such_hint(monkeypatch, capsys):
    monkeypatch.setenv("BDI_PROFILE", "dev")
    monkeypatch.setenv("BDI_REQUIRE_CUDA", "1")  # explicit: the profile does not override it
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert "CUDA is required" in err and "make dev" not in err


def test_a_reader_that_goes_away_is_no_traceback():
    """`bdi models --json | head`: the pipe closes under the command."""
    code = (
        "import sys, edge.cli.models as m\n"
        "def gone(args): raise BrokenPipeError(32, 'Broken pipe')\n"
        "m.cmd_models = gone\n"
        "from edge.cli import main\n"
        "sys.exit(main(['models']))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 141 and done.stderr == "", done.stderr
