"""``edge/bench/gpu_check.py`` runs end to end (here on the CPU, at toy sizes), so that a GPU
machine's few minutes go to numbers, not to fixing the script."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from edge.bench import gpu_check
from tests.helpers.paths import REPO

TOY = ["--image-sizes", "56", "--batches", "1,2", "--precision-images", "4",
       "--precision-size", "64", "--bank-images", "4", "--fit-images", "4",
       "--infer-images", "4", "--fit-size", "56", "--rest-clients", "1,4",
       "--rest-requests", "12"]  # fmt: skip


def _lines(text: str) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_it_refuses_to_run_without_cuda() -> None:
    run = subprocess.run([sys.executable, "edge/bench/gpu_check.py"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode == 2
    assert "CUDA is not available" in run.stderr and "Traceback" not in run.stderr
    assert run.stdout == ""


@pytest.mark.slow
def test_every_stage_passes_on_the_cpu_and_writes_a_line_each(tmp_path: Path) -> None:
    out = tmp_path / "check.jsonl"
    run = subprocess.run(
        [sys.executable, "edge/bench/gpu_check.py", "--allow-cpu", "--out", str(out), *TOY],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    lines = _lines(run.stdout)
    assert run.returncode == 0, (lines, run.stderr[-2000:])
    assert [r["stage"] for r in lines] == [*gpu_check.STAGES, "done"]
    assert all(r["ok"] for r in lines), [r for r in lines if not r["ok"]]
    assert _lines(out.read_text()) == lines  # the file has the same lines
    by = {r["stage"]: r for r in lines}
    assert by["backbone"]["56px_b2"]["img_per_s"] > 0  # type: ignore[index]
    assert by["knn"]["same_ids"] == 1.0 and by["knn"]["backend"] == "faiss-cpu"
    assert by["coreset"]["device_distinct"] == by["coreset"]["selected"]
    assert by["precision"]["gpu_model_dtype"]["max_shift_over_threshold"] < 1e-5  # type: ignore[index]
    assert by["fit_infer_save_load"]["same_version"] is True
    assert by["oom"]["during"] == ["ERROR"] and "ERROR" not in by["oom"]["after"]  # type: ignore[operator]
    rest = by["rest_batching"]
    assert rest["c4"]["frames_per_engine_call"] > 1  # type: ignore[index]
    assert rest["c4"]["max_rel_diff_vs_alone"] < 1e-5  # type: ignore[index]


def test_a_failing_stage_is_reported_and_the_next_still_runs(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(args: object) -> dict[str, object]:
        raise gpu_check.CheckFailed("device kNN neighbours differ from faiss")

    stages = {"knn": broken, "environment": gpu_check.stage_environment}
    monkeypatch.setattr(gpu_check, "STAGES", stages)
    assert gpu_check.main(["--allow-cpu", "--stages", "knn,environment"]) == 1
    lines = _lines(capsys.readouterr().out)
    assert [(r["stage"], r["ok"]) for r in lines] == [
        ("knn", False),
        ("environment", True),
        ("done", False),
    ]
    assert "neighbours differ" in str(lines[0]["error"])
    assert lines[1]["knn_backend"] is None and lines[1]["faiss"]


def test_an_unknown_stage_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert gpu_check.main(["--allow-cpu", "--stages", "nope"]) == 2
    assert "unknown stage" in capsys.readouterr().err
