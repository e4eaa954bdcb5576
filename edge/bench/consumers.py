"""The Kafka side of ``bdi bench pipeline``: publish a set of frames as a camera would,
collect their verdicts as an MES would, and count what came back.

Correctness is judged per frame: a frame is *answered* when at least one verdict with its
``frame_id`` arrived; extra records with the same ``frame_id`` are *duplicates*; a verdict
is *wrong* when it is not ``NG`` for a defective frame or not ``OK`` for a good one
(``ERROR`` / ``NO_MODEL`` count as wrong). Times are ``time.monotonic()`` in this process:
the camera stamps a frame just before handing it to its producer, the reader stamps a
verdict when the fetch that carried it returns.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from edge.simulator.camera import Camera, CameraFrame, VerdictReader, latencies_ms


@dataclass(frozen=True)
class PhaseResult:
    """One set of frames sent and answered."""

    frames: int
    answered: int
    duplicates: int
    wrong: int
    window_s: float  # first send -> last verdict received (answered frames)
    publish_s: float  # first send -> last frame acknowledged by the broker
    latencies_ms: np.ndarray = field(repr=False)  # send -> first verdict, per answered frame
    # per verdict as the consumer reported it: (inference_ms of its batch, queue_ms)
    timings: list[tuple[float, float]] = field(default_factory=list, repr=False)

    @property
    def lost(self) -> int:
        return self.frames - self.answered

    @property
    def img_per_s(self) -> float:
        return self.answered / self.window_s if self.window_s > 0 else 0.0

    def percentile_ms(self, q: float) -> float | None:
        if not len(self.latencies_ms):
            return None
        return round(float(np.percentile(self.latencies_ms, q)), 1)


def expected_verdict(frame: CameraFrame) -> str:
    return "OK" if frame.defect is None else "NG"


def tally(
    frames: Sequence[CameraFrame], verdicts: dict[str, list[dict[str, Any]]]
) -> tuple[int, int, int]:
    """``(answered, duplicates, wrong)`` of ``frames`` among ``{frame_id: [verdict, ...]}``;
    the first verdict of a frame is the one judged (MES treats it as authoritative)."""
    answered = duplicates = wrong = 0
    for frame in frames:
        got = verdicts.get(frame.frame_id, [])
        if not got:
            continue
        answered += 1
        duplicates += len(got) - 1
        wrong += got[0].get("verdict") != expected_verdict(frame)
    return answered, duplicates, wrong


def misjudged(
    frames: Sequence[CameraFrame], verdicts: dict[str, list[dict[str, Any]]]
) -> list[dict[str, Any]]:
    """The answered frames whose first verdict is not the expected one, with what it said."""
    out = []
    for frame in frames:
        got = verdicts.get(frame.frame_id, [])
        if got and got[0].get("verdict") != expected_verdict(frame):
            first = got[0]
            out.append(
                {
                    "frame_id": frame.frame_id,
                    "expected": expected_verdict(frame),
                    "verdict": first.get("verdict"),
                    "score": first.get("score"),
                    "threshold": first.get("threshold"),
                    "error": first.get("error"),
                }
            )
    return out


class BenchError(ValueError):
    """The pipeline under test failed before anything was measured (``bdi: error: ...``)."""


def check_warm_up(
    warm: PhaseResult, wrong: list[dict[str, Any]], say: Callable[[str], None]
) -> None:
    """A warm-up frame unanswered, or answered ERROR / NO_MODEL, is a broken pipeline; one
    misjudged OK / NG is the small benchmark model's mistake (say so, measure on)."""
    failed = [w for w in wrong if w["verdict"] not in ("OK", "NG")]
    if warm.lost or failed:
        first = f"; first: {failed[0]}" if failed else ""
        raise BenchError(
            f"warm-up: {warm.lost} of {warm.frames} frames unanswered, {len(failed)} "
            f"answered ERROR or NO_MODEL{first}"
        )
    if wrong:
        say(f"warm-up: {len(wrong)} of {warm.frames} frames misjudged by the benchmark's "
            f"model (not counted), e.g. {wrong[0]}")  # fmt: skip


