"""``bdi consume``: registered, clear errors, client options checked."""

from __future__ import annotations

import logging

import pytest
from aiokafka import AIOKafkaConsumer

from consumers.broker import free_port
from edge.cli import build_parser, main
from edge.cli.consume import client_options


@pytest.fixture(autouse=True)
def _restore_root_logging():
    """``bdi consume`` installs a JSON handler on the root logger; take it away again."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


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
