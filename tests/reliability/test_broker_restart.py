"""S2: the broker stopped and restarted mid-stream; consumer and camera are never restarted.

What Tansu (the local broker) allows to test honestly: it keeps everything in memory, so a
restart loses topics, messages, committed offsets and the group. These tests crash it
(SIGKILL), keep it down for ``OUTAGE_S``, start it again on the same port, recreate the
topics and have the camera publish again, then check that the same ``FrameConsumer`` and
the same camera producer carry on: no crash, every frame published after the restart
answered, and no committed offset above a frame without a verdict.

A restart that *keeps* messages and offsets (frames in flight answered without being
published again) needs Apache Kafka: ``test_restart_keeping_data_on_apache_kafka`` runs on
a one-node KRaft cluster of its own (Java 17 and Maven), or on the broker named by
``BDI_TEST_KAFKA_BOOTSTRAP`` with the commands that stop and start it.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from consumers import FrameConsumer
from consumers.apache_kafka import KafkaCluster, missing_tools
from consumers.broker import LocalBroker, free_port
from consumers.topics import ensure_topics
from tests.helpers.images import SIZE
from tests.helpers.kafka import (
    Topics,
    camera,
    committed,
    disc_frames,
    end_offsets,
    publish,
    running,
    wait_all_committed,
)
from tests.helpers.probes import EngineProxy, TopicLog, early_commits

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

OUTAGE_S = 2.0
TRIALS = 5
IN_FLIGHT_TRIALS = 3  # reproduces in every trial; each one waits AFTER_WAIT_S for lost frames
AFTER_WAIT_S = 5.0  # the between-batches trials recover within 3 s
# short sessions: the consumer notices the lost group quickly (production default: 10 s)
GROUP = {"session_timeout_ms": 1000, "heartbeat_interval_ms": 200, "rebalance_timeout_ms": 1000}
# read at import: tests/conftest.py removes BDI_* variables around each test
KAFKA = os.environ.get("BDI_TEST_KAFKA_BOOTSTRAP", "").strip()
STOP_CMD = os.environ.get("BDI_TEST_KAFKA_STOP_CMD", "").strip()
START_CMD = os.environ.get("BDI_TEST_KAFKA_START_CMD", "").strip()


class Restartable:
    """A Tansu broker that can be crashed and started again on the same port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.logs: list[Path] = []
        self.start()

    @property
    def bootstrap(self) -> str:
        return self.broker.bootstrap

    def crash(self) -> None:
        process = self.broker.process
        assert process is not None
        process.kill()
        process.wait(10)

    def start(self) -> None:
        self.broker = LocalBroker(port=self.port).start()
        if self.broker.log_path is not None:
            self.logs.append(self.broker.log_path)

    def close(self) -> None:
        self.broker.stop()
        for log in self.logs:
            log.unlink(missing_ok=True)


@pytest.fixture
def tansu():
    broker = Restartable()
    yield broker
    broker.close()


def fresh_topics() -> Topics:
    tag = uuid.uuid4().hex[:8]
    return Topics(f"r{tag}.frames", f"r{tag}.verdicts", f"r{tag}.dlq", f"r{tag}.heat", f"g{tag}")


async def create(bootstrap: str, topics: Topics) -> None:
    await ensure_topics(bootstrap, {topics.frames: 2, topics.verdicts: 2, topics.dlq: 1})


async def settle(log: TopicLog, ids: set[str], boot: str, topics: Topics, wait_s: float):
    """Missing frame ids after ``wait_s``, and offsets committed above unanswered frames."""
    missing = await log.wait_for(ids, wait_s)
    commits = await committed(boot, topics.group, topics.frames)
    return missing, early_commits(commits, log.answered_offsets())


