"""Clients nobody here wrote: librdkafka (confluent-kafka) publishes frames as a camera would
and reads verdicts as an MES would.

Against the local Tansu broker librdkafka's *group* consumer stalls in JoinGroup, so the MES
side uses a manually assigned consumer (what an MES replaying a topic does anyway);
``docs/KAFKA.md`` shows the kcat equivalents for Apache Kafka users.
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


def test_librdkafka_camera_and_mes(kafka_broker, make_topics, trained):
    topics = make_topics(partitions=2)
    settings = trained.settings(**topics.settings(kafka_broker.bootstrap))
    frames = disc_frames(30, SIZE, seed=6, tag="rdk")
    expected = {f.frame_id: f.expect for f in frames}

    async def scenario():
        async with running(trained.consumer(settings)):
            errors = await asyncio.to_thread(
                camera_publish, kafka_broker.bootstrap, topics.frames, frames
            )
            got = await asyncio.to_thread(
                mes_read, kafka_broker.bootstrap, topics.verdicts, set(expected)
            )
        return errors, got

    errors, got = asyncio.run(scenario())
    assert errors == []
    assert len(got) == len(frames)
    for key, verdict, headers in got:
        assert key.decode() == verdict["frame_id"] == headers["frame_id"]
        assert verdict["verdict"] == expected[verdict["frame_id"]] == headers["verdict"]
        assert verdict["part_id"] == headers["part_id"]
        assert verdict["model_version"] == trained.version
