"""S1: a real ``bdi consume`` process is SIGKILLed between publishing a batch's verdicts and
committing its offsets, 20 times across one stream.

The kill is made to land in that window by a test hook run inside the consumer process
(``HOOK`` below, not product code): it logs a line once a batch's verdicts are acknowledged
by the broker and holds that batch's commit for ``HOLD_S``; the test kills the process at
the k-th such line, k drawn from 1-3 each trial, so the kills are spread across the stream.
After every kill it checks that no committed offset lies above a frame without a verdict,
and that the killed batch's verdicts were published but not committed (the window was hit).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.helpers.images import SIZE
from tests.helpers.kafka import committed, disc_frames, produce, wait_all_committed
from tests.helpers.probes import TopicLog, differing_duplicates, early_commits
from tests.helpers.processes import env_settings

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
TRIALS = 20
FRAMES = 80
HOLD_S = 0.4
# Tansu answers a JoinGroup only once the killed member's session expired: short sessions
# keep 20 kill/restart cycles within a minute or two (production default: 10 s)
GROUP = {
    "session_timeout_ms": 1000,
    "heartbeat_interval_ms": 200,
    "rebalance_timeout_ms": 1000,
}
MARKER = b"test-hook: verdicts acknowledged, commit held"

HOOK = f"""
import asyncio, json, sys
import edge.cli  # the heavy imports (torch, the engine) happen before the go signal
from consumers.runner import FrameConsumer

_commit = FrameConsumer._commit
HOLD = [0.0]

async def held_commit(self):
    # _handle() calls _commit() right after every verdict of the batch was acknowledged
    sys.stderr.write(json.dumps({{"msg": "{MARKER.decode()}", "batches": self.stats.batches}}))
    sys.stderr.write("\\n")
    sys.stderr.flush()
    await asyncio.sleep(HOLD[0])
    await _commit(self)

FrameConsumer._commit = held_commit
print("ready", flush=True)
command = sys.stdin.readline().split()
if not command or command[0] != "go":
    sys.exit(3)
HOLD[0] = float(command[1])
sys.exit(edge.cli.main(["consume", *sys.argv[1:]]))
"""


class HookedConsumer:
    """``bdi consume`` (through ``edge.cli.main``) with the commit hook, waiting for "go"."""

    def __init__(self, settings: dict[str, object], log: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BDI_", "BRAKEDISC_"))}
        env.update({f"BDI_{k.upper()}": str(v) for k, v in settings.items()})
        options = [f"--consumer-option={k}={v}" for k, v in GROUP.items()]
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOOK, *options],
            cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        self.markers = 0
        self._log = log
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stderr is not None
        with self._log.open("ab") as out:
            for line in self.proc.stderr:
                out.write(line)
                if MARKER in line:
                    self.markers += 1

    async def go(self, hold_s: float) -> None:
        assert self.proc.stdout is not None and self.proc.stdin is not None
        ready = await asyncio.to_thread(self.proc.stdout.readline)
        assert ready == b"ready\n", self._log.read_text()[-2000:]
        self.proc.stdin.write(f"go {hold_s}\n".encode())
        self.proc.stdin.flush()

    async def wait_markers(self, n: int, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while self.markers < n:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"no {n}th commit (rc={self.proc.poll()}): {self._log.read_text()[-2000:]}"
                )
            await asyncio.sleep(0.005)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        assert self.proc.wait(30) == -signal.SIGKILL

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)


def test_sigkill_between_publish_and_commit_20_times(
    kafka_broker, make_topics, trained, tmp_path, report
):
    topics = make_topics(partitions=2)
    boot = kafka_broker.bootstrap
    cfg = env_settings(trained, topics, boot, batch_max=4, batch_wait_ms=20)
    frames = disc_frames(FRAMES, SIZE, seed=11, tag="kill")
    expected = {f.frame_id: f.expect for f in frames}
    log = tmp_path / "consume.log"
    rng = random.Random(20261127)
    trials: list[dict[str, int]] = []

    spawned: list[HookedConsumer] = []

    def spawn() -> HookedConsumer:
        spawned.append(HookedConsumer(cfg, log))
        return spawned[-1]

    async def scenario() -> TopicLog:
        await produce(boot, topics.frames, frames)
        mes = await TopicLog(boot, topics.verdicts).start()
        standby = spawn()
        try:
            for _ in range(TRIALS):
                current = standby
                await current.go(HOLD_S)
                standby = spawn()  # imports while this trial runs
                k = rng.randint(1, 3)
                await current.wait_markers(k)
                before = len(mes.values)
                current.kill()
                commits = await committed(boot, topics.group, topics.frames)
                await mes.sync()
                fresh = mes.values[before:]
                held = [
                    v for v in fresh
                    if v["source"]["offset"] >= (commits[v["source"]["partition"]] or 0)
                ]  # fmt: skip
                early = early_commits(commits, mes.answered_offsets())
                position = sum(c or 0 for c in commits.values())
                trials.append({"k": k, "held": len(held), "early": len(early), "at": position})
            final = standby
            await final.go(0.0)
            missing = await mes.wait_for(set(expected), timeout_s=120)
            assert not missing, f"{len(missing)} frames never answered"
            await wait_all_committed(boot, topics.group, topics.frames)
            assert final.stop() == 0, log.read_text()[-3000:]
            await mes.sync()
            return mes
        finally:
            for consumer in spawned:
                if consumer.proc.poll() is None:
                    consumer.proc.kill()
                    consumer.proc.wait(30)
            await mes.stop()

    mes = asyncio.run(scenario())
    by_id = mes.by_id()
    offsets = asyncio.run(committed(boot, topics.group, topics.frames))
    lost = set(expected) - set(by_id)
    differing = differing_duplicates(by_id)
    wrong = [f for f, vs in by_id.items() if {v["verdict"] for v in vs} != {expected[f]}]
    early = sum(t["early"] for t in trials)
    in_window = sum(1 for t in trials if t["held"] > 0)
    report(
        "S1", holds=not (lost or differing or wrong or early) and in_window == TRIALS,
        trials=TRIALS, frames=FRAMES, verdict_records=len(mes.values),
        duplicates=len(mes.values) - len(by_id), lost=len(lost),
        differing_duplicates=len(differing),
        wrong_verdicts=len(wrong), early_commits=early, kills_in_window=in_window,
        kill_positions=[t["at"] for t in trials],
    )  # fmt: skip
    assert not lost, sorted(lost)[:10]
    assert not differing, differing[:10]
    assert not wrong, wrong[:10]
    assert early == 0, trials
    assert in_window == TRIALS, trials  # every kill landed between publication and commit
    assert sum(v or 0 for v in offsets.values()) == FRAMES