async def run_phase(
    camera: Camera,
    reader: VerdictReader,
    frames: Sequence[CameraFrame],
    *,
    fps: float | None = None,
    timeout_s: float = 120.0,
    check: Callable[[], None] = lambda: None,
) -> PhaseResult:
    """Publish ``frames`` (all at once, or paced at ``fps``) while collecting their verdicts,
    until every frame is answered or ``timeout_s`` passed. ``check`` runs between polls
    and may raise (a consumer process died)."""
    wanted = {f.frame_id for f in frames}
    publish = asyncio.create_task(camera.publish(frames, fps))
    published: list[float] = []
    publish.add_done_callback(lambda _: published.append(time.monotonic()))
    deadline = time.monotonic() + timeout_s
    try:
        while not wanted <= reader.verdicts.keys() and time.monotonic() < deadline:
            if publish.done():
                publish.result()  # a failed send fails the phase now, not at the deadline
            check()
            await reader.poll(timeout_ms=50)
        await asyncio.wait_for(publish, max(1.0, deadline - time.monotonic()))
    finally:
        if not publish.done():
            publish.cancel()
    ids = [f.frame_id for f in frames]
    first_sent = min(camera.sent_at[i] for i in ids)
    received = [reader.received_at[i] for i in ids if i in reader.received_at]
    answered, duplicates, wrong = tally(frames, reader.verdicts)
    timings = [
        (float(v["timings"]["inference_ms"]), float(v["timings"]["queue_ms"]))
        for i in ids
        for v in reader.verdicts.get(i, [])[:1]
    ]
    return PhaseResult(
        frames=len(frames),
        answered=answered,
        duplicates=duplicates,
        wrong=wrong,
        window_s=(max(received) - first_sent) if received else 0.0,
        publish_s=(published[0] if published else time.monotonic()) - first_sent,
        latencies_ms=latencies_ms(camera, reader, ids),
        timings=timings,
    )


def recount(
    result: PhaseResult, frames: Sequence[CameraFrame], reader: VerdictReader
) -> PhaseResult:
    """``result`` with its counts taken again (late duplicates that arrived since)."""
    answered, duplicates, wrong = tally(frames, reader.verdicts)
    return PhaseResult(
        result.frames, answered, duplicates, wrong, result.window_s, result.publish_s,
        result.latencies_ms, result.timings,
    )  # fmt: skip


def batch_profile(timings: Sequence[tuple[float, float]]) -> tuple[int, float]:
    """``(batches, inference seconds)`` the consumer(s) spent on a phase's frames.

    Verdicts carry their batch's ``inference_ms`` (rounded to µs): frames sharing a value
    shared a batch. Two batches timed to the same microsecond would merge; that only makes
    the estimate a little low."""
    per_batch = {ms for ms, _ in timings}
    return len(per_batch), sum(per_batch) / 1e3


def cpu_seconds(pids: Sequence[int]) -> list[float]:
    """CPU time (user + system, all threads) of ``pids`` and then of this process."""
    tick = os.sysconf("SC_CLK_TCK")
    out = []
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            out.append((int(fields[11]) + int(fields[12])) / tick)
        except (OSError, IndexError, ValueError):
            out.append(float("nan"))
    t = os.times()
    return [*out, t.user + t.system]


# --- the consumer processes ----------------------------------------------------------------
class ConsumerGroup:
    """Consumer processes (``bdi consume``) in their own sessions: Ctrl-C reaches the
    benchmark, which stops them (SIGTERM: they drain their batch and leave the group)."""

    def __init__(
        self,
        command: Sequence[str],
        env: dict[str, str],
        log_dir: Path,
        grace_s: float = 10.0,
        say: Callable[[str], None] = print,
    ) -> None:
        self.command = list(command)
        self.env = env
        self.grace_s = grace_s
        self.log_dir = log_dir
        self.say = say
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def start(self, n: int) -> None:
        for i in range(n):
            log = self.log_dir / f"consumer-{i + 1}.log"
            with log.open("wb") as out:
                proc = subprocess.Popen(
                    self.command,
                    env=self.env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            self.procs.append(proc)
            self.logs.append(log)

    def check(self) -> None:
        for proc, log in zip(self.procs, self.logs, strict=True):
            if proc.poll() is not None:
                tail = log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"bdi consume exited with {proc.returncode}:\n{tail}")

    def assignments(self) -> list[set[str]]:
        """Each member's current partitions, from its ``partitions assigned/revoked`` logs."""
        out = []
        for log in self.logs:
            owned: set[str] = set()
            for line in log.read_bytes().splitlines():
                try:
                    entry = orjson.loads(line)
                except orjson.JSONDecodeError:  # not ours, or a line still being written
                    continue
                if not isinstance(entry, dict):
                    continue
                if entry.get("msg") == "partitions assigned":
                    owned |= set(entry.get("partitions", []))
                elif entry.get("msg") == "partitions revoked":
                    owned -= set(entry.get("partitions", []))
            out.append(owned)
        return out

    async def wait_assigned(self, partitions: int, timeout_s: float) -> None:
        """Until the members own every partition between them, each exactly once."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.check()
            owned = self.assignments()
            members = min(len(owned), partitions)
            flat = [p for s in owned for p in s]
            if len(flat) == len(set(flat)) == partitions and sum(map(bool, owned)) == members:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"consumers did not get all partitions in time: {owned}")
            await asyncio.sleep(0.2)

    def stop(self) -> None:
        """SIGTERM (they drain their batch), then kill what is still running after the grace."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(self.grace_s + 5)
            except subprocess.TimeoutExpired:
                self.say(f"bdi consume {proc.pid} ignored SIGTERM; killed")
                proc.kill()
                proc.wait(5)
