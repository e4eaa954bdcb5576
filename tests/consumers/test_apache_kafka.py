"""Apache Kafka run from its Maven jars: the tools it needs named when missing, a one-node
cluster with transactions, and a three-node cluster that keeps acknowledged writes through
a leader's crash and brings the node back on its durable log."""

from __future__ import annotations

import asyncio
import signal
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from consumers import apache_kafka
from consumers.apache_kafka import KafkaCluster, ensure_classpath, missing_tools
from consumers.errors import ConsumerError
from consumers.topics import stop_consumer
from tests.helpers.kafka import Broker


def test_what_is_missing_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BDI_KAFKA_HOME", str(tmp_path))  # nothing fetched there
    monkeypatch.setenv("PATH", str(tmp_path))  # neither java nor mvn
    missing = missing_tools()
    assert len(missing) == 2 and "Java 17+" in missing[0] and "Maven" in missing[1]
    with pytest.raises(ConsumerError, match="Apache Kafka cannot run here: missing Java 17"):
        ensure_classpath()
    assert not (tmp_path / apache_kafka.KAFKA_VERSION).exists()


def test_an_old_java_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(apache_kafka, "java_version", lambda java="java": 11)
    monkeypatch.setattr(apache_kafka.shutil, "which", lambda name: f"/usr/bin/{name}")
    assert any("`java` is Java 11" in m for m in missing_tools())


async def _round_trip(bootstrap: str, topic: str, replicas: int) -> list[bytes]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 2, replicas)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=f"tx-{topic}")
    await producer.start()
    try:
        async with producer.transaction():
            await producer.send_and_wait(topic, b"committed", partition=0)
        await producer.begin_transaction()
        await producer.send_and_wait(topic, b"aborted", partition=1)
        await producer.abort_transaction()
    finally:
        await producer.stop()
    return await _read(bootstrap, topic, 1)


async def _read(bootstrap: str, topic: str, n: int) -> list[bytes]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                isolation_level="read_committed", group_id=None)  # fmt: skip
    await consumer.start()
    got: list[bytes] = []
    try:
        async with asyncio.timeout(60):
            while len(got) < n:
                batch = await consumer.getmany(timeout_ms=1000)
                got += [m.value for msgs in batch.values() for m in msgs if m.value is not None]
            more = await consumer.getmany(timeout_ms=1000)  # nothing beyond what is wanted
            got += [m.value for msgs in more.values() for m in msgs if m.value is not None]
    finally:
        await stop_consumer(consumer)
    return got


@pytest.mark.kafka
def test_one_node_has_transactions(kafka_broker: Broker) -> None:
    if kafka_broker.kind != "apache-kafka":
        pytest.skip(f"the test broker is {kafka_broker.kind}, not Apache Kafka from its jars")
    topic = f"t{uuid.uuid4().hex[:8]}"
    assert asyncio.run(_round_trip(kafka_broker.bootstrap, topic, 1)) == [b"committed"]


@pytest.mark.kafka
@pytest.mark.slow
def test_three_nodes_keep_acknowledged_writes_through_a_crash(tmp_path: Path) -> None:
    if missing_tools():
        pytest.skip(f"Apache Kafka cannot run here: missing {'; '.join(missing_tools())}")
    with KafkaCluster(nodes=3, root=tmp_path) as cluster:
        topic = f"t{uuid.uuid4().hex[:8]}"
        assert asyncio.run(_round_trip(cluster.bootstrap, topic, 3)) == [b"committed"]
        config = cluster.node(1).config.read_text()
        assert "min.insync.replicas=2" in config and "default.replication.factor=3" in config
        cluster.signal_node(2, signal.SIGKILL)  # a crash, not a shutdown

        async def after_crash() -> list[bytes]:
            producer = AIOKafkaProducer(bootstrap_servers=cluster.bootstrap, acks="all")
            await producer.start()
            try:
                for i in range(5):
                    await producer.send_and_wait(topic, f"after-{i}".encode(), partition=0)
            finally:
                await producer.stop()
            return await _read(cluster.bootstrap, topic, 6)

        got = asyncio.run(after_crash())
        assert got == [b"committed"] + [f"after-{i}".encode() for i in range(5)]
        cluster.start_node(2)  # on its own data: it rejoins and catches up
        cluster.wait_ready(60)
        assert (cluster.node(2).data / "meta.properties").is_file()
