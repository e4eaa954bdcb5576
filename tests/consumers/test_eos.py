"""Exactly-once mode: a clear start-up failure where the broker has no transactions (the
embedded Tansu broker), and the transactional path itself on the test broker (Apache
Kafka)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest
from aiokafka import TopicPartition

from consumers import TransactionsUnsupportedError
from consumers.eos import transactional_id
from tests.helpers.consumer import ENGINE_SETTINGS
from tests.helpers.images import SIZE
from tests.helpers.kafka import (
    answered,
    disc_frames,
    parse,
    produce,
    read_all,
    read_until,
    running,
    topic_maker,
    wait_all_committed,
)
from tests.helpers.paths import REPO
from tests.helpers.settings import TINY


def test_one_transactional_id_per_input_partition():
    tp = TopicPartition("bdi.frames", 3)
    assert transactional_id("bdi-edge", tp) == "bdi-edge.bdi.frames.3"
    assert transactional_id("bdi-edge", tp) != transactional_id("shadow", tp)


@pytest.mark.kafka
def test_start_fails_clearly_where_the_broker_has_no_transactions(tansu_broker, trained):
    topics = topic_maker(tansu_broker)(partitions=1)
    settings = trained.settings(kafka_exactly_once=True, **topics.settings(tansu_broker.bootstrap))
    with pytest.raises(TransactionsUnsupportedError) as info:
        asyncio.run(trained.consumer(settings).run())
    message = str(info.value)
    assert "BDI_KAFKA_EXACTLY_ONCE" in message and "InitProducerId" in message
    assert tansu_broker.bootstrap in message


@pytest.mark.kafka
def test_bdi_consume_exits_2_with_the_message(tansu_broker, trained):
    kafka_broker = tansu_broker
    topics = topic_maker(tansu_broker)(partitions=1)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BDI_", "BRAKEDISC_"))}
    cfg = {
        **TINY,
        **ENGINE_SETTINGS,
        "models_dir": trained.models_dir,
        "kafka_exactly_once": "1",
        **topics.settings(kafka_broker.bootstrap),
    }
    env.update({f"BDI_{k.upper()}": str(v) for k, v in cfg.items()})
    done = subprocess.run(
        [sys.executable, "-m", "edge.cli", "consume"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "bdi: error: BDI_KAFKA_EXACTLY_ONCE=1 needs a broker that supports transactions" in (
        done.stderr
    )
    assert "Traceback" not in done.stderr


@pytest.mark.kafka
@pytest.mark.slow
def test_exactly_once_verdicts_and_offsets_commit_together(kafka_broker, make_topics, trained):
    if not kafka_broker.transactions:
        pytest.skip(
            f"the {kafka_broker.kind} broker has no transactions (InitProducerId): run the "
            "Kafka tests on Apache Kafka (Java 17 and Maven, Docker, or BDI_TEST_KAFKA_BOOTSTRAP)"
        )
    topics = make_topics(partitions=2)
    settings = trained.settings(kafka_exactly_once=True, **topics.settings(kafka_broker.bootstrap))
    frames = disc_frames(40, SIZE, seed=7, tag="eos")
    expected = {f.frame_id: f.expect for f in frames}
    boot = kafka_broker.bootstrap

    async def scenario():
        async with running(trained.consumer(settings), assigned=2) as task:
            await produce(boot, topics.frames, frames)
            await read_until(
                boot,
                topics.verdicts,
                answered(set(expected)),
                watch=task,
                isolation_level="read_committed",
            )
            offsets = await wait_all_committed(boot, topics.group, topics.frames)
        committed_view = await read_until(
            boot, topics.verdicts, answered(set(expected)), isolation_level="read_committed"
        )
        return offsets, committed_view, await read_all(boot, topics.dlq)

    offsets, records, dead = asyncio.run(scenario())
    verdicts = parse(records)
    assert {v["frame_id"]: v["verdict"] for v in verdicts} == expected
    assert len(verdicts) == len(frames)
    assert sum(o or 0 for o in offsets.values()) == len(frames)
    assert dead == []


class FakeTxnProducer:
    """Records the transactional calls; ``fenced`` makes the commit fail as a zombie's would."""

    log: list[tuple] = []

    def __init__(self, transactional_id: str, fenced: bool = False, **options) -> None:
        self.tid = transactional_id
        self.fenced = fenced

    async def start(self):
        self.log.append(("init", self.tid))

    async def stop(self):
        self.log.append(("stop", self.tid))

    def transaction(self):
        producer = self

        class Txn:
            async def __aenter__(self):
                producer.log.append(("begin", producer.tid))

            async def __aexit__(self, exc_type, exc, tb):
                if exc_type is None and producer.fenced:
                    from aiokafka.errors import ProducerFenced

                    producer.log.append(("fenced", producer.tid))
                    raise ProducerFenced()
                producer.log.append(("abort" if exc_type else "commit", producer.tid))

        return Txn()

    async def send_offsets_to_transaction(self, offsets, group_id):
        self.log.append(("offsets", self.tid, dict(offsets), group_id))

    async def send(
        self, topic, value=None, key=None, partition=None, timestamp_ms=None, headers=None
    ):
        self.log.append(("send", self.tid, topic, key))
        future = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future


