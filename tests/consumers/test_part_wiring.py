"""The part aggregator inside the frame consumer, through the real broker: one part record
per part with the right verdict, deadlines that fire without more traffic, redeliveries
and late frames, the state restored from the changelog by the next owner, and the
exactly-once variant read with read_committed."""

from __future__ import annotations

import asyncio
import logging
import shutil

import orjson
import pytest
from aiokafka.errors import KafkaTimeoutError

from consumers.topics import changelog_topic, ensure_changelog, ensure_topics
from edge.simulator.discs import encode_png, make_ng, make_ok
from store import ModelStore
from store.plans import PlanRoi
from tests.helpers.images import SIZE
from tests.helpers.kafka import (
    RECIPE,
    ROI,
    ROLE,
    FrameSpec,
    headers,
    parse,
    produce,
    read_all,
    read_until,
    running,
    wait_all_committed,
)

pytestmark = pytest.mark.kafka

ROLES = (ROLE, "Master2", "Master3")  # the plan: one ROI per role, each with a model


def frame(part: str, role: str, *, ng: bool = False, seed: int = 0, fid: str | None = None):
    disc = make_ng(50_000 + seed, SIZE) if ng else make_ok(20_000 + seed, SIZE)
    frame_id = fid or f"{part}-{role}"
    meta = headers(frame_id, role_id=role, part_id=part, mm_per_px="0.1")
    return FrameSpec(frame_id, encode_png(disc.image), meta, part.encode())


def part_frames(part: str, roles=ROLES, ng_role: str | None = None, seed: int = 0):
    return [frame(part, r, ng=r == ng_role, seed=seed + i) for i, r in enumerate(roles)]


@pytest.fixture
def plant(trained, tmp_path):
    """A store with the trained model under each role of the plan, and the plan."""

    def make(deadline_ms: int):
        models = tmp_path / "models"
        shutil.copytree(trained.models_dir, models)
        store = ModelStore(trained.settings(models_dir=models))
        model = store.load_model(store.ref(RECIPE, ROLE, ROI))
        for role in ROLES[1:]:
            store.save_model(store.ref(RECIPE, role, ROI), model)
        rois = [PlanRoi(role, ROI) for role in ROLES]
        plan = store.save_plan(RECIPE, rois, deadline_ms).plan
        return models, plan

    return make


def part_records(records, schema="bdi.part/1"):
    return [v for v in parse(records) if v["schema"] == schema]


def decided(parts: set[str], late: int = 0):
    """``done`` predicate for the parts topic: every part has a record, and ``late``
    late records came."""

    def done(records) -> bool:
        seen = {v["part_id"] for v in part_records(records)}
        return parts <= seen and len(part_records(records, "bdi.part_late/1")) >= late

    return done


