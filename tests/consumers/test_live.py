"""The live feed over a real broker (consumers/live.py): the backlog and live verdicts in
the state, the stats, a slow subscriber that loses batches without holding the feed up,
the consumers' lag, an unreachable broker.

Apache Kafka, not Tansu: Tansu answers a ListOffsets for the latest offset with the base
offset of the log's last batch, not its end, so neither the backlog nor the lag come out
exact there."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from consumers.live import LiveFeed
from consumers.live_stats import Subscription
from consumers.topics import stop_consumer
from tests.helpers.api import free_port
from tests.helpers.kafka import Broker, FrameSpec, produce
from tests.helpers.live import LineTopics, line_topics, part, records, verdict
from tests.helpers.settings import tiny_settings

pytestmark = [pytest.mark.kafka]
WAIT_S = 60.0


@pytest.fixture
def broker(kafka_broker: Broker) -> Broker:
    if kafka_broker.kind == "tansu":
        pytest.skip("Tansu's ListOffsets does not answer the end of the log")
    return kafka_broker


@pytest.fixture
def topics(broker: Broker) -> LineTopics:
    return line_topics(broker.bootstrap)


@pytest.fixture
def make_feed(broker: Broker, topics: LineTopics, tmp_path: Path) -> Callable[..., LiveFeed]:
    def make(**kwargs: object) -> LiveFeed:
        settings = tiny_settings(models_dir=tmp_path, **topics.settings(broker.bootstrap))
        return LiveFeed(settings, **kwargs)  # type: ignore[arg-type]

    return make


async def until(check: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout_s} s: {what}"
        await asyncio.sleep(0.05)


def taken(sub: Subscription, into: list[dict]) -> int:
    """Move the subscriber's verdicts into ``into``; how many there are now."""
    into += [v for kind, items in sub.take() if kind == "verdicts" for v in items]
    return len(into)


def test_backlog_then_live_verdicts_with_stats_and_rois(make_feed, topics, broker):
    bootstrap = broker.bootstrap
    old = [verdict(f"old-{i:03d}") for i in range(150)]
    live = (
        [verdict(f"ok-{i}") for i in range(20)]
        + [verdict(f"ng-{i}", "NG") for i in range(6)]
        + [verdict("err-0", "ERROR", score=None, threshold=None, p_value=None)]
        + [verdict(f"nm-{i}", "NO_MODEL", score=None) for i in range(3)]
        + [verdict("hub-0", "NG", roi="hub")]
    )

    async def scenario() -> None:
        await produce(bootstrap, topics.verdicts, records(old))
        feed = make_feed()
        sub = feed.subscribe()
        try:
            # the backlog: the last 50 of each of the two partitions
            await until(lambda: len(feed.state.verdicts) == 100, "the backlog read")
            await asyncio.sleep(0.5)
            assert len(feed.state.verdicts) == 100
            stats = feed.stats()
            assert stats["feed"] == "idle", stats["message"]
            assert stats["rate_per_s"] == 0  # read, nothing live
            assert stats["counts"] == {"OK": 100, "NG": 0, "ERROR": 0, "NO_MODEL": 0}
            sub.take()
            junk = [b"not json", b"[1, 2]", b'{"schema": "bdi.verdict/2", "verdict": "OK"}']
            await produce(bootstrap, topics.verdicts, records(junk) + records(live))
            await produce(bootstrap, topics.parts, records([part("SN-9", "NG")]))
            seen: list[dict] = []
            await until(lambda: taken(sub, seen) >= len(live), "the live verdicts")
            await until(lambda: len(feed.state.parts) == 1, "the part record")
            stats = feed.stats()
            snapshot = feed.snapshot()
        finally:
            await feed.stop()
        assert {v["frame_id"] for v in seen} == {d["frame_id"] for d in live}
        assert stats["counts"] == {"OK": 120, "NG": 7, "ERROR": 1, "NO_MODEL": 3}
        assert stats["ng_pct"] == round(100 * 7 / 131, 2)
        assert stats["feed"] == "live" and stats["rate_per_s"] > 0
        newest = max(d["produced_at"] for d in live)
        assert abs(stats["last_verdict_ms"] - _ms(newest)) <= 1
        assert len(snapshot["verdicts"]) == 131 and len(snapshot["parts"]) == 1
        times = [v["ts_ms"] for v in snapshot["verdicts"]]
        assert times == sorted(times)  # oldest first, whatever partition they came from
        ng = next(v for v in seen if v["frame_id"] == "hub-0")
        assert ng == {
            "frame_id": "hub-0", "part_id": "SN-hub-0", "recipe_id": "disc-a",
            "role_id": "Master1", "roi_id": "hub", "verdict": "NG", "score": 31.5,
            "threshold": 24.0, "p_value": 0.01, "regions": 2, "area_mm2": 0.75,
            "model_version": "m1", "drift": False, "ts_ms": ng["ts_ms"],
        }  # fmt: skip
        rois = {(r["recipe_id"], r["role_id"], r["roi_id"]): r for r in snapshot["rois"]}
        assert set(rois) == {("disc-a", "Master1", "inspection-1"), ("disc-a", "Master1", "hub")}
        assert rois["disc-a", "Master1", "hub"]["frame_id"] == "hub-0"
        assert snapshot["parts"][0]["part_id"] == "SN-9"
        assert snapshot["parts"][0]["verdict"] == "NG" and snapshot["parts"][0]["frames"] == 1

    asyncio.run(scenario())