def test_restart_between_batches_5_trials(tansu, trained, report):
    """The broker crashes while the consumer waits for frames (nothing in flight)."""
    topics = fresh_topics()
    asyncio.run(create(tansu.bootstrap, topics))
    settings = trained.settings(**topics.settings(tansu.bootstrap))
    results: list[dict[str, float]] = []

    async def scenario() -> FrameConsumer:
        consumer = FrameConsumer(settings, engine=trained.engine, consumer_options=dict(GROUP))
        cam = await camera(tansu.bootstrap)
        try:
            async with running(consumer, assigned=2) as task:
                for trial in range(TRIALS):
                    log = await TopicLog(tansu.bootstrap, topics.verdicts).start()
                    before = disc_frames(12, SIZE, seed=100 * trial, tag=f"b{trial}")
                    await publish(cam, topics.frames, before)
                    missing, _ = await settle(log, {f.frame_id for f in before}, tansu.bootstrap,
                                              topics, 60)  # fmt: skip
                    assert not missing
                    await wait_all_committed(tansu.bootstrap, topics.group, topics.frames, 30)
                    await log.stop()
                    tansu.crash()
                    await asyncio.sleep(OUTAGE_S)
                    assert not task.done(), "the consumer stopped during the outage"
                    tansu.start()
                    restarted = time.monotonic()
                    await create(tansu.bootstrap, topics)
                    after = disc_frames(12, SIZE, seed=100 * trial + 50, tag=f"a{trial}")
                    await publish(cam, topics.frames, after)  # the same camera producer
                    log = await TopicLog(tansu.bootstrap, topics.verdicts).start()
                    missing, early = await settle(log, {f.frame_id for f in after},
                                                  tansu.bootstrap, topics, 60)  # fmt: skip
                    wrong = [v for v in log.values if v["verdict"] != _expect(after, v)]
                    results.append({
                        "missing": len(missing), "early": len(early), "wrong": len(wrong),
                        "recovery_s": round(time.monotonic() - restarted, 2),
                    })  # fmt: skip
                    await log.stop()
                assert not task.done()
        finally:
            await cam.stop()
        return consumer

    consumer = asyncio.run(scenario())
    lost = sum(r["missing"] for r in results)
    early = sum(r["early"] for r in results)
    wrong = sum(r["wrong"] for r in results)
    report(
        "S2", holds=not (lost or early or wrong), trials=TRIALS, outage_s=OUTAGE_S,
        in_flight=False, frames_after_restart=12 * TRIALS, lost=lost, early_commits=early,
        wrong_verdicts=wrong, consumer_restarts=0, camera_restarts=0,
        recovery_s=[r["recovery_s"] for r in results], batches=consumer.stats.batches,
    )  # fmt: skip
    assert (lost, early, wrong) == (0, 0, 0), results


def _expect(frames, verdict: dict) -> str:
    return next(f.expect for f in frames if f.frame_id == verdict["frame_id"])


class GatedEngine(EngineProxy):
    """Holds the next batch, once scored, until the test has crashed the broker: its
    verdicts are then published while the broker is down (a batch in flight)."""

    def __init__(self, engine) -> None:
        super().__init__(engine)
        self.armed = threading.Event()
        self.scored = threading.Event()
        self.release = threading.Event()

    def infer(self, items):
        results = self.engine.infer(items)
        if self.armed.is_set():
            self.armed.clear()
            self.scored.set()
            self.release.wait(60)
        return results