@pytest.mark.parametrize("exactly_once", [False, True], ids=["at-least-once", "exactly-once"])
def test_one_record_per_part_deadline_without_traffic_duplicates_and_late_frames(
    kafka_broker, make_topics, trained, plant, exactly_once
):
    if exactly_once and not kafka_broker.transactions:
        pytest.skip("the test broker has no transactions")
    topics = make_topics(partitions=2)
    parts_topic = f"{topics.frames}.parts"
    asyncio.run(ensure_topics(kafka_broker.bootstrap, {parts_topic: 2}))
    models, plan = plant(deadline_ms=1500)
    settings = trained.settings(
        models_dir=models,
        kafka_exactly_once=exactly_once,
        kafka_topic_parts=parts_topic,
        **topics.settings(kafka_broker.bootstrap),
    )
    isolation = "read_committed" if exactly_once else "read_uncommitted"
    first = [
        *part_frames("P-ok", seed=0),
        *part_frames("P-ng", ng_role="Master2", seed=10),
        *part_frames("P-miss", roles=ROLES[:2], seed=20),  # Master3 never sent
    ]
    first.append(first[0])  # P-ok's first frame sent twice (a camera retry)
    late = frame("P-ng", "Master3", seed=30, fid="P-ng-Master3-retake")
    boot = kafka_broker.bootstrap

    async def scenario():
        consumer = trained.consumer(settings)
        async with running(consumer, assigned=2) as task:
            await produce(boot, topics.frames, first)
            await read_until(boot, parts_topic, decided({"P-ng"}), watch=task,
                             isolation_level=isolation)  # fmt: skip
            await produce(boot, topics.frames, [late, first[0]])  # late, and redelivered again
            await read_until(boot, parts_topic, decided({"P-ok", "P-ng", "P-miss"}, late=1),
                             watch=task, isolation_level=isolation)  # fmt: skip
            await wait_all_committed(boot, topics.group, topics.frames)
            await asyncio.sleep(2.0)  # a second record would come now
        records = await read_until(boot, parts_topic, lambda r: False, timeout_s=3,
                                   isolation_level=isolation)  # fmt: skip
        changelog = await read_all(boot, changelog_topic(settings))
        return consumer, records, changelog

    consumer, records, changelog = asyncio.run(scenario())
    parts = {v["part_id"]: v for v in part_records(records)}
    assert len(part_records(records)) == 3, "exactly one record per part"
    assert parts["P-ok"]["verdict"] == "OK", parts["P-ok"]["reason"]
    assert [f["frame_id"] for f in parts["P-ok"]["frames"]].count("P-ok-Master1") == 1
    assert parts["P-ng"]["verdict"] == "NG"
    assert parts["P-ng"]["reason"] == f"NG on Master2/{ROI}"
    miss = parts["P-miss"]
    assert miss["verdict"] == "INCOMPLETE"
    assert miss["missing"] == [{"role_id": "Master3", "roi_id": ROI, "required": True}]
    assert miss["decided_at"] > miss["last_frame_at"]
    for v in parts.values():
        assert v["plan_version"] == plan.version and v["recipe_id"] == RECIPE
        assert all(f["model_version"] == trained.version for f in v["frames"])
    [late_record] = part_records(records, "bdi.part_late/1")
    assert late_record["part_id"] == "P-ng" and late_record["part_verdict"] == "NG"
    assert late_record["frame"]["frame_id"] == "P-ng-Master3-retake"
    for r in records:  # keyed by part, routing headers
        head = dict(r.headers)
        assert r.key == head["part_id"]
        assert head["schema"] in (b"bdi.part/1", b"bdi.part_late/1")
    assert changelog, "every change of state is in the changelog"
    for r in changelog:  # the state of frames partition p lives in changelog partition p
        assert r.partition == _frames_partition(r.key, 2)
        assert r.value is None or orjson.loads(r.value)["schema"] == "bdi.part_state/1"
    assert consumer.stats.parts == {"OK": 1, "NG": 1, "INCOMPLETE": 1, "late": 1}


def _frames_partition(key: bytes, partitions: int) -> int:
    from aiokafka.partitioner import murmur2

    return (murmur2(key) & 0x7FFFFFFF) % partitions


