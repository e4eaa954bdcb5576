"""A committed offset is checked against the record it was committed after (bug B1).

The broker tests use a Tansu broker of their own, killed and started again on the same
port: it keeps nothing, so the partition's new log starts at offset 0 with other frames,
as after a crash of a broker on ephemeral storage.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from consumers.broker import LocalBroker, free_port
from consumers.lineage import Lineage, identity, replaced_logs
from consumers.topics import committed_offsets, ensure_topics, stop_consumer


@dataclass
class Record:
    offset: int
    value: bytes
    timestamp: int = 1_700_000_000_000
    key: bytes | None = None
    topic: str = "t"
    partition: int = 0
    headers: tuple[tuple[str, bytes], ...] = ()


def test_identity_tells_records_apart_by_content_key_and_time() -> None:
    a = Record(4, b"jpeg-a")
    assert identity(a) == identity(Record(9, b"jpeg-a"))  # the place is not the identity
    assert identity(a) != identity(Record(4, b"jpeg-b"))
    assert identity(a) != identity(Record(4, b"jpeg-a", key=b"disc-1"))
    assert identity(a) != identity(Record(4, b"jpeg-a", timestamp=a.timestamp + 1))


def test_anchors_are_the_records_before_positions_committed_by_this_consumer() -> None:
    lineage: Lineage[str] = Lineage()
    for offset in range(6):
        lineage.fetched("p0", Record(offset, b"frame-%d" % offset))
    lineage.committing({"p0": 3})
    lineage.committing({"p0": 6})
    assert lineage.anchor("p0", 3) == identity(Record(2, b"frame-2"))
    assert lineage.anchor("p0", 6) == identity(Record(5, b"frame-5"))
    assert lineage.anchor("p0", 4) is None  # never committed here
    assert lineage.anchor("p0", None) is None and lineage.anchor("p1", 6) is None
    lineage.forget_fetched(["p0"])  # revoked: records will be fetched again
    lineage.committing({"p0": 7})  # the record before 7 is unknown: nothing to anchor
    assert lineage.anchor("p0", 7) is None
    assert lineage.anchor("p0", 6) is not None  # anchors outlive the revoke


def test_fetched_records_below_a_committed_position_are_dropped() -> None:
    lineage: Lineage[str] = Lineage()
    for offset in range(1000):
        lineage.fetched("p0", Record(offset, b"%d" % offset))
        if offset % 10 == 9:
            lineage.committing({"p0": offset + 1})
    assert len(lineage._fetched["p0"]) == 1  # only the record before the last position


@pytest.fixture
def own_broker():
    port = free_port()
    broker = LocalBroker(port=port).start()
    holder = {"broker": broker}

    def restart() -> str:
        process = holder["broker"].process
        assert process is not None
        process.kill()
        process.wait(10)
        holder["broker"] = LocalBroker(port=port).start()
        return holder["broker"].bootstrap

    yield broker.bootstrap, restart
    holder["broker"].stop()


async def _publish(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(topic, value, partition=0)
    finally:
        await producer.stop()


async def _read_all(bootstrap: str, tp: TopicPartition, n: int) -> list:
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await reader.start()
    try:
        reader.assign([tp])
        got: list = []
        for _ in range(20):
            got += (await reader.getmany(tp, timeout_ms=500)).get(tp, [])
            if len(got) >= n:
                return got
        raise AssertionError(f"read {len(got)} of {n} records")
    finally:
        await reader.stop()


async def _replaced(
    bootstrap: str, group: str, tp: TopicPartition, lineage: Lineage[TopicPartition]
) -> list[TopicPartition]:
    """What a group member assigned ``tp`` finds to read from the start."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                                enable_auto_commit=False)  # fmt: skip
    await consumer.start()
    try:
        consumer.assign([tp])

        def reader() -> AIOKafkaConsumer:
            return AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)

        return await replaced_logs(await committed_offsets(consumer, [tp]), lineage, reader)
    finally:
        await stop_consumer(consumer)


async def _commit(bootstrap: str, group: str, tp: TopicPartition, offset: int) -> None:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                                enable_auto_commit=False)  # fmt: skip
    await consumer.start()
    try:
        consumer.assign([tp])
        await consumer.commit({tp: offset})
    finally:
        await stop_consumer(consumer)


@pytest.mark.kafka
def test_a_position_from_a_lost_log_is_read_from_the_start(own_broker) -> None:
    """5 frames answered and position 5 committed; the broker restarts empty and 8 new
    frames arrive; the old position 5 reaches the new broker. Without the check the
    consumer would start at 5 and never answer new frames 0-4."""
    bootstrap, restart = own_broker
    tp, group = TopicPartition("frames", 0), "line-1"
    lineage: Lineage[TopicPartition] = Lineage()

    async def before() -> None:
        await ensure_topics(bootstrap, {"frames": 1})
        await _publish(bootstrap, "frames", [b"old-%d" % i for i in range(5)])
        for record in await _read_all(bootstrap, tp, 5):
            lineage.fetched(tp, record)
        lineage.committing({tp: 5})
        await _commit(bootstrap, group, tp, 5)

    asyncio.run(before())
    # the same log: the check finds the record it committed after, and keeps the position
    assert asyncio.run(_replaced(bootstrap, group, tp, lineage)) == []

    bootstrap = restart()

    async def after() -> list[TopicPartition]:
        await ensure_topics(bootstrap, {"frames": 1})
        await _publish(bootstrap, "frames", [b"new-%d" % i for i in range(8)])
        await _commit(bootstrap, group, tp, 5)  # the stale position lands
        return await _replaced(bootstrap, group, tp, lineage)

    assert asyncio.run(after()) == [tp]


@pytest.mark.kafka
def test_a_position_committed_elsewhere_or_unreadable_is_kept(own_broker) -> None:
    bootstrap, _ = own_broker
    tp, group = TopicPartition("frames", 0), "line-2"
    lineage: Lineage[TopicPartition] = Lineage()

    async def run() -> tuple[list[TopicPartition], list[TopicPartition]]:
        await ensure_topics(bootstrap, {"frames": 1})
        await _publish(bootstrap, "frames", [b"f-%d" % i for i in range(6)])
        await _commit(bootstrap, group, tp, 4)  # another member's commit: no anchor here
        elsewhere = await _replaced(bootstrap, group, tp, lineage)
        # an anchor whose record cannot be read back (the reader reaches no broker)
        lineage.fetched(tp, Record(3, b"f-3", topic="frames"))
        lineage.committing({tp: 4})

        def dead_reader() -> AIOKafkaConsumer:
            return AIOKafkaConsumer(bootstrap_servers=f"127.0.0.1:{free_port()}",
                                    request_timeout_ms=1000)  # fmt: skip

        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                                    enable_auto_commit=False)  # fmt: skip
        await consumer.start()
        try:
            consumer.assign([tp])
            committed = await committed_offsets(consumer, [tp])
            unreadable = await replaced_logs(committed, lineage, dead_reader)
        finally:
            await stop_consumer(consumer)
        return elsewhere, unreadable

    assert asyncio.run(run()) == ([], [])
