"""Scale-out: several consumers in one group share the partitions, each frame answered once."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from consumers import FrameConsumer
from tests.helpers.images import SIZE
from tests.helpers.kafka import (
    WAIT_S,
    answered,
    disc_frames,
    parse,
    produce,
    read_all,
    read_until,
    running,
    wait_all_committed,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


async def _until_split(a: FrameConsumer, b: FrameConsumer, partitions: int) -> None:
    """Wait until the group settled with both members holding partitions."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        pa, pb = a.assignment, b.assignment
        if pa and pb and len(pa | pb) == partitions and not pa & pb:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"group never split: {a.assignment} / {b.assignment}")


def test_two_consumers_split_the_partitions_and_answer_every_frame_once(
    kafka_broker, make_topics, trained
):
    topics = make_topics(partitions=4)
    settings = trained.settings(**topics.settings(kafka_broker.bootstrap))
    frames = disc_frames(120, SIZE, seed=3)
    expected = {f.frame_id: f.expect for f in frames}

    async def scenario():
        a = trained.consumer(settings)
        b = trained.consumer(settings)
        async with contextlib.AsyncExitStack() as stack:
            task_a = await stack.enter_async_context(running(a))
            await stack.enter_async_context(running(b))
            await _until_split(a, b, 4)
            split = (set(a.assignment), set(b.assignment))
            await produce(kafka_broker.bootstrap, topics.frames, frames)
            await read_until(
                kafka_broker.bootstrap, topics.verdicts, answered(set(expected)), watch=task_a
            )
            await wait_all_committed(kafka_broker.bootstrap, topics.group, topics.frames)
            still = (set(a.assignment), set(b.assignment))
        return a, b, split, still, await read_all(kafka_broker.bootstrap, topics.verdicts)

    a, b, split, still, records = asyncio.run(scenario())
    verdicts = parse(records)
    assert split == still, "no rebalance while frames flowed"
    assert len(verdicts) == len(frames), "every frame answered exactly once"
    assert {v["frame_id"]: v["verdict"] for v in verdicts} == expected
    own_a = {tp.partition for tp in split[0]}
    own_b = {tp.partition for tp in split[1]}
    assert a.stats.partitions <= own_a and b.stats.partitions <= own_b
    assert a.stats.partitions and b.stats.partitions, "both members did work"
    assert sum(a.stats.verdicts.values()) + sum(b.stats.verdicts.values()) == len(frames)
    by_partition = {}
    for v in verdicts:
        by_partition.setdefault(v["source"]["partition"], 0)
        by_partition[v["source"]["partition"]] += 1
    assert sum(by_partition[p] for p in own_a) == sum(a.stats.verdicts.values())


def test_members_joining_and_leaving_mid_stream_lose_nothing(kafka_broker, make_topics, trained):
    """Rebalances while frames are in flight: revoked partitions' in-flight work is not
    committed, the new owner answers it again; every frame gets a verdict, duplicates are
    identical."""
    topics = make_topics(partitions=4)
    settings = trained.settings(batch_max=4, **topics.settings(kafka_broker.bootstrap))
    frames = disc_frames(160, SIZE, seed=9, tag="moving")
    expected = {f.frame_id: f.expect for f in frames}
    boot = kafka_broker.bootstrap

    async def trickle():
        for start in range(0, len(frames), 8):
            await produce(boot, topics.frames, frames[start : start + 8])
            await asyncio.sleep(0.05)

    async def scenario():
        a, b = trained.consumer(settings), trained.consumer(settings)
        async with running(a) as task_a:
            feeder = asyncio.create_task(trickle())
            await read_until(boot, topics.verdicts, lambda r: len(r) >= 10, watch=task_a)
            async with running(b):  # joins mid-stream: a's partitions are revoked
                await read_until(boot, topics.verdicts, lambda r: len(r) >= 60, watch=task_a)
            # b left mid-stream: its partitions move back to a
            await feeder
            await read_until(boot, topics.verdicts, answered(set(expected)), watch=task_a)
            offsets = await wait_all_committed(boot, topics.group, topics.frames)
        return a, b, offsets, await read_all(boot, topics.verdicts)

    a, b, offsets, records = asyncio.run(scenario())
    verdicts = parse(records)
    answers: dict[str, set[str]] = {}
    for v in verdicts:
        answers.setdefault(v["frame_id"], set()).add(v["verdict"])
    assert set(answers) == set(expected), "every frame answered"
    assert all(answers[f] == {expected[f]} for f in expected), "duplicates are identical"
    assert sum(o or 0 for o in offsets.values()) == len(frames)
    assert sum(b.stats.verdicts.values()) > 0, "the second member did take partitions"
