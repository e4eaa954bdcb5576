"""The consumer loop against a real broker: every frame answered once and correctly, offsets
committed, hot reload without a restart."""

from __future__ import annotations

import asyncio
import hashlib

import pytest

from consumers import VERDICT_SCHEMA, FrameConsumer
from edge.api.schemas import RegionPublic
from engine import EngineConfig
from engine.provenance import Provenance
from store import ModelStore
from tests.helpers.consumer import GROUP_OPTIONS, train_model
from tests.helpers.images import SIZE
from tests.helpers.kafka import (
    RECIPE,
    ROI,
    ROLE,
    answered,
    committed,
    disc_frames,
    end_offsets,
    parse,
    produce,
    read_all,
    read_until,
    running,
    wait_all_committed,
)

pytestmark = pytest.mark.kafka


@pytest.mark.slow
def test_200_frames_get_exactly_200_correct_verdicts_and_all_offsets_commit(
    kafka_broker, make_topics, trained
):
    topics = make_topics(partitions=4)
    settings = trained.settings(**topics.settings(kafka_broker.bootstrap))
    frames = disc_frames(200, SIZE, seed=1)
    expected = {f.frame_id: f.expect for f in frames}
    assert list(expected.values()).count("NG") == 20

    async def scenario():
        consumer = trained.consumer(settings)
        async with running(consumer, assigned=4) as task:
            await produce(kafka_broker.bootstrap, topics.frames, frames)
            await read_until(
                kafka_broker.bootstrap, topics.verdicts, answered(set(expected)), watch=task
            )
            offsets = await wait_all_committed(kafka_broker.bootstrap, topics.group, topics.frames)
        ends = await end_offsets(kafka_broker.bootstrap, topics.frames)
        verdicts = await read_all(kafka_broker.bootstrap, topics.verdicts)
        dead = await read_all(kafka_broker.bootstrap, topics.dlq)
        return consumer, offsets, ends, verdicts, dead

    consumer, offsets, ends, records, dead = asyncio.run(scenario())
    verdicts = parse(records)
    assert len(verdicts) == 200  # exactly: no frame lost, none answered twice
    sent = {f.frame_id: f.value or b"" for f in frames}
    store = ModelStore(settings)
    calibration = store.state(store.ref(RECIPE, ROLE, ROI)).calibration_version
    provenance = Provenance.of(EngineConfig.from_settings(settings))
    assert {v["frame_id"] for v in verdicts} == set(expected)
    wrong = {
        v["frame_id"]: (v["verdict"], v["score"])
        for v in verdicts
        if v["verdict"] != expected[v["frame_id"]]
    }
    assert not wrong, f"threshold {trained.threshold}: {wrong}"
    assert sum(ends.values()) == 200
    assert offsets == {p: (end or None) for p, end in ends.items()}  # all committed, to the end
    assert dead == []
    assert consumer.stats.verdicts == {"OK": 180, "NG": 20}
    # a broker that grants producer ids (Apache Kafka) gets an idempotent verdict producer
    assert consumer.idempotent is kafka_broker.transactions
    for record, v in zip(records, verdicts, strict=True):
        assert record.key == v["frame_id"].encode()
        assert v["schema"] == VERDICT_SCHEMA
        assert v["model_version"] == trained.version
        assert v["threshold"] == pytest.approx(trained.threshold)
        assert calibration is not None and v["calibration_version"] == calibration
        assert v["image_sha256"] == hashlib.sha256(sent[v["frame_id"]]).hexdigest()
        assert (v["code_version"], v["settings_fingerprint"]) == provenance
        assert v["source"]["topic"] == topics.frames
        assert (v["recipe_id"], v["role_id"], v["roi_id"]) == (RECIPE, ROLE, ROI)
        assert v["part_id"].startswith("disc-1-") and v["frame_id_derived"] is False
        assert v["error"] is None and v["dead_lettered"] is False
        assert set(v["timings"]) == {"queue_ms", "decode_ms", "inference_ms", "total_ms"}
        if v["verdict"] == "NG":
            assert v["regions"], "an NG verdict names where the defect is"
            region = v["regions"][0]
            assert set(region) == set(RegionPublic.model_fields)  # as the REST API's
            assert region["area_mm2"] == pytest.approx(region["area_px"] * 0.01)


