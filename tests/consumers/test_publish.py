"""At-least-once publication with a stand-in producer: a frame counts as delivered only
when all its records are acknowledged; failures are retried, then stop the consumer. And
the verdict producer itself: idempotent where the broker grants it, on real brokers."""

from __future__ import annotations

import asyncio
import logging

import pytest
from aiokafka.errors import KafkaTimeoutError, MessageSizeTooLargeError

from consumers.errors import IdempotenceUnsupportedError, PublishError
from consumers.outcome import Outcome, OutRecord
from consumers.publish import VALUE_DROPPED, Publisher, start_producer


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


# --- the verdict producer: idempotent where the broker grants a producer id -------------


async def _started(bootstrap: str, idempotence: str) -> tuple[bool, bool]:
    producer, idempotent = await start_producer(bootstrap, {}, idempotence)
    try:
        await producer.send_and_wait(f"bdi-probe-{idempotence}", b"x", key=b"k")
        return idempotent, producer._txn_manager is not None and producer._txn_manager.has_pid()
    finally:
        await producer.stop()


@pytest.mark.kafka
def test_a_broker_that_grants_producer_ids_gets_an_idempotent_producer(kafka_broker):
    if not kafka_broker.transactions:
        pytest.skip(f"the {kafka_broker.kind} broker grants no producer ids (InitProducerId)")
    assert asyncio.run(_started(kafka_broker.bootstrap, "auto")) == (True, True)
    assert asyncio.run(_started(kafka_broker.bootstrap, "on")) == (True, True)
    assert asyncio.run(_started(kafka_broker.bootstrap, "off")) == (False, False)


@pytest.mark.kafka
def test_auto_falls_back_to_a_plain_producer_with_a_warning(tansu_broker, caplog):
    with caplog.at_level(logging.WARNING, logger="consumers.publish"):
        assert asyncio.run(_started(tansu_broker.bootstrap, "auto")) == (False, False)
    warned = [r for r in caplog.records if r.name == "consumers.publish"]
    assert len(warned) == 1 and "refused an idempotent producer" in warned[0].getMessage()
    assert tansu_broker.bootstrap == warned[0].bootstrap  # type: ignore[attr-defined]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="consumers.publish"):
        assert asyncio.run(_started(tansu_broker.bootstrap, "off")) == (False, False)
    assert not [r for r in caplog.records if r.name == "consumers.publish"]


@pytest.mark.kafka
def test_on_makes_a_refusal_a_clear_start_up_error(tansu_broker):
    with pytest.raises(IdempotenceUnsupportedError) as info:
        asyncio.run(_started(tansu_broker.bootstrap, "on"))
    message = str(info.value)
    assert "BDI_KAFKA_IDEMPOTENCE=on" in message and "InitProducerId" in message
    assert tansu_broker.bootstrap in message
    assert isinstance(info.value, ValueError)  # bdi prints "bdi: error: ..." and exits 2