def test_restart_with_a_batch_in_flight(tansu, trained, report):
    """After 8 frames answered and committed, the broker crashes while the next scored
    batch waits for publication (in flight); after the restart the camera publishes 12 new
    frames (the lost log is not replayed: the camera had its frames acknowledged)."""
    results: list[dict[str, object]] = []

    async def trial(n: int) -> None:
        topics = fresh_topics()
        await create(tansu.bootstrap, topics)
        settings = trained.settings(**topics.settings(tansu.bootstrap))
        engine = GatedEngine(trained.engine)
        consumer = FrameConsumer(settings, engine=engine, consumer_options=dict(GROUP))
        cam = await camera(tansu.bootstrap)
        try:
            async with running(consumer, assigned=2) as task:
                log = await TopicLog(tansu.bootstrap, topics.verdicts).start()
                warm = disc_frames(8, SIZE, seed=1000 * n, tag=f"w{n}")
                await publish(cam, topics.frames, warm)
                missing, _ = await settle(log, {f.frame_id for f in warm}, tansu.bootstrap,
                                          topics, 60)  # fmt: skip
                assert not missing
                await wait_all_committed(tansu.bootstrap, topics.group, topics.frames, 30)
                await log.stop()
                engine.armed.set()
                burst = disc_frames(8, SIZE, seed=1000 * n + 100, tag=f"i{n}")
                await publish(cam, topics.frames, burst)
                assert await asyncio.to_thread(engine.scored.wait, 60), "no batch scored"
                tansu.crash()
                engine.release.set()  # its verdicts now meet a dead broker
                await asyncio.sleep(OUTAGE_S)
                alive = not task.done()
                tansu.start()
                await create(tansu.bootstrap, topics)
                after = disc_frames(12, SIZE, seed=1000 * n + 500, tag=f"j{n}")
                await publish(cam, topics.frames, after)
                log = await TopicLog(tansu.bootstrap, topics.verdicts).start()
                missing, early = await settle(log, {f.frame_id for f in after},
                                              tansu.bootstrap, topics, AFTER_WAIT_S)  # fmt: skip
                ends = await end_offsets(tansu.bootstrap, topics.frames)
                commits = await committed(tansu.bootstrap, topics.group, topics.frames)
                results.append({
                    "alive": alive and not task.done(), "missing": len(missing),
                    "early": len(early), "ends": ends, "committed": commits,
                    "in_flight_delivered": sum(1 for v in log.values
                                               if v["frame_id"].startswith(f"i{n}-")),
                    "silent_ok": sum(1 for v in log.values if v["verdict"] == "OK"
                                     and _expect([*burst, *after], v) != "OK"),
                })  # fmt: skip
                await log.stop()
        finally:
            await cam.stop()

    for n in range(IN_FLIGHT_TRIALS):
        asyncio.run(trial(n))
    lost = sum(int(r["missing"]) for r in results)
    early = sum(int(r["early"]) for r in results)
    report(
        "S2", holds=not (lost or early), trials=IN_FLIGHT_TRIALS, outage_s=OUTAGE_S,
        in_flight=True, frames_after_restart=12 * IN_FLIGHT_TRIALS, lost=lost, early_commits=early,
        trials_with_loss=sum(1 for r in results if r["missing"]),
        consumer_crashes=sum(1 for r in results if not r["alive"]),
        in_flight_verdicts_delivered_after_restart=sum(
            int(r["in_flight_delivered"]) for r in results),
        silent_ok=sum(int(r["silent_ok"]) for r in results),
        committed_vs_log_end=[(r["committed"], r["ends"]) for r in results],
    )  # fmt: skip
    assert all(r["alive"] for r in results), "the consumer stopped: not a recovery"
    assert sum(int(r["silent_ok"]) for r in results) == 0
    assert (lost, early) == (0, 0), f"{lost} frames never answered, {early} committed early"


STALE_TRIES = 3  # the consumer may rejoin before the stale position lands: then try again


def test_a_stale_position_on_the_restarted_broker_is_read_from_the_start(
    tansu, trained, report, caplog
):
    """B1's path, made deterministic: 6 frames answered and position 6 committed; the
    broker restarts empty; the consumer's old position lands on the new broker before the
    consumer rejoins (as a commit held up through the restart would), and 10 new frames
    arrive. The record before that position is not the one the consumer committed after,
    so it must read the partition from its start and answer all 10; started at 6, it
    would never answer new frames 0-5."""
    caplog.set_level("WARNING", logger="consumers.lineage")
    outcomes: list[dict[str, int]] = []

    async def trial(n: int) -> bool:
        topics = fresh_topics()
        one = {topics.frames: 1, topics.verdicts: 1, topics.dlq: 1}
        await ensure_topics(tansu.bootstrap, one)
        settings = trained.settings(**topics.settings(tansu.bootstrap))
        # slow retries: the consumer finds the new broker after the stale position landed
        options = {**GROUP, "retry_backoff_ms": 3000}
        consumer = FrameConsumer(settings, engine=trained.engine, consumer_options=options)
        cam = await camera(tansu.bootstrap)
        caplog.clear()
        try:
            async with running(consumer) as task:
                log = await TopicLog(tansu.bootstrap, topics.verdicts).start()
                first = disc_frames(6, SIZE, seed=5000 + n, tag=f"s{n}")
                await publish(cam, topics.frames, first)
                missing, _ = await settle(log, {f.frame_id for f in first}, tansu.bootstrap,
                                          topics, 60)  # fmt: skip
                assert not missing
                stale = await wait_all_committed(tansu.bootstrap, topics.group, topics.frames)
                assert stale == {0: 6}
                await log.stop()
                tansu.crash()
                await asyncio.sleep(OUTAGE_S)
                tansu.start()
                await ensure_topics(tansu.bootstrap, one)
                landed = await _commit_alone(tansu.bootstrap, topics.group, topics.frames, 6)
                after = disc_frames(10, SIZE, seed=5000 + n + 50, tag=f"t{n}")
                await publish(cam, topics.frames, after)
                log = await TopicLog(tansu.bootstrap, topics.verdicts).start()
                missing, _ = await settle(log, {f.frame_id for f in after}, tansu.bootstrap,
                                          topics, 30)  # fmt: skip
                await log.stop()
                assert not task.done()
        finally:
            await cam.stop()
        rewound = any("another log" in r.getMessage() for r in caplog.records)
        outcomes.append({"landed": int(landed), "rewound": int(rewound),
                         "missing": len(missing)})  # fmt: skip
        return landed and rewound or bool(missing)

    for n in range(STALE_TRIES):
        if asyncio.run(trial(n)):
            break
    report("S2", holds=not any(o["missing"] for o in outcomes), stale_position=True,
           tries=len(outcomes), outcomes=outcomes)  # fmt: skip
    assert all(o["missing"] == 0 for o in outcomes), outcomes
    if not any(o["landed"] and o["rewound"] for o in outcomes):
        pytest.skip(f"the consumer rejoined before the stale position landed: {outcomes}")


