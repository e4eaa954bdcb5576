"""The local Tansu broker helper (what the test fixture and ``bdi up`` use)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

import pytest

from consumers.broker import LocalBroker
from consumers.topics import ensure_topics
from tests.helpers.paths import REPO

pytestmark = pytest.mark.kafka


def test_local_broker_starts_answers_and_stops():
    with LocalBroker() as broker:
        process = broker.process
        assert process is not None and process.poll() is None
        created = asyncio.run(ensure_topics(broker.bootstrap, {"a": 3, "b": 1}))
        assert sorted(created) == ["a", "b"]
        assert asyncio.run(ensure_topics(broker.bootstrap, {"a": 3})) == [], "idempotent"
        log = broker.log_path
    assert process.poll() is not None, "stopped"
    assert log is not None and not log.exists(), "its log file is cleaned up"


# a "terminal" that started a broker: a Ctrl-C reaches its whole process group
_TERMINAL = """
import signal, time
from consumers.broker import LocalBroker, answers
# as a shell on a terminal starts it: a run started in the background (as CI may be) would
# hand down SIGINT ignored, and Python then installs no KeyboardInterrupt handler
signal.signal(signal.SIGINT, signal.default_int_handler)
broker = LocalBroker().start()
try:
    print(broker.bootstrap, flush=True)
    time.sleep(60)
except KeyboardInterrupt:
    time.sleep(0.5)  # the broker would be exiting by now had the SIGINT reached it
    up = broker.process is not None and broker.process.poll() is None
    print("broker alive" if up and answers(broker.host, broker.port) else "broker gone",
          flush=True)
    broker.stop()
"""


def test_a_ctrl_c_reaches_whoever_started_the_broker_not_the_broker():
    """The broker runs in its own session, so that the process that started it (``bdi up``)
    stops it last, after the consumers have committed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _TERMINAL], cwd=REPO, stdout=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        assert ":" in proc.stdout.readline()  # started and answering
        os.killpg(proc.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert out.strip() == "broker alive"
