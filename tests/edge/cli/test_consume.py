"""``bdi consume``: registered, clear errors (a taken health port included), client options
checked, every line on stderr one JSON object."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
from aiokafka import AIOKafkaConsumer

from consumers.broker import free_port
from edge.cli import build_parser, main
from edge.cli.consume import client_options
from tests.helpers.paths import REPO


def test_consume_is_a_bdi_command():
    args = build_parser().parse_args(["consume", "--consumer-option", "session_timeout_ms=6000"])
    assert args.command == "consume" and args.consumer_option == ["session_timeout_ms=6000"]


def test_missing_bootstrap_is_a_clear_error(capsys):
    assert main(["consume"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bdi: error: BDI_KAFKA_BOOTSTRAP is not set")
    assert "Traceback" not in err


def test_unreachable_broker_is_a_clear_error(monkeypatch, capsys):
    monkeypatch.setenv("BDI_KAFKA_BOOTSTRAP", f"127.0.0.1:{free_port()}")
    monkeypatch.setenv("BDI_REQUIRE_CUDA", "0")
    monkeypatch.setenv("BDI_BACKBONE", "efficientnet_lite0")
    assert main(["consume", "--log-level", "ERROR"]) == 2
    err = capsys.readouterr().err
    assert "bdi: error: cannot reach Kafka at 127.0.0.1:" in err


def test_client_options_are_typed_and_checked():
    opts = client_options(
        ["session_timeout_ms=6000", "check_crcs=false", "security_protocol=SASL_PLAINTEXT"],
        AIOKafkaConsumer,
    )
    assert opts == {
        "session_timeout_ms": 6000,
        "check_crcs": False,
        "security_protocol": "SASL_PLAINTEXT",
    }
    with pytest.raises(ValueError, match="no option 'sesion_timeout_ms'"):
        client_options(["sesion_timeout_ms=1"], AIOKafkaConsumer)
    with pytest.raises(ValueError, match="set by bdi consume"):
        client_options(["enable_auto_commit=true"], AIOKafkaConsumer)
    with pytest.raises(ValueError, match="KEY=VALUE"):
        client_options(["oops"], AIOKafkaConsumer)


def test_frames_topic_must_not_be_an_output_topic():
    from configs.settings import load_settings
    from consumers import ConsumerError, FrameConsumer

    settings = load_settings(kafka_bootstrap="localhost:9092", kafka_topic_verdicts="bdi.frames")
    with pytest.raises(ConsumerError, match="distinct topics"):
        FrameConsumer(settings)


def _consume(tmp_path, code: str, **settings: object) -> subprocess.CompletedProcess[str]:
    """``code`` (which ends by running ``bdi consume``) in a fresh interpreter, with
    ``BDI_*`` from ``settings`` only; an unreachable broker unless one is given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BDI_", "BRAKEDISC_"))}
    cfg = {
        "kafka_bootstrap": f"127.0.0.1:{free_port()}",
        "require_cuda": "0",
        "backbone": "efficientnet_lite0",
        "models_dir": tmp_path / "models",
        **settings,
    }
    env.update({f"BDI_{k.upper()}": str(v) for k, v in cfg.items()})
    command = [sys.executable, "-c", code]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


BDI_CONSUME = "import sys, edge.cli; sys.exit(edge.cli.main(['consume']))"


def test_a_taken_health_port_is_one_clear_line_before_anything_starts(tmp_path):
    """Two consumers given one BDI_CONSUMER_HEALTH_PORT: the second says so and exits 2
    before it reaches for the broker (here unreachable, which would say otherwise)."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        done = _consume(tmp_path, BDI_CONSUME, consumer_health_port=port)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.splitlines() == [
        f"bdi: error: consumer health port 127.0.0.1:{port} is in use "
        "(BDI_CONSUMER_HEALTH_PORT): give each consumer its own port, or 0 for none"
    ]


NATIVE_ON_START = """
import sys
import cv2, numpy as np
import edge.cli
from consumers.runner import FrameConsumer

_start = FrameConsumer.start

async def start(self):
    # what a corrupt PNG frame does: libpng writes to file descriptor 2, past logging
    rng = np.random.default_rng(0)
    png = cv2.imencode(".png", rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))[1]
    cut = np.frombuffer(png.tobytes()[:-20], np.uint8)  # the end of the last chunk lost
    assert cv2.imdecode(cut, cv2.IMREAD_COLOR) is None
    await _start(self)

FrameConsumer.start = start
sys.exit(edge.cli.main(["consume"]))
"""


def test_native_stderr_of_bdi_consume_is_json(tmp_path):
    """Every line ``bdi consume`` writes is one JSON object, libpng's included, up to the
    final ``bdi: error: ...`` (here: no broker); the health port was served meanwhile."""
    done = _consume(tmp_path, NATIVE_ON_START, consumer_health_port=free_port())
    assert done.returncode == 2, done.stderr[-2000:]
    *lines, last = done.stderr.splitlines()
    assert last.startswith("bdi: error: cannot reach Kafka at 127.0.0.1:")
    records = [json.loads(line) for line in lines]  # each line parses, or this fails
    native = [r for r in records if r["logger"] == "native"]
    assert [r["stderr"] for r in native] == ["libpng error: PNG input buffer is incomplete"]
    assert native[0]["level"] == "WARNING"
    assert any(r["msg"] == "health endpoint" for r in records)
