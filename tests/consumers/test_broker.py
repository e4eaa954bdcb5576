"""The local Tansu broker helper (what the test fixture and ``bdi up`` use)."""

from __future__ import annotations

import asyncio

import pytest

from consumers.broker import LocalBroker
from consumers.topics import ensure_topics

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
