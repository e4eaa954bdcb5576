"""A real ``bdi consume`` process: SIGKILL mid-stream loses no verdict; SIGTERM drains."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import TINY
from tests.consumers.conftest import ENGINE_SETTINGS, GROUP_OPTIONS, SIZE
from tests.consumers.kafka_io import (
    WAIT_S,
    answered,
    disc_frames,
    parse,
    produce,
    read_all,
    read_until,
    wait_all_committed,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def consume_process(env_settings: dict[str, object], log: Path) -> subprocess.Popen[bytes]:
    """``python -m edge.cli consume`` with ``BDI_*`` from ``env_settings`` only."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BDI_", "BRAKEDISC_"))}
    env.update({f"BDI_{k.upper()}": str(v) for k, v in env_settings.items()})
    with log.open("ab") as out:
        options = [f"--consumer-option={k}={v}" for k, v in GROUP_OPTIONS.items()]
        cmd = [sys.executable, "-m", "edge.cli", "consume", *options]
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)


def env_settings(trained, topics, bootstrap: str, **extra: object) -> dict[str, object]:
    return {
        **TINY,
        **ENGINE_SETTINGS,
        "models_dir": trained.models_dir,
        **topics.settings(bootstrap),
        **extra,
    }


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
