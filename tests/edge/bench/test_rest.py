"""``bdi bench rest`` end to end at toy size: real ``bdi serve`` processes, real uploads of
the metal_plate photos, both the batched server and the baseline."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from edge.cli.main import main
from tests.helpers.mvtec import mvtec_subset

LEVEL_KEYS = {
    "concurrency", "requests", "seconds", "img_per_s", "latency_ms", "status", "lost",
    "undocumented_5xx", "frames_per_engine_call", "p99_over_p50", "img_per_s_over_c1",
    "rounds_img_per_s", "cpu_ms_per_request",
}  # fmt: skip


@pytest.mark.slow
def test_prints_one_json_line_per_run_with_every_level(
    metal_plate: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = mvtec_subset(metal_plate, tmp_path / "data", train=3, good=2, defect=1)
    argv = ["bench", "rest", "--data", str(data), "--concurrency", "1,3", "--requests", "6",
            "--size", "64", "--no-batching", "--json"]  # fmt: skip
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1
    result = orjson.loads(lines[0])
    assert result["model"]["trained"] and result["model"]["train_images"] == 3
    for run in ("batched", "no_batching"):
        levels = result[run]
        assert [r["concurrency"] for r in levels] == [1, 3]
        for r in levels:
            assert set(r) == LEVEL_KEYS
            assert r["status"] == {"200": 6} and r["lost"] == 0
            assert r["latency_ms"]["p50"] <= r["latency_ms"]["p99"] <= r["latency_ms"]["max"]
        assert levels[0]["img_per_s_over_c1"] == 1.0
    # the baseline scores one frame per engine call, whatever the clients
    assert {r["frames_per_engine_call"] for r in result["no_batching"]} == {1.0}
    assert set(result["batched_over_no_batching"]) == {"1", "3"}


def test_a_missing_data_folder_is_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", "rest", "--data", str(tmp_path / "nowhere")]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.splitlines()) == 1
    assert "MVTec" in captured.err


def test_no_batching_wants_a_server_of_its_own(
    metal_plate: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["bench", "rest", "--data", str(metal_plate), "--url", "http://127.0.0.1:9",
            "--no-batching"]  # fmt: skip
    assert main(argv) == 2
    assert "--no-batching" in capsys.readouterr().err


@pytest.mark.parametrize("levels", ["", "1,x", "0,4"])
def test_bad_concurrency_is_a_usage_error(levels: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["bench", "rest", "--concurrency", levels])
    assert exited.value.code == 2
    assert "--concurrency" in capsys.readouterr().err