@pytest.mark.slow
def test_a_retrained_model_is_picked_up_without_restart(
    kafka_broker, make_topics, trained, tmp_path
):
    """A new version saved to the store mid-stream (as the REST API would) is used from
    then on; each batch uses one version; no restart."""
    import shutil

    models = tmp_path / "models"
    shutil.copytree(trained.models_dir, models)
    topics = make_topics(partitions=1)
    settings = trained.settings(
        models_dir=models, model_poll_s=0.2, **topics.settings(kafka_broker.bootstrap)
    )
    store = ModelStore(settings)
    new_model, _ = train_model(trained.engine, range(100, 120))
    assert new_model.version != trained.version

    async def scenario():
        consumer = trained.consumer(settings)
        async with running(consumer) as task:
            first = disc_frames(10, SIZE, seed=2, tag="before")
            await produce(kafka_broker.bootstrap, topics.frames, first)
            await read_until(
                kafka_broker.bootstrap,
                topics.verdicts,
                answered({f.frame_id for f in first}),
                watch=task,
            )
            store.save_model(store.ref(RECIPE, ROLE, ROI), new_model)
            ids: set[str] = set()
            for round_ in range(60):  # keep the line running until the new version shows
                more = disc_frames(4, SIZE, seed=100 + round_, tag="after")
                ids |= {f.frame_id for f in more}
                await produce(kafka_broker.bootstrap, topics.frames, more)
                records = await read_until(
                    kafka_broker.bootstrap, topics.verdicts, answered(ids), watch=task
                )
                if any(v["model_version"] == new_model.version for v in parse(records)):
                    break
        return parse(await read_all(kafka_broker.bootstrap, topics.verdicts))

    verdicts = asyncio.run(scenario())
    versions = [v["model_version"] for v in sorted(verdicts, key=lambda v: v["source"]["offset"])]
    assert versions[:10] == [trained.version] * 10
    assert versions[-1] == new_model.version
    switch = versions.index(new_model.version)
    assert set(versions[switch:]) == {new_model.version}, "never back to the old version"
    assert all(v["verdict"] in ("OK", "NG") for v in verdicts)


def test_heatmaps_of_ng_frames_go_to_the_heatmap_topic(kafka_broker, make_topics, trained):
    topics = make_topics(partitions=1)
    settings = trained.settings(
        kafka_topic_heatmaps=topics.heatmaps, **topics.settings(kafka_broker.bootstrap)
    )
    frames = disc_frames(10, SIZE, seed=8, ng_every=5, tag="heat")
    ng = {f.frame_id for f in frames if f.expect == "NG"}
    assert len(ng) == 2

    async def scenario():
        async with running(trained.consumer(settings)) as task:
            await produce(kafka_broker.bootstrap, topics.frames, frames)
            await read_until(
                kafka_broker.bootstrap,
                topics.verdicts,
                answered({f.frame_id for f in frames}),
                watch=task,
            )
            return await read_until(kafka_broker.bootstrap, topics.heatmaps, answered(ng))

    heatmaps = asyncio.run(scenario())
    assert {r.key.decode() for r in heatmaps} == ng and len(heatmaps) == 2
    for record in heatmaps:
        assert record.value.startswith(b"\x89PNG")
        hdrs = dict(record.headers)
        assert hdrs["verdict"] == b"NG" and hdrs["frame_id"] == record.key


class GatedEngine:
    """The real engine, but each ``infer`` call announces itself and waits for ``release``
    (to stop the consumer while a batch is certainly in flight)."""

    def __init__(self, engine) -> None:
        import threading

        self.engine = engine
        self.started = threading.Event()
        self.release = threading.Event()

    def infer(self, items):
        self.started.set()
        self.release.wait(60)
        return self.engine.infer(items)

    def __getattr__(self, name):
        return getattr(self.engine, name)