def test_a_slow_subscriber_loses_old_batches_and_holds_nothing_up(make_feed, topics, broker):
    async def scenario() -> None:
        feed = make_feed(queue_batches=2)
        fast, slow = feed.subscribe(), feed.subscribe()
        got: list[dict] = []
        try:
            await until(lambda: feed.feed == "live", "the feed started")
            for n in range(5):  # five rounds, each its own fetch
                docs = [verdict(f"r{n}-{i}") for i in range(10)]
                await produce(broker.bootstrap, topics.verdicts, records(docs))
                await until(lambda n=n: taken(fast, got) == 10 * (n + 1), f"round {n}")
            late = [v for kind, items in slow.take() for v in items if kind == "verdicts"]
        finally:
            await feed.stop()
        assert len(got) == 50 and sum(feed.state.counts.values()) == 50
        assert 0 < len(late) < 50  # only its last two batches
        assert slow.dropped == 50 - len(late) and fast.dropped == 0
        assert late == got[-len(late) :]  # the newest ones, in order
        assert feed.stats(slow.dropped)["dropped"] == slow.dropped

    asyncio.run(scenario())


def test_lag_is_the_groups_committed_offsets_against_the_frames_ends(make_feed, topics, broker):
    bootstrap = broker.bootstrap
    frames = [FrameSpec(f"f{i}", b"png", [], None) for i in range(12)]

    async def scenario() -> None:
        for p in (0, 1):
            await produce(bootstrap, topics.frames, frames[:6], partition=p)
        feed = make_feed()
        feed.start()
        try:
            await until(lambda: feed.feed == "live", "the feed started")
            await asyncio.sleep(2.5)  # a lag reading without any commit: unknown
            assert feed.stats()["lag"] is None
            p0, p1 = TopicPartition(topics.frames, 0), TopicPartition(topics.frames, 1)
            await _commit(bootstrap, topics.group, {p0: 4, p1: 1})
            await until(lambda: feed.lag == (6 - 4) + (6 - 1), "the lag")
        finally:
            await feed.stop()

    asyncio.run(scenario())


def test_an_unreachable_broker_is_reported_and_tried_again(make_feed, broker, tmp_path):
    async def scenario() -> None:
        feed = make_feed()
        good = feed.settings
        feed.settings = tiny_settings(
            models_dir=tmp_path, kafka_bootstrap=f"127.0.0.1:{free_port()}"
        )
        sub = feed.subscribe()
        try:
            await until(lambda: feed.feed == "unreachable", "unreachable reported")
            stats = feed.stats()
            assert stats["lag"] is None and "127.0.0.1" in stats["message"]
            feed.settings = good  # the broker is back: the next try connects
            await until(lambda: feed.stats()["feed"] == "idle", "connected again", 30)
            assert feed.stats()["message"] is None
        finally:
            started = time.monotonic()
            await feed.stop()
        assert time.monotonic() - started < 5 and sub.closed

    asyncio.run(scenario())


def test_a_broker_that_goes_away_is_reported_and_read_again_once_back(make_feed, topics, broker):
    if broker.cluster is None:
        pytest.skip("needs Apache Kafka run from its jars (a node to stop and start)")
    cluster = broker.cluster

    async def scenario() -> None:
        feed = make_feed()
        sub = feed.subscribe()
        got: list[dict] = []
        try:
            await until(lambda: feed.feed == "live", "the feed started")
            await asyncio.to_thread(cluster.stop_node, 1)
            try:
                await until(lambda: feed.stats()["feed"] == "unreachable", "broker gone")
                assert feed.stats()["message"]
            finally:
                await asyncio.to_thread(cluster.start_node, 1)
            await until(lambda: feed.stats()["feed"] != "unreachable", "broker back", 120)
            await produce(broker.bootstrap, topics.verdicts, records([verdict("after")]))
            await until(lambda: taken(sub, got) == 1, "the verdict after the restart", 120)
        finally:
            await feed.stop()
        assert got[0]["frame_id"] == "after"

    asyncio.run(scenario())


async def _commit(bootstrap: str, group: str, offsets: dict[TopicPartition, int]) -> None:
    """Offsets committed for ``group`` as its members would."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                                enable_auto_commit=False)  # fmt: skip
    await consumer.start()
    try:
        consumer.assign(list(offsets))
        await consumer.commit(offsets)
    finally:
        await stop_consumer(consumer)


def _ms(iso: str) -> int:
    from datetime import datetime

    return int(datetime.fromisoformat(iso).timestamp() * 1000)
