"""A real ``bdi consume`` process: SIGKILL mid-stream loses no verdict; SIGTERM drains."""

from __future__ import annotations

import asyncio
import signal
import time

import pytest

from tests.helpers.images import SIZE
from tests.helpers.kafka import (
    WAIT_S,
    answered,
    disc_frames,
    parse,
    produce,
    read_all,
    read_until,
    wait_all_committed,
)
from tests.helpers.processes import consume_process, env_settings

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


async def _verdict_count(bootstrap: str, topic: str, at_least: int, proc) -> int:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline and proc.poll() is None:
        records = await read_until(bootstrap, topic, lambda r: len(r) >= at_least, timeout_s=1)
        if len(records) >= at_least:
            return len(records)
    raise AssertionError(f"consumer produced fewer than {at_least} verdicts (rc={proc.poll()})")


def test_sigkill_mid_stream_then_restart_answers_every_frame(
    kafka_broker, make_topics, trained, tmp_path
):
    topics = make_topics(partitions=2)
    boot = kafka_broker.bootstrap
    # small batches so the kill lands while frames are still flowing
    cfg = env_settings(trained, topics, boot, batch_max=2, batch_wait_ms=0)
    frames = disc_frames(160, SIZE, seed=4)
    expected = {f.frame_id: f.expect for f in frames}
    log = tmp_path / "consume.log"

    async def scenario():
        first = consume_process(cfg, log)
        try:
            await produce(boot, topics.frames, frames[:100])
            seen = await _verdict_count(boot, topics.verdicts, 10, first)
            first.send_signal(signal.SIGKILL)  # no drain, no commit, no LeaveGroup
            first.wait(30)
            await produce(boot, topics.frames, frames[100:])
        finally:
            if first.poll() is None:
                first.kill()
        second = consume_process(cfg, log)
        try:
            await read_until(boot, topics.verdicts, answered(set(expected)))
            offsets = await wait_all_committed(boot, topics.group, topics.frames)
        finally:
            second.send_signal(signal.SIGTERM)
            second.wait(60)
        return seen, first.returncode, offsets, await read_all(boot, topics.verdicts)

    seen, rc, offsets, records = asyncio.run(scenario())
    verdicts = parse(records)
    assert rc == -signal.SIGKILL
    assert seen < len(frames), "killed before the stream ended"
    by_id: dict[str, set[tuple[str, str]]] = {}
    for record, v in zip(records, verdicts, strict=True):
        assert record.key == v["frame_id"].encode()
        by_id.setdefault(v["frame_id"], set()).add((v["frame_id"], v["verdict"]))
    assert set(by_id) == set(expected), "every frame has at least one verdict"
    for frame_id, answers in by_id.items():
        assert answers == {(frame_id, expected[frame_id])}, "duplicates are identical"
    assert sum(offsets.values()) == len(frames), log.read_text()[-3000:]


def test_sigterm_drains_commits_and_exits_zero(kafka_broker, make_topics, trained, tmp_path):
    topics = make_topics(partitions=1)
    boot = kafka_broker.bootstrap
    frames = disc_frames(40, SIZE, seed=5)
    log = tmp_path / "consume.log"

    async def scenario():
        proc = consume_process(env_settings(trained, topics, boot), log)
        try:
            await produce(boot, topics.frames, frames)
            await read_until(boot, topics.verdicts, answered({f.frame_id for f in frames}))
        finally:
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(60)
        return rc, await wait_all_committed(boot, topics.group, topics.frames, timeout_s=5)

    rc, offsets = asyncio.run(scenario())
    assert rc == 0, log.read_text()[-3000:]
    assert offsets == {0: len(frames)}
    lines = log.read_text().splitlines()
    assert any('"msg":"consumer stopped"' in line for line in lines)
