"""``bdi bench pipeline``: correctness of what it counts, and that it cleans up after itself.

Nothing here asserts on a duration or a rate: benchmarks print numbers, tests check that
the numbers are there and that every frame was answered once, correctly.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import orjson
import pytest

from configs.settings import load_settings
from edge.bench.consumers import BenchError, ConsumerGroup, PhaseResult, check_warm_up, tally
from edge.bench.pipeline import BenchConfig, PipelineRun, consumer_env
from edge.cli import main
from edge.simulator.camera import CameraFrame

KEYS = [
    "frames", "verdicts", "lost", "duplicates", "wrong",
    "pipeline_img_per_s", "engine_img_per_s", "efficiency", "latency_ms_p50", "latency_ms_p99",
    "paced_rate_img_per_s", "paced_latency_ms_p50", "paced_latency_ms_p99",
    "batch", "size", "consumers", "backbone", "device", "broker",
]  # fmt: skip
# Tansu holds a JoinGroup for half the session timeout: a short session, a quick start
QUICK_GROUP = ("session_timeout_ms=4000", "heartbeat_interval_ms=800")


def _children() -> set[int]:
    """Live child processes of this one (zombies excluded)."""
    out = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == os.getpid() and fields[0] != "Z":
            out.add(int(stat.parent.name))
    return out


@pytest.mark.kafka
@pytest.mark.slow
@pytest.mark.parametrize(
    ("broker", "consumers"),
    [("tansu", ["--consumers", "1"]), ("kafka", [])],  # kafka: the default consumers
)
def test_pipeline_benchmark_answers_every_frame_once_and_correctly(capsys, broker, consumers):
    from consumers.apache_kafka import KAFKA_VERSION, missing_tools
    from edge.cli.up import default_consumers

    if broker == "kafka" and missing_tools():
        pytest.skip(f"Apache Kafka cannot run here (missing {'; '.join(missing_tools())})")
    before = _children()
    options = [f"--consumer-option={o}" for o in QUICK_GROUP]
    argv = ["bench", "pipeline", "--frames", "40", "--batch", "8", "--size", "96",
            "--train", "16", "--broker", broker, *consumers, "--json", *options]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert len(out.strip().splitlines()) == 1, "--json: only the JSON line on stdout"
    result = orjson.loads(out)
    assert all(k in result for k in KEYS), set(KEYS) - set(result)
    assert result["frames"] == result["verdicts"] == 40
    assert result["lost"] == result["duplicates"] == result["wrong"] == 0
    assert result["paced_verdicts"] == 40
    assert result["paced_lost"] == result["paced_duplicates"] == result["paced_wrong"] == 0
    for key in ("pipeline_img_per_s", "engine_img_per_s", "efficiency", "paced_rate_img_per_s",
                "latency_ms_p50", "latency_ms_p99", "paced_latency_ms_p50",
                "paced_latency_ms_p99"):  # fmt: skip
        assert result[key] > 0, key
    assert result["latency_ms_p99"] >= result["latency_ms_p50"]
    expected = 1 if consumers else default_consumers(load_settings())
    assert (result["batch"], result["size"], result["consumers"]) == (8, 96, expected)
    assert result["backbone"] == "efficientnet_lite0"
    local = {"tansu": "local tansu", "kafka": f"local apache-kafka {KAFKA_VERSION}"}
    assert result["broker"] == local[broker]
    assert result["cpu_s"]["max_rate"]["broker"] > 0  # the local broker's process is measured
    assert _children() <= before, "consumers and broker are stopped"


@pytest.mark.kafka
def test_an_interrupted_run_stops_the_consumers_and_the_broker(monkeypatch):
    import edge.bench.pipeline as bench

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(bench, "train_model", interrupted)
    run = PipelineRun(BenchConfig(frames=4, batch=2, size=64), say=lambda _: None)
    before = _children()
    with pytest.raises(KeyboardInterrupt):
        run.run()
    assert run.group is not None and run.group.procs, "the consumers had been started"
    assert all(p.poll() is not None for p in run.group.procs)
    assert run.broker is not None and run.broker.process is None
    assert _children() <= before


def _frame(i: int, defect: str | None = None) -> CameraFrame:
    return CameraFrame(f"f{i}", f"p{i}", b"", defect)


def test_tally_counts_answers_duplicates_and_wrong_verdicts():
    frames = [_frame(0), _frame(1, "scratch"), _frame(2), _frame(3, "pit"), _frame(4)]
    verdicts = {
        "f0": [{"verdict": "OK"}, {"verdict": "OK"}],  # a redelivery
        "f1": [{"verdict": "NG"}],
        "f2": [{"verdict": "ERROR"}],  # never right
        "f3": [{"verdict": "OK"}],  # a missed defect
        "other": [{"verdict": "OK"}],  # not ours
    }
    assert tally(frames, verdicts) == (4, 1, 2)


def test_consumer_env_overrides_settings_and_their_legacy_names(monkeypatch):
    monkeypatch.setenv("BRAKEDISC_MODELS_DIR", "/legacy")
    monkeypatch.setenv("BDI_BACKBONE", "dinov2_vits14")
    env = consumer_env({"models_dir": Path("/tmp/m"), "require_cuda": False, "batch_max": 8})
    assert "BRAKEDISC_MODELS_DIR" not in env
    assert env["BDI_MODELS_DIR"] == "/tmp/m"
    assert env["BDI_REQUIRE_CUDA"] == "0"
    assert env["BDI_BATCH_MAX"] == "8"
    assert env["BDI_BACKBONE"] == "dinov2_vits14"  # not overridden: inherited as it is


def test_assignments_follow_assigned_and_revoked_log_lines(tmp_path):
    group = ConsumerGroup(["true"], {}, tmp_path)
    log = tmp_path / "consumer-1.log"
    lines = [
        {"msg": "consumer started"},
        {"msg": "partitions assigned", "partitions": ["t:0", "t:1", "t:2"]},
        {"msg": "partitions revoked", "partitions": ["t:0", "t:1", "t:2"]},
        {"msg": "partitions assigned", "partitions": ["t:1"]},
    ]
    log.write_bytes(b"\n".join(orjson.dumps(x) for x in lines) + b'\nnot json\n{"msg": "par')
    group.logs.append(log)
    assert group.assignments() == [{"t:1"}]


@pytest.mark.parametrize("argv", [["--frames", "0"], ["--batch", "0"], ["--train", "1"]])
def test_bad_arguments_are_refused(argv, capsys):
    assert main(["bench", "pipeline", *argv]) == 2
    assert "bdi: error:" in capsys.readouterr().err


def _phase(frames: int, answered: int) -> PhaseResult:
    return PhaseResult(frames, answered, 0, 0, 1.0, 0.1, np.zeros(answered))


def test_a_broken_warm_up_is_a_clear_error_and_a_misjudged_frame_is_said():
    ok_as_ng = {"frame_id": "w1", "expected": "OK", "verdict": "NG", "score": 9.0}
    error = {"frame_id": "w2", "expected": "OK", "verdict": "ERROR", "error": "decode"}
    said: list[str] = []
    check_warm_up(_phase(32, 32), [], said.append)
    assert said == []
    check_warm_up(_phase(32, 32), [ok_as_ng], said.append)
    assert len(said) == 1 and "1 of 32 frames misjudged" in said[0] and "w1" in said[0]
    with pytest.raises(BenchError, match="3 of 32 frames unanswered, 0 answered ERROR"):
        check_warm_up(_phase(32, 29), [], said.append)
    with pytest.raises(BenchError, match="0 of 32 frames unanswered, 1 answered ERROR.*w2"):
        check_warm_up(_phase(32, 32), [ok_as_ng, error], said.append)
    assert issubclass(BenchError, ValueError)  # bdi: error: ..., exit 2, no traceback
