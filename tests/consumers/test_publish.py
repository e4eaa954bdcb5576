"""At-least-once publication with a stand-in producer: a frame counts as delivered only
when all its records are acknowledged; failures are retried, then stop the consumer."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka.errors import KafkaTimeoutError, MessageSizeTooLargeError

from consumers.errors import PublishError
from consumers.outcome import Outcome, OutRecord
from consumers.publish import VALUE_DROPPED, Publisher


class FakeProducer:
    """Acknowledges everything except what ``fail`` says (a callable on the record)."""

    def __init__(self, fail=lambda topic, value, attempt: None, too_large=10**9) -> None:
        self.fail = fail
        self.too_large = too_large
        self.sent: list[tuple[str, bytes | None, bytes | None, list]] = []
        self.attempts: dict[tuple[str, bytes | None], int] = {}

    async def send(
        self, topic, value=None, key=None, partition=None, timestamp_ms=None, headers=None
    ):
        if value is not None and len(value) > self.too_large:
            raise MessageSizeTooLargeError("too large")
        n = self.attempts[(topic, value)] = self.attempts.get((topic, value), 0) + 1
        future = asyncio.get_running_loop().create_future()
        error = self.fail(topic, value, n)
        if error is None:
            self.sent.append((topic, key, value, headers))
            future.set_result(None)
        else:
            future.set_exception(error)
        return future


def outcome(name: str, *extra: OutRecord) -> Outcome:
    verdict = type("V", (), {"frame_id": name})()
    records = [OutRecord("verdicts", name.encode(), name.encode()), *extra]
    return Outcome(frame=None, verdict=verdict, records=records)  # type: ignore[arg-type]


def publish(producer, outcomes, attempts=3):
    delivered: list[str] = []
    pub = Publisher(producer, attempts=attempts, backoff_s=0)
    asyncio.run(pub.publish(outcomes, lambda o: delivered.append(o.verdict.frame_id)))
    return delivered


def test_every_record_is_sent_and_every_frame_reported():
    p = FakeProducer()
    dlq = OutRecord("dlq", b"b", b"raw", (("frame_id", b"b"),), "drop_value")
    assert sorted(publish(p, [outcome("a"), outcome("b", dlq)])) == ["a", "b"]
    assert {(t, v) for t, _, v, _ in p.sent} == {
        ("verdicts", b"a"),
        ("verdicts", b"b"),
        ("dlq", b"raw"),
    }


def test_a_frame_is_reported_only_once_all_its_records_are_acknowledged():
    p = FakeProducer(lambda t, v, n: KafkaTimeoutError() if t == "dlq" and n < 2 else None)
    dlq = OutRecord("dlq", b"b", b"raw", ())
    assert publish(p, [outcome("a"), outcome("b", dlq)]) == ["a", "b"], "b after its retry"
    assert p.attempts[("dlq", b"raw")] == 2


def test_persistent_failure_raises_and_reports_nothing_for_that_frame():
    p = FakeProducer(lambda t, v, n: KafkaTimeoutError() if v == b"b" else None)
    delivered: list[str] = []
    pub = Publisher(p, attempts=3, backoff_s=0)
    with pytest.raises(PublishError, match="'b'"):
        asyncio.run(
            pub.publish(
                [outcome("a"), outcome("b")], lambda o: delivered.append(o.verdict.frame_id)
            )
        )
    assert delivered == ["a"]
    assert p.attempts[("verdicts", b"b")] == 3


def test_oversized_dead_letter_is_resent_without_its_value():
    p = FakeProducer(too_large=100)
    dlq = OutRecord("dlq", None, b"x" * 500, (("frame_id", b"a"),), "drop_value")
    assert publish(p, [outcome("a", dlq)]) == ["a"]
    (record,) = [s for s in p.sent if s[0] == "dlq"]
    _, key, value, headers = record
    assert value is None and key == b"", "Kafka needs a key or a value"
    assert (VALUE_DROPPED, b"message too large") in headers and ("frame_id", b"a") in headers


def test_oversized_heatmap_is_skipped_but_oversized_verdict_fails():
    p = FakeProducer(too_large=100)
    heat = OutRecord("heatmaps", b"a", b"x" * 500, (), "skip")
    assert publish(p, [outcome("a", heat)]) == ["a"]
    assert [s[0] for s in p.sent] == ["verdicts"]
    big = Outcome(
        frame=None,
        verdict=type("V", (), {"frame_id": "z"})(),  # type: ignore[arg-type]
        records=[OutRecord("verdicts", b"z", b"x" * 500)],
    )
    with pytest.raises(PublishError):
        publish(FakeProducer(too_large=100), [big], attempts=1)