@pytest.mark.parametrize("grace_s", [30.0, 0.0])
def test_stop_drains_the_in_flight_batch_within_the_grace_period(
    kafka_broker, make_topics, trained, grace_s
):
    """A stop request (SIGTERM) while a batch is being scored: with time left, the batch is
    finished, published and committed; past the grace period it is abandoned uncommitted
    (and redelivered to whoever consumes next)."""
    topics = make_topics(partitions=1)
    settings = trained.settings(
        shutdown_grace_s=grace_s, batch_max=8, **topics.settings(kafka_broker.bootstrap)
    )
    frames = disc_frames(8, SIZE, seed=10, tag="drain")
    gated = GatedEngine(trained.engine)
    consumer = FrameConsumer(settings, engine=gated, consumer_options=dict(GROUP_OPTIONS))
    boot = kafka_broker.bootstrap

    async def scenario():
        task = asyncio.create_task(consumer.run())
        await produce(boot, topics.frames, frames)
        while not gated.started.is_set() and not task.done():
            await asyncio.sleep(0.02)
        consumer.request_stop()  # what the SIGTERM handler does
        await asyncio.sleep(0.2)
        gated.release.set()
        await task
        return await read_all(boot, topics.verdicts), await committed(
            boot, topics.group, topics.frames
        )

    records, offsets = asyncio.run(scenario())
    if grace_s:
        assert 0 < len(records) <= len(frames), "the in-flight batch was finished"
        assert offsets == {0: len(records)}, "and committed, nothing beyond it"
    else:
        assert records == [] and offsets == {0: None}, "abandoned: nothing published"


def test_a_committed_offset_beyond_the_log_end_is_read_from_the_start(
    kafka_broker, make_topics, trained
):
    """A broker that lost or truncated its log keeps (or is given) a committed position
    past the new end: the consumer answers the log from its start instead of waiting there
    and skipping what arrives below it."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    topics = make_topics(partitions=1)
    boot = kafka_broker.bootstrap
    settings = trained.settings(**topics.settings(boot))
    frames = disc_frames(4, SIZE, seed=81, tag="lostlog")

    async def scenario():
        await produce(boot, topics.frames, frames)
        tp = TopicPartition(topics.frames, 0)
        stale = AIOKafkaConsumer(bootstrap_servers=boot, group_id=topics.group,
                                 enable_auto_commit=False)  # fmt: skip
        await stale.start()
        try:
            stale.assign([tp])
            await stale.commit({tp: 50})  # a position in a log the broker no longer has
        finally:
            await stale.stop()
        assert (await committed(boot, topics.group, topics.frames))[0] == 50
        async with running(trained.consumer(settings)) as task:
            return await read_until(boot, topics.verdicts,
                                    answered({f.frame_id for f in frames}), watch=task)  # fmt: skip

    verdicts = parse(asyncio.run(scenario()))
    assert sorted(v["frame_id"] for v in verdicts) == sorted(f.frame_id for f in frames)
    assert all(v["verdict"] == f.expect for v, f in zip(
        sorted(verdicts, key=lambda v: v["frame_id"]),
        sorted(frames, key=lambda f: f.frame_id), strict=True))  # fmt: skip


def test_no_commit_leaves_a_consumer_whose_membership_was_lost(kafka_broker, make_topics, trained):
    """B1: once the coordinator forgot the member, aiokafka resets it to generation -1, and
    a commit sent then is a stand-alone commit that the broker accepts for an empty group
    (after a broker restart that lost its log: positions of the old log). The consumer's
    guard refuses it at aiokafka's own send step, before any request (this broker happens
    to refuse it too while the group exists; after a restart it has no group). The guard's
    logic on its own: tests/consumers/test_runner_revoke.py."""
    from aiokafka import TopicPartition
    from aiokafka.errors import CommitFailedError

    topics = make_topics(partitions=1)
    boot = kafka_broker.bootstrap
    settings = trained.settings(**topics.settings(boot))
    frames = disc_frames(2, SIZE, seed=83, tag="guard")

    async def scenario() -> tuple[dict[int, int], dict[int, int]]:
        await produce(boot, topics.frames, frames)
        consumer = trained.consumer(settings)
        async with running(consumer) as task:
            await read_until(boot, topics.verdicts, answered({f.frame_id for f in frames}),
                             watch=task)  # fmt: skip
            await wait_all_committed(boot, topics.group, topics.frames, 30)
            before = await committed(boot, topics.group, topics.frames)
            client = consumer._consumer
            assert client is not None
            coordinator = client._coordinator
            tp = TopicPartition(topics.frames, 0)
            # the broker forgets the member (here: it leaves, so the group is empty, as
            # after a restart) and aiokafka resets it to generation -1 (as on
            # UnknownMemberId); the commit goes out before the rejoin completes
            await coordinator._maybe_leave_group()
            assert coordinator.generation < 0
            with pytest.raises(CommitFailedError, match="not a member of the group"):
                await client.commit({tp: 99})  # refused by the guard, before any request
            after = await committed(boot, topics.group, topics.frames)
        return before, after

    before, after = asyncio.run(scenario())
    assert before == {0: 2}
    assert after == before  # the stand-alone commit of 99 never reached the broker
