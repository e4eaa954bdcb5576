"""The ``bdi`` entry point: clear errors, never a traceback."""

import pytest

from edge.cli import main


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
