"""``bdi trace``: registered; a bad setting, an unreachable database or broker is one clear
line and exit 2, the database password never shown."""

from __future__ import annotations

import pytest

from edge.cli import build_parser, main
from tests.helpers.api import free_port


def test_trace_is_a_bdi_command():
    args = build_parser().parse_args(["trace", "--consumer-option", "max_poll_records=10"])
    assert args.command == "trace" and args.consumer_option == ["max_poll_records=10"]


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("bdi: error: ")
    return err[-1]


def test_missing_bootstrap_is_a_clear_error(capsys):
    assert main(["trace"]) == 2
    assert "BDI_KAFKA_BOOTSTRAP is not set" in _error(capsys)


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("mysql://u:s3cret@h/db", "BDI_TRACE_DB_URL must be postgresql://"),
        ("postgresql://bdi:s3cret@127.0.0.1:{port}/trace", "cannot connect to the trace database"),
    ],
)
def test_a_bad_or_unreachable_database_is_a_clear_error(capsys, monkeypatch, tmp_path, url, words):
    monkeypatch.setenv("BDI_KAFKA_BOOTSTRAP", f"127.0.0.1:{free_port()}")
    monkeypatch.setenv("BDI_MODELS_DIR", str(tmp_path))
    monkeypatch.setenv("BDI_TRACE_DB_URL", url.format(port=free_port()))
    assert main(["trace"]) == 2
    line = _error(capsys)
    assert words in line and "s3cret" not in line


def test_an_unreachable_broker_is_a_clear_error(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("BDI_KAFKA_BOOTSTRAP", f"127.0.0.1:{free_port()}")
    monkeypatch.setenv("BDI_MODELS_DIR", str(tmp_path))
    assert main(["trace"]) == 2
    assert "cannot reach Kafka at 127.0.0.1:" in _error(capsys)


def test_a_bad_trace_setting_names_the_variable(capsys, monkeypatch):
    monkeypatch.setenv("BDI_TRACE_MAX_GB", "0")
    assert main(["trace"]) == 2
    assert "BDI_TRACE_MAX_GB" in capsys.readouterr().err