async def _commit_alone(bootstrap: str, group: str, topic: str, offset: int) -> bool:
    """Commit ``offset`` for partition 0 as a client outside the group (generation -1);
    whether the broker took it."""
    client = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                              enable_auto_commit=False)  # fmt: skip
    await client.start()
    try:
        client.assign([TopicPartition(topic, 0)])
        await client.commit({TopicPartition(topic, 0): offset})
        return True
    except KafkaError:
        return False
    finally:
        await client.stop()


def _run(command: str) -> None:
    subprocess.run(shlex.split(command), check=True, timeout=300)


@pytest.fixture
def durable_kafka() -> Iterator[tuple[str, Callable[[], None], Callable[[], None], str]]:
    """An Apache Kafka that keeps its log across a restart: ``(bootstrap, stop, start,
    what)``. The one named by ``BDI_TEST_KAFKA_BOOTSTRAP`` with its stop and start commands
    when given, else a one-node KRaft cluster of this test's own (Java 17 and Maven)."""
    if KAFKA and STOP_CMD and START_CMD:
        yield KAFKA, lambda: _run(STOP_CMD), lambda: _run(START_CMD), f"external {KAFKA}"
        return
    if missing := missing_tools():
        pytest.skip(
            f"a broker restart that keeps messages and offsets needs Apache Kafka, which "
            f"cannot run here (missing {'; '.join(missing)}); or set BDI_TEST_KAFKA_BOOTSTRAP "
            "and BDI_TEST_KAFKA_STOP_CMD / BDI_TEST_KAFKA_START_CMD"
        )
    with KafkaCluster(nodes=1) as cluster:

        def start() -> None:
            cluster.start_node(1)
            cluster.wait_ready(60)

        yield cluster.bootstrap, lambda: cluster.stop_node(1), start, "apache-kafka 1 node"


def test_restart_keeping_data_on_apache_kafka(durable_kafka, trained, report):
    """Apache Kafka stopped (a controlled shutdown) and started again with a batch in
    flight: the frames published before the stop, in flight included, are all answered
    afterwards without being published again, and no offset is committed early."""
    boot, stop_broker, start_broker, what = durable_kafka
    topics = fresh_topics()
    asyncio.run(create(boot, topics))
    settings = trained.settings(**topics.settings(boot))
    results: list[dict[str, int]] = []

    async def scenario() -> None:
        engine = GatedEngine(trained.engine)
        options = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000}
        consumer = FrameConsumer(settings, engine=engine, consumer_options=options)
        cam = await camera(boot)
        try:
            async with running(consumer, assigned=2) as task:
                for n in range(TRIALS):
                    engine.scored.clear()
                    engine.release.clear()
                    engine.armed.set()
                    burst = disc_frames(16, SIZE, seed=3000 + n, tag=f"k{n}")
                    await publish(cam, topics.frames, burst)
                    assert await asyncio.to_thread(engine.scored.wait, 60)
                    await asyncio.to_thread(stop_broker)
                    engine.release.set()
                    await asyncio.sleep(OUTAGE_S)
                    await asyncio.to_thread(start_broker)
                    log = await TopicLog(boot, topics.verdicts).start()
                    ids = {f.frame_id for f in burst}
                    missing, early = await settle(log, ids, boot, topics, 120)
                    results.append({"missing": len(missing), "early": len(early)})
                    await log.stop()
                assert not task.done()
        finally:
            await cam.stop()

    asyncio.run(scenario())
    lost = sum(r["missing"] for r in results)
    early = sum(r["early"] for r in results)
    report("S2", holds=not (lost or early), trials=TRIALS, broker=what,
           in_flight=True, lost=lost, early_commits=early)  # fmt: skip
    assert (lost, early) == (0, 0), results
