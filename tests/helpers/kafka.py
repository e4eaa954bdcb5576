"""Test-side Kafka I/O over the wire: the test broker and its topics, produce frames as a
camera would, read verdicts as an MES would (manual assignment, no group), check the
group's committed offsets."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import ConsumerRecord

from consumers import FrameConsumer
from consumers.apache_kafka import KafkaCluster
from consumers.topics import ensure_topics, stop_consumer, topic_partitions
from edge.simulator.discs import encode_jpeg, encode_png, make_ng, make_ok

RECIPE, ROLE, ROI = "disc-a", "Master1", "inspection-1"
WAIT_S = 120.0  # a generous deadline for *arrival*; nothing asserts on durations

BrokerKind = Literal["external", "testcontainers", "apache-kafka", "tansu"]


@dataclass(frozen=True)
class Broker:
    bootstrap: str
    kind: BrokerKind
    transactions: bool  # probed: InitProducerId works
    cluster: KafkaCluster | None = None  # Apache Kafka run from its jars: nodes to restart


@dataclass(frozen=True)
class Topics:
    frames: str
    verdicts: str
    dlq: str
    heatmaps: str
    group: str

    def settings(self, bootstrap: str) -> dict[str, object]:
        return dict(
            kafka_bootstrap=bootstrap,
            kafka_group=self.group,
            kafka_topic_frames=self.frames,
            kafka_topic_verdicts=self.verdicts,
            kafka_topic_dlq=self.dlq,
        )


def topic_maker(broker: Broker) -> Callable[..., Topics]:
    """Factory: fresh, uniquely named topics (and group) on ``broker``."""

    def make(partitions: int = 4) -> Topics:
        tag = uuid.uuid4().hex[:10]
        topics = Topics(
            f"t{tag}.frames", f"t{tag}.verdicts", f"t{tag}.dlq", f"t{tag}.heatmaps", f"g{tag}"
        )
        wanted = {topics.frames: partitions, topics.verdicts: partitions, topics.dlq: 1,
                  topics.heatmaps: 1}  # fmt: skip
        asyncio.run(ensure_topics(broker.bootstrap, wanted))
        return topics

    return make


@dataclass(frozen=True)
class FrameSpec:
    frame_id: str
    value: bytes | None
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    key: bytes | None = None
    expect: str | None = None  # the verdict it must get


def headers(frame_id: str | None, **fields: str | None) -> list[tuple[str, bytes]]:
    """Contract headers; a field set to ``None`` is left out."""
    base: dict[str, str | None] = {
        "frame_id": frame_id,
        "recipe_id": RECIPE,
        "role_id": ROLE,
        "roi_id": ROI,
    }
    base.update(fields)
    return [(k, v.encode()) for k, v in base.items() if v is not None]


def disc_frames(
    n: int, size: int, *, seed: int = 0, ng_every: int = 10, jpeg_every: int = 7, tag: str = "f"
) -> list[FrameSpec]:
    """``n`` synthetic discs, every ``ng_every``-th defective, keyed by ``part_id``."""
    out = []
    for i in range(n):
        ng = i % ng_every == ng_every - 1
        disc = make_ng(50_000 + seed + i, size) if ng else make_ok(20_000 + seed + i, size)
        value = encode_jpeg(disc.image, 95) if i % jpeg_every == 3 else encode_png(disc.image)
        part = f"disc-{seed}-{i // 2:04d}"  # two ROIs' worth of frames per part
        frame_id = f"{tag}-{seed}-{i:05d}"
        out.append(
            FrameSpec(
                frame_id,
                value,
                headers(frame_id, part_id=part, mm_per_px="0.1"),
                part.encode(),
                "NG" if ng else "OK",
            )
        )
    return out


async def produce(bootstrap: str, topic: str, frames: Sequence[FrameSpec], **kw: Any) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", max_request_size=8 << 20)
    await producer.start()
    try:
        futures = [
            await producer.send(topic, f.value, key=f.key, headers=f.headers, **kw) for f in frames
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def read_until(
    bootstrap: str,
    topic: str,
    done: Callable[[list[ConsumerRecord]], bool],
    *,
    watch: asyncio.Task[Any] | None = None,
    timeout_s: float = WAIT_S,
    isolation_level: str = "read_uncommitted",
) -> list[ConsumerRecord]:
    """Every record of ``topic`` from the beginning, until ``done(records)`` (or the deadline,
    or ``watch`` -- the consumer under test -- ending, which re-raises its error)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, isolation_level=isolation_level
    )
    await consumer.start()
    records: list[ConsumerRecord] = []
    try:
        tps = await topic_partitions(consumer, topic)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        deadline = time.monotonic() + timeout_s
        while not done(records) and time.monotonic() < deadline:
            if watch is not None and watch.done():
                watch.result()
                break
            batch = await consumer.getmany(timeout_ms=200)
            for part in batch.values():
                records.extend(part)
        return records
    finally:
        await stop_consumer(consumer)