@pytest.mark.parametrize("exactly_once", [False, True], ids=["at-least-once", "exactly-once"])
def test_the_next_owner_restores_open_parts_from_the_changelog(
    kafka_broker, make_topics, trained, plant, caplog, exactly_once
):
    """Stopped with parts open; the next consumer of the group reads their state back: the
    frames it gets complete parts the first one opened, and parts never completed are
    INCOMPLETE at their deadline. Each part decided exactly once."""
    if exactly_once and not kafka_broker.transactions:
        pytest.skip("the test broker has no transactions")
    topics = make_topics(partitions=2)
    parts_topic = f"{topics.frames}.parts"
    asyncio.run(ensure_topics(kafka_broker.bootstrap, {parts_topic: 2}))
    models, _ = plant(deadline_ms=10_000)
    settings = trained.settings(
        models_dir=models,
        kafka_exactly_once=exactly_once,
        kafka_topic_parts=parts_topic,
        **topics.settings(kafka_broker.bootstrap),
    )
    isolation = "read_committed" if exactly_once else "read_uncommitted"
    names = [f"R-{i}" for i in range(6)]
    before = [f for i, p in enumerate(names) for f in part_frames(p, ROLES[:2], seed=10 * i)]
    after = [frame(p, ROLES[2], seed=10 * i + 5) for i, p in enumerate(names[:4])]
    boot = kafka_broker.bootstrap

    async def scenario():
        first = trained.consumer(settings)
        async with running(first, assigned=2):
            await produce(boot, topics.frames, before)
            await read_until(boot, topics.verdicts, lambda r: len(r) >= len(before),
                             isolation_level=isolation)  # fmt: skip
            await wait_all_committed(boot, topics.group, topics.frames)
        assert first.stats.parts == {}, "nothing decided before the stop"
        second = trained.consumer(settings)
        with caplog.at_level(logging.INFO, logger="consumers.part_state"):
            async with running(second, assigned=2) as task:
                await produce(boot, topics.frames, after)
                await read_until(boot, parts_topic, decided(set(names)), watch=task,
                                 isolation_level=isolation)  # fmt: skip
                await asyncio.sleep(1.0)
        return await read_until(boot, parts_topic, lambda r: False, timeout_s=3,
                                isolation_level=isolation)  # fmt: skip

    records = asyncio.run(scenario())
    parts = part_records(records)
    restored = [r for r in caplog.records if r.getMessage() == "part state restored"]
    seen = [(r.partition, r.parts_open, r.records_read) for r in restored]
    assert sorted(v["part_id"] for v in parts) == names, f"each part exactly once; {seen}"
    verdicts = {v["part_id"]: v["verdict"] for v in parts}
    assert verdicts == {**dict.fromkeys(names[:4], "OK"), **dict.fromkeys(names[4:], "INCOMPLETE")}
    for v in parts:
        assert len(v["frames"]) == (3 if v["part_id"] in names[:4] else 2)
    assert sum(r.parts_open for r in restored) == 6
    assert sum(r.records_read for r in restored) >= 12


def test_a_changelog_with_fewer_partitions_than_the_frames_is_a_clear_start_error(
    kafka_broker, make_topics
):
    from consumers.errors import ConsumerError

    topics = make_topics(partitions=2)
    changelog = f"{topics.group}.parts.changelog"
    boot = kafka_broker.bootstrap
    asyncio.run(ensure_topics(boot, {changelog: 1}))
    with pytest.raises(ConsumerError, match=r"has 1 partition\(s\), fewer than the 2"):
        asyncio.run(ensure_changelog(boot, topics.frames, changelog))
    other = f"{topics.group}.other.changelog"
    assert asyncio.run(ensure_changelog(boot, topics.frames, other)) == 2, "created"
    assert asyncio.run(ensure_changelog(boot, topics.frames, other)) == 2, "then found"


class _Producer:
    """Acknowledges every record but the first send of ``fail_once``; logs the order."""

    def __init__(self, fail_once: bytes) -> None:
        self.fail_once = fail_once
        self.sent: list[bytes] = []

    async def send(self, topic, value=None, key=None, partition=None, headers=None):
        future = asyncio.get_running_loop().create_future()
        if value == self.fail_once:
            self.fail_once = b""
            future.set_exception(KafkaTimeoutError())
        else:
            self.sent.append(value)
            future.set_result(None)
        return future


def test_state_records_go_last_in_batch_order_once_every_other_record_is_acknowledged():
    from consumers.outcome import Outcome, OutRecord
    from consumers.publish import Publisher

    def out(name: str, *extra: OutRecord) -> Outcome:
        records = [OutRecord("verdicts", name.encode(), name.encode()), *extra]
        verdict = type("V", (), {"frame_id": name})()
        return Outcome(frame=None, verdict=verdict, records=records)  # type: ignore[arg-type]

    a = out("a", OutRecord("parts", b"P", b"part-P"), OutRecord("cl", b"P", b"s1", state=True))
    b = out("b", OutRecord("cl", b"P", b"s2", state=True))
    producer = _Producer(fail_once=b"b")
    delivered: list[str] = []
    publisher = Publisher(producer, attempts=3, backoff_s=0)  # type: ignore[arg-type]
    asyncio.run(publisher.publish([a, b], lambda o: delivered.append(o.verdict.frame_id)))
    assert producer.sent[-2:] == [b"s1", b"s2"], "the state last, in the batch's order"
    assert set(producer.sent[:-2]) == {b"a", b"part-P", b"b"}
    assert sorted(delivered) == ["a", "b"]