def _outcomes(partition: int, offsets: list[int]):
    from consumers.outcome import Outcome, OutRecord

    out = []
    for off in offsets:
        frame = type("F", (), {})()
        frame.source = type("S", (), {"topic": "in", "partition": partition, "offset": off})()
        rec = OutRecord("verdicts", f"{partition}-{off}".encode(), b"{}")
        out.append(Outcome(frame=frame, verdict=None, records=[rec]))  # type: ignore[arg-type]
    return out


def test_each_partition_commits_its_records_and_offsets_in_its_own_transaction():
    from consumers.eos import TransactionalPublisher

    FakeTxnProducer.log = []
    pub = TransactionalPublisher("b:9092", "grp", {}, factory=FakeTxnProducer)
    tps = [TopicPartition("in", 0), TopicPartition("in", 1)]
    committed: list[tuple] = []

    async def scenario():
        await pub.open(tps)
        outcomes = _outcomes(0, [5, 6]) + _outcomes(1, [9])
        await pub.publish(
            outcomes,
            lambda tp, os: os[-1].frame.source.offset + 1,
            lambda tp, os, off: committed.append((tp.partition, len(os), off)),
        )
        await pub.close()

    asyncio.run(scenario())
    log = FakeTxnProducer.log
    assert ("init", "grp.in.0") in log and ("init", "grp.in.1") in log
    for tid, keys, offset, part in (
        ("grp.in.0", [b"0-5", b"0-6"], 7, 0),
        ("grp.in.1", [b"1-9"], 10, 1),
    ):
        mine = [e for e in log if e[1] == tid]
        kinds = [e[0] for e in mine]
        assert kinds == ["init", "begin", *["send"] * len(keys), "offsets", "commit", "stop"]
        assert [e[3] for e in mine if e[0] == "send"] == keys
        (off,) = [e for e in mine if e[0] == "offsets"]
        assert off[2] == {TopicPartition("in", part): offset} and off[3] == "grp"
    assert sorted(committed) == [(0, 2, 7), (1, 1, 10)]


def test_a_revoked_or_fenced_partition_commits_nothing():
    from consumers.eos import TransactionalPublisher

    FakeTxnProducer.log = []

    def factory(**kw):
        return FakeTxnProducer(fenced=kw["transactional_id"].endswith(".1"), **kw)

    pub = TransactionalPublisher("b:9092", "grp", {}, factory=factory)
    committed: list[int] = []

    async def scenario():
        await pub.open([TopicPartition("in", 0), TopicPartition("in", 1), TopicPartition("in", 2)])
        await pub.close([TopicPartition("in", 0)])  # revoked before its batch was published
        outcomes = _outcomes(0, [1]) + _outcomes(1, [1]) + _outcomes(2, [1])
        revoked = TopicPartition("in", 0)  # the tracker has forgotten it: no commit value
        await pub.publish(
            outcomes,
            lambda tp, os: None if tp == revoked else 2,
            lambda tp, os, off: committed.append(tp.partition),
        )
        await pub.close()

    asyncio.run(scenario())
    assert committed == [2]
    assert not [e for e in FakeTxnProducer.log if e[0] == "begin" and e[1] == "grp.in.0"]
    assert ("fenced", "grp.in.1") in FakeTxnProducer.log


def test_a_current_partition_without_its_producer_stops_the_consumer():
    from consumers.eos import TransactionalPublisher
    from consumers.errors import PublishError

    pub = TransactionalPublisher("b:9092", "grp", {}, factory=FakeTxnProducer)
    with pytest.raises(PublishError, match="no transactional producer"):
        asyncio.run(pub.publish(_outcomes(4, [1]), lambda tp, os: 2, lambda *a: None))


def test_frames_fetched_while_the_producer_starts_wait_for_it():
    """The fetcher may hand over a newly assigned partition's frames while its producer is
    still starting (``InitProducerId`` waits for the previous owner's transaction to be
    aborted): their transaction waits for the producer instead of failing with "no
    transactional producer", which stopped the consumer."""
    from consumers.eos import TransactionalPublisher

    FakeTxnProducer.log = []
    started = asyncio.Event

    class SlowStart(FakeTxnProducer):
        gate: asyncio.Event

        async def start(self):
            await self.gate.wait()
            await super().start()

    pub = TransactionalPublisher("b:9092", "grp", {}, factory=SlowStart)
    tp = TopicPartition("in", 0)
    committed: list[int] = []

    async def scenario():
        SlowStart.gate = started()
        pub.expect([tp])  # the assignment callback, before anything awaits
        opening = asyncio.create_task(pub.open([tp]))
        publishing = asyncio.create_task(pub.publish(
            _outcomes(0, [3]), lambda tp, os: 4, lambda tp, os, off: committed.append(off)
        ))  # fmt: skip
        await asyncio.sleep(0.05)
        assert not publishing.done() and committed == []  # waiting, not failed
        SlowStart.gate.set()
        await asyncio.wait_for(asyncio.gather(opening, publishing), 5)
        await pub.close()

    asyncio.run(scenario())
    assert committed == [4]
    assert [e[0] for e in FakeTxnProducer.log if e[0] in ("init", "commit")] == ["init", "commit"]