async def read_all(bootstrap: str, topic: str) -> list[ConsumerRecord]:
    """Everything in ``topic`` now (up to its end offsets)."""
    ends = await end_offsets(bootstrap, topic)
    total = sum(ends.values())  # fresh test topics: every offset holds a record
    return await read_until(bootstrap, topic, lambda r: len(r) >= total, timeout_s=30)


async def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        tps = await topic_partitions(consumer, topic)
        ends = await consumer.end_offsets(tps)
        return {tp.partition: offset for tp, offset in ends.items()}
    finally:
        await stop_consumer(consumer)


async def committed(bootstrap: str, group: str, topic: str) -> dict[int, int | None]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        tps = await topic_partitions(consumer, topic)
        return {tp.partition: await consumer.committed(tp) for tp in tps}
    finally:
        await stop_consumer(consumer)


async def wait_all_committed(
    bootstrap: str, group: str, topic: str, timeout_s: float = WAIT_S
) -> dict[int, int | None]:
    """The group's committed offsets once they reach the topic's end (or at the deadline)."""
    ends = await end_offsets(bootstrap, topic)
    deadline = time.monotonic() + timeout_s
    while True:
        got = await committed(bootstrap, group, topic)
        if all((got.get(p) or 0) >= end for p, end in ends.items() if end):
            return got
        if time.monotonic() > deadline:
            return got
        await asyncio.sleep(0.2)


def parse(records: Sequence[ConsumerRecord]) -> list[dict[str, Any]]:
    return [orjson.loads(r.value) for r in records]


def answered(frame_ids: set[str]) -> Callable[[list[ConsumerRecord]], bool]:
    """``done`` predicate: every frame id has at least one verdict."""

    def done(records: list[ConsumerRecord]) -> bool:
        seen = {r.key.decode() for r in records if r.key is not None}
        return frame_ids <= seen

    return done


@contextlib.asynccontextmanager
async def running(
    consumer: FrameConsumer, *, assigned: int = 1
) -> AsyncIterator[asyncio.Task[None]]:
    """Run ``consumer`` in the background; yield once it holds ``assigned`` partitions;
    stop it (as SIGTERM would) on exit."""
    task = asyncio.create_task(consumer.run())
    deadline = time.monotonic() + WAIT_S
    while len(consumer.assignment) < assigned and not task.done():
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    if task.done():
        task.result()
    try:
        yield task
    finally:
        consumer.request_stop()
        await task


async def supports_transactions(bootstrap: str) -> bool:
    txn_id = f"bdi-test-probe-{uuid.uuid4().hex[:6]}"
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=txn_id)
    try:
        await asyncio.wait_for(producer.start(), 20)
    except Exception:
        return False
    finally:
        with contextlib.suppress(Exception):
            await producer.stop()
    return True


async def camera(bootstrap: str) -> AIOKafkaProducer:
    """A started producer that publishes as a line camera does (the caller stops it)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", request_timeout_ms=30000)
    await producer.start()
    return producer


async def publish(producer: AIOKafkaProducer, topic: str, frames: Sequence[FrameSpec]) -> None:
    futures = [await producer.send(topic, f.value, key=f.key, headers=f.headers) for f in frames]
    await asyncio.gather(*futures)
