"""S21: a three-node Apache Kafka cluster (replication 3, ``min.insync.replicas=2``,
``acks=all``) loses nodes while frames flow: the leader of the frames or verdicts partition
killed (SIGKILL) five times, a rolling restart of all three, and a whole-cluster restart
on durable logs. The same consumer and camera ride through: every frame the camera had
acknowledged gets its verdict (0 lost), none a wrong one (0 silent OK), and the longest gap
between verdicts after each fault is measured.
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import Iterator

import pytest
from aiokafka import AIOKafkaClient, AIOKafkaProducer, TopicPartition

from consumers import FrameConsumer
from consumers.apache_kafka import KafkaCluster, missing_tools
from consumers.topics import ensure_topics
from tests.helpers.images import SIZE
from tests.helpers.kafka import FrameSpec, Topics, disc_frames, running
from tests.helpers.probes import TopicLog

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

LEADER_KILLS = 5
RATE_FPS = 20.0
DOWN_S = 3.0  # a killed or stopped node stays down this long
SETTLE_S = 4.0  # frames flow this long between faults
GROUP = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000}


@pytest.fixture
def cluster(tmp_path) -> Iterator[KafkaCluster]:
    if missing := missing_tools():
        pytest.skip(f"Apache Kafka cannot run here: missing {'; '.join(missing)}")
    with KafkaCluster(nodes=3, root=tmp_path / "kafka") as kafka:
        yield kafka


async def leader(bootstrap: str, topic: str, partition: int) -> int:
    client = AIOKafkaClient(bootstrap_servers=bootstrap)
    try:
        await client.bootstrap()
        metadata = await client.fetch_all_metadata()
        node = metadata.leader_for_partition(TopicPartition(topic, partition))
        assert node is not None and node >= 0, f"{topic}:{partition} has no leader"
        return int(node)
    finally:
        await client.close()


class Camera:
    """Publishes frames at a steady rate with ``acks=all`` and keeps those acknowledged
    (a frame whose send failed after the producer's retries is not expected anywhere)."""

    def __init__(self, bootstrap: str, topic: str, frames: list[FrameSpec]) -> None:
        self.bootstrap, self.topic, self.frames = bootstrap, topic, frames
        self.acked: list[FrameSpec] = []
        self.failed = 0
        self._stop = asyncio.Event()

    async def run(self) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all",
                                    request_timeout_ms=30000)  # fmt: skip
        await producer.start()
        pending: set[asyncio.Task[None]] = set()
        try:
            start = time.monotonic()
            for i, frame in enumerate(self.frames):
                if self._stop.is_set():
                    break
                await asyncio.sleep(max(0.0, start + i / RATE_FPS - time.monotonic()))
                task = asyncio.create_task(self._send(producer, frame))
                pending.add(task)
                task.add_done_callback(pending.discard)
            await asyncio.gather(*pending)
        finally:
            await producer.stop()

    async def _send(self, producer: AIOKafkaProducer, frame: FrameSpec) -> None:
        try:
            await (await producer.send(self.topic, frame.value, key=frame.key,
                                       headers=frame.headers))  # fmt: skip
            self.acked.append(frame)
        except Exception:  # noqa: BLE001 - counted: the camera would publish it again
            self.failed += 1

    def stop(self) -> None:
        self._stop.set()


def _gaps(times: list[float], faults: list[tuple[str, float]], end: float) -> dict[str, float]:
    """Per fault: the longest wait for a verdict from the fault until the next fault."""
    out: dict[str, float] = {}
    bounds = [t for _, t in faults[1:]] + [end]
    for (name, start), stop in zip(faults, bounds, strict=True):
        inside = [t for t in times if start <= t < stop]
        marks = [start, *inside]
        longest = max((b - a for a, b in zip(marks, marks[1:], strict=False)), default=stop - start)
        out[name] = round(longest, 2)
    return out


def test_consumers_ride_through_leader_kills_and_restarts(cluster, trained, report):
    boot = cluster.bootstrap
    tag = uuid.uuid4().hex[:8]
    topics = Topics(f"f{tag}.frames", f"f{tag}.verdicts", f"f{tag}.dlq", f"f{tag}.h", f"g{tag}")
    asyncio.run(ensure_topics(boot, {topics.frames: 2, topics.verdicts: 2, topics.dlq: 1},
                              replication=3))  # fmt: skip
    settings = trained.settings(**topics.settings(boot))
    frames = disc_frames(4000, SIZE, seed=16, tag="fo")
    expected = {f.frame_id: f.expect for f in frames}
    faults: list[tuple[str, float]] = []

    async def fault(name: str, action) -> None:
        faults.append((name, time.time()))
        await asyncio.to_thread(action)

    def restart(node: int) -> None:
        time.sleep(DOWN_S)
        cluster.start_node(node)
        cluster.wait_ready(120)

    async def scenario() -> tuple[Camera, TopicLog]:
        consumer = FrameConsumer(settings, engine=trained.engine, consumer_options=dict(GROUP))
        camera = Camera(boot, topics.frames, frames)
        async with running(consumer, assigned=2) as task:
            shooting = asyncio.create_task(camera.run())
            await asyncio.sleep(SETTLE_S)
            for i in range(LEADER_KILLS):
                topic = topics.frames if i % 2 == 0 else topics.verdicts
                node = await leader(boot, topic, 0)
                await fault(f"kill leader {i + 1} ({topic.split('.')[1]}, node {node})",
                            lambda n=node: cluster.signal_node(n, signal.SIGKILL))  # fmt: skip
                await asyncio.to_thread(restart, node)
                await asyncio.sleep(SETTLE_S)
            for node in (1, 2, 3):
                await fault(f"rolling restart node {node}", lambda n=node: cluster.stop_node(n))
                await asyncio.to_thread(restart, node)
                await asyncio.sleep(SETTLE_S)

            def whole_cluster() -> None:
                for node in (3, 2, 1):
                    cluster.stop_node(node)
                time.sleep(DOWN_S)
                for node in (1, 2, 3):
                    cluster.start_node(node, wait=False)
                cluster.wait_ready(180)

            await fault("whole-cluster restart", whole_cluster)
            await asyncio.sleep(2 * SETTLE_S)
            camera.stop()
            await shooting
            log = await TopicLog(boot, topics.verdicts).start()
            wanted = {f.frame_id for f in camera.acked}
            await log.wait_for(wanted, 180)  # the missing ones are counted below
            await log.stop()
            assert not task.done(), "the consumer stopped"
        return camera, log

    camera, log = asyncio.run(scenario())
    by_id = log.by_id()
    acked = {f.frame_id for f in camera.acked}
    lost = acked - set(by_id)
    wrong = [f for f in acked & set(by_id) if {v["verdict"] for v in by_id[f]} != {expected[f]}]
    silent_ok = [f for f in wrong if "OK" in {v["verdict"] for v in by_id[f]}]
    times = sorted(r.timestamp / 1000 for r in log.records)
    figures = dict(
        nodes=3, replication=3, min_insync=2, frames_acked=len(acked),
        frames_not_acked=camera.failed, verdicts=len(log.values), lost=len(lost),
        wrong=len(wrong), silent_ok=len(silent_ok),
        duplicates=len(log.values) - len(by_id),
        longest_gap_s=_gaps(times, faults, times[-1] if times else time.time()),
    )  # fmt: skip
    report("S21", holds=not lost and not wrong, **figures)
    assert not lost, (sorted(lost)[:10], figures)
    assert not wrong, (wrong[:10], figures)
