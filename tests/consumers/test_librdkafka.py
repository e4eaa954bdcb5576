"""Clients nobody here wrote: librdkafka (confluent-kafka) publishes frames as a camera would
and reads verdicts as an MES would: with a manual assignment (an MES replaying a topic), and
as a group consumer reading only committed verdicts from an exactly-once consumer.
``docs/KAFKA.md`` shows the kcat equivalents.
"""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest

from tests.helpers.images import SIZE
from tests.helpers.kafka import WAIT_S, FrameSpec, disc_frames, running

ck = pytest.importorskip("confluent_kafka")

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def camera_publish(bootstrap: str, topic: str, frames: list[FrameSpec]) -> list[str]:
    """librdkafka producer, ``acks=all``; returns delivery errors (none expected)."""
    errors: list[str] = []

    def delivered(err, msg):
        if err is not None:
            errors.append(str(err))

    producer = ck.Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    for f in frames:
        producer.produce(topic, f.value, f.key, headers=f.headers, on_delivery=delivered)
        producer.poll(0)
    assert producer.flush(30) == 0
    return errors


def mes_read(bootstrap: str, topic: str, frame_ids: set[str]) -> list[tuple[bytes, dict, dict]]:
    """librdkafka consumer, every partition assigned by hand from the beginning."""
    consumer = ck.Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "mes-manual", "enable.auto.commit": False}
    )
    try:
        meta = consumer.list_topics(topic, timeout=30)
        parts = sorted(meta.topics[topic].partitions)
        consumer.assign([ck.TopicPartition(topic, p, ck.OFFSET_BEGINNING) for p in parts])
        out: list[tuple[bytes, dict, dict]] = []
        deadline = time.monotonic() + WAIT_S
        while {v["frame_id"] for _, v, _ in out} < frame_ids and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None or msg.error() is not None:
                continue
            headers = {k: v.decode() for k, v in msg.headers() or []}
            out.append((msg.key(), orjson.loads(msg.value()), headers))
        return out
    finally:
        consumer.close()


def _camera_then_mes(broker, trained, settings, topics, frames, read, assigned=1):
    """With our consumer running: librdkafka publishes ``frames``, then ``read`` takes every
    frame's verdict. Returns the camera's delivery errors and what was read."""

    async def scenario():
        async with running(trained.consumer(settings), assigned=assigned):
            errors = await asyncio.to_thread(camera_publish, broker.bootstrap, topics.frames,
                                             frames)  # fmt: skip
            wanted = {f.frame_id for f in frames}
            got = await asyncio.to_thread(read, broker.bootstrap, topics.verdicts, wanted)
        return errors, got

    return asyncio.run(scenario())


def test_librdkafka_camera_and_mes(kafka_broker, make_topics, trained):
    topics = make_topics(partitions=2)
    settings = trained.settings(**topics.settings(kafka_broker.bootstrap))
    frames = disc_frames(30, SIZE, seed=6, tag="rdk")
    expected = {f.frame_id: f.expect for f in frames}

    errors, got = _camera_then_mes(kafka_broker, trained, settings, topics, frames, mes_read)
    assert errors == []
    assert len(got) == len(frames)
    for key, verdict, headers in got:
        assert key.decode() == verdict["frame_id"] == headers["frame_id"]
        assert verdict["verdict"] == expected[verdict["frame_id"]] == headers["verdict"]
        assert verdict["part_id"] == headers["part_id"]
        assert verdict["model_version"] == trained.version


def mes_group_read(bootstrap: str, topic: str, frame_ids: set[str]) -> list[dict]:
    """librdkafka *group* consumer reading only committed verdicts, as an exactly-once MES."""
    consumer = ck.Consumer({
        "bootstrap.servers": bootstrap, "group.id": f"mes-{time.monotonic_ns()}",
        "auto.offset.reset": "earliest", "isolation.level": "read_committed",
        "enable.auto.commit": True,
    })  # fmt: skip
    try:
        consumer.subscribe([topic])
        out: list[dict] = []
        deadline = time.monotonic() + WAIT_S
        while {v["frame_id"] for v in out} < frame_ids and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is not None and msg.error() is None:
                out.append(orjson.loads(msg.value()))
        return out
    finally:
        consumer.close()


def test_librdkafka_group_mes_reads_committed_verdicts_exactly_once(
    kafka_broker, make_topics, trained
):
    if not kafka_broker.transactions:
        pytest.skip(f"the {kafka_broker.kind} broker has no transactions (InitProducerId)")
    topics = make_topics(partitions=2)
    settings = trained.settings(kafka_exactly_once=True, **topics.settings(kafka_broker.bootstrap))
    frames = disc_frames(30, SIZE, seed=8, tag="rdg")
    expected = {f.frame_id: f.expect for f in frames}

    errors, got = _camera_then_mes(
        kafka_broker, trained, settings, topics, frames, mes_group_read, assigned=2
    )
    assert errors == []
    assert sorted(v["frame_id"] for v in got) == sorted(expected)  # each exactly once
    assert {v["frame_id"]: v["verdict"] for v in got} == expected
