"""The ``bdi`` entry point: clear errors, never a traceback."""

import pytest

from edge.cli import main


def test_up_reports_engine(monkeypatch, capsys):
    monkeypatch.setenv("BDI_REQUIRE_CUDA", "0")
    monkeypatch.setenv("BDI_BACKBONE", "efficientnet_lite0")
    assert main(["up"]) == 0
    out = capsys.readouterr().out
    assert "efficientnet-lite0-57934424.pth" in out
    assert "CPU allowed" in out


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"BDI_REQUIRE_CUDA": "0"}, "BDI_BACKBONE_WEIGHTS is not set"),
        ({"BDI_REQUIRE_CUDA": "0", "BDI_BACKBONE_WEIGHTS": "/nonexistent.pth"}, "not found"),
        ({"BDI_REQUIRE_CUDA": "perhaps"}, "BDI_REQUIRE_CUDA"),
        ({"BDI_BACKBONE": "efficientnet_lite0"}, "CUDA is required"),
    ],
)
def test_up_fails_with_a_clear_message(monkeypatch, capsys, env, message):
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
