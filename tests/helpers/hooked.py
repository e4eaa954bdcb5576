"""A real ``bdi consume`` process with test hooks, for kill scenarios.

The hooks (``HOOK``, run inside the consumer process; not product code) write one marker
line to stderr at each point where a kill is interesting, and can hold the process there:

- ``scoring``: a batch is about to be scored (held ``score`` seconds): a kill lands mid-batch;
- ``commit held``: at-least-once, a batch's verdicts are acknowledged by the broker and its
  offsets not yet committed (held ``commit`` seconds);
- ``transaction held``: exactly-once, a partition's records are sent in its open transaction,
  the offsets not yet added and the transaction not committed (held ``commit`` seconds);
- ``revoking``: the group is rebalancing and this member is giving partitions up.

The process imports everything (torch, the engine) first, prints ``ready`` and waits for
``go <commit hold> <score hold>`` on stdin, so that a standby costs a kill nothing.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from tests.helpers.paths import REPO

SCORING, COMMIT_HELD, TRANSACTION_HELD, REVOKING = (
    "scoring", "commit held", "transaction held", "revoking"
)  # fmt: skip
MARKERS = (SCORING, COMMIT_HELD, TRANSACTION_HELD, REVOKING)
PREFIX = b"test-hook: "

HOOK = """
import asyncio, json, sys, time
import edge.cli  # the heavy imports (torch, the engine) happen before the go signal
from aiokafka import AIOKafkaProducer
from consumers.pipeline import BatchProcessor
from consumers.rebalance import Rebalancer
from consumers.runner import FrameConsumer

HOLD = {"commit": 0.0, "score": 0.0}

def mark(name):
    sys.stderr.write(json.dumps({"msg": "test-hook: " + name}) + "\\n")
    sys.stderr.flush()

_commit = FrameConsumer._commit
async def held_commit(self):
    # _handle() calls _commit() right after every verdict of the batch was acknowledged
    mark("commit held")
    await asyncio.sleep(HOLD["commit"])
    await _commit(self)
FrameConsumer._commit = held_commit

_offsets = AIOKafkaProducer.send_offsets_to_transaction
async def held_offsets(self, offsets, group_id):
    # the transaction's records are sent (acknowledged); offsets and commit still to come
    mark("transaction held")
    await asyncio.sleep(HOLD["commit"])
    return await _offsets(self, offsets, group_id)
AIOKafkaProducer.send_offsets_to_transaction = held_offsets

_infer = BatchProcessor.infer
def held_infer(self, batch):
    mark("scoring")
    time.sleep(HOLD["score"])
    return _infer(self, batch)
BatchProcessor.infer = held_infer

_revoked = Rebalancer.on_partitions_revoked
async def marked_revoked(self, revoked):
    if revoked:
        mark("revoking")
    await _revoked(self, revoked)
Rebalancer.on_partitions_revoked = marked_revoked

print("ready", flush=True)
command = sys.stdin.readline().split()
if not command or command[0] != "go":
    sys.exit(3)
HOLD["commit"], HOLD["score"] = float(command[1]), float(command[2])
sys.exit(edge.cli.main(["consume", *sys.argv[1:]]))
"""


class HookedConsumer:
    """``bdi consume`` (through ``edge.cli.main``) with the hooks, waiting for "go"."""

    def __init__(self, settings: dict[str, object], log: Path, options: dict[str, object]) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BDI_", "BRAKEDISC_"))}
        env.update({f"BDI_{k.upper()}": str(v) for k, v in settings.items()})
        args = [f"--consumer-option={k}={v}" for k, v in options.items()]
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOOK, *args],
            cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        self.markers: Counter[str] = Counter()
        self._log = log
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stderr is not None
        with self._log.open("ab") as out:
            for line in self.proc.stderr:
                out.write(line)
                # the line may arrive re-wrapped as a JSON log record (quotes escaped)
                for name in MARKERS:
                    if PREFIX + name.encode() in line:
                        self.markers[name] += 1

    async def go(self, commit_hold_s: float, score_hold_s: float = 0.0) -> None:
        assert self.proc.stdout is not None and self.proc.stdin is not None
        ready = await asyncio.to_thread(self.proc.stdout.readline)
        assert ready == b"ready\n", self._log.read_text()[-2000:]
        self.proc.stdin.write(f"go {commit_hold_s} {score_hold_s}\n".encode())
        self.proc.stdin.flush()

    async def wait_marker(self, name: str, n: int, timeout_s: float = 120.0) -> None:
        """Until the ``n``-th ``name`` marker (counted since the process started)."""
        deadline = time.monotonic() + timeout_s
        while self.markers[name] < n:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"no {name!r} marker #{n} (rc={self.proc.poll()}): "
                    f"{self._log.read_text()[-2000:]}"
                )
            await asyncio.sleep(0.005)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        assert self.proc.wait(30) == -signal.SIGKILL

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)

    def reap(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
