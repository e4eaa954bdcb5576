"""The trace feed over a real broker: frames, verdicts and part records in, rows and crops
out; redelivered records change nothing; a ``bdi trace`` SIGKILLed mid-way and restarted
loses and doubles no row."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from consumers.topics import ensure_topics
from consumers.trace_feed import TraceFeed, parts_topic
from store.trace.crops import sampled
from store.trace.db import Database, target
from store.trace.schema import migrate
from tests.helpers.kafka import WAIT_S, FrameSpec, produce, wait_all_committed
from tests.helpers.paths import REPO
from tests.helpers.settings import tiny_settings

pytestmark = [pytest.mark.kafka]
OK_SAMPLE = 5


def iso(i: int) -> str:
    return f"2026-11-27T16:{i // 60 % 60:02d}:{i % 60:02d}.000+00:00"


class Line:
    """A synthetic line: ``parts`` parts of three ROIs each; every 7th part has an NG ROI,
    every 11th is INCOMPLETE (its third frame never sent), the rest OK; the first part gets
    one late frame. Frames, verdicts and part records as the line's services publish them."""

    def __init__(self, tag: str, parts: int) -> None:
        self.frames: list[FrameSpec] = []
        self.verdicts: list[FrameSpec] = []
        self.records: list[FrameSpec] = []
        self.part_verdict: dict[str, str] = {}
        self.frame_verdict: dict[str, str] = {}
        self.frame_part: dict[str, str] = {}
        for p in range(parts):
            part_id = f"{tag}-P{p:03d}"
            incomplete, ng = p % 11 == 10, p % 7 == 6
            docs = []
            for r in range(2 if incomplete else 3):
                frame_id = f"{part_id}-r{r}"
                v = "NG" if ng and r == 1 else "OK"
                docs.append(self._frame(part_id, frame_id, f"roi{r}", v, p))
            verdict = "INCOMPLETE" if incomplete else "NG" if ng else "OK"
            self._part(part_id, verdict, docs, p)
        late = self._frame(f"{tag}-P000", f"{tag}-P000-late", "roi1", "OK", 0)
        self.records.append(self._spec(f"{tag}-P000", {
            "schema": "bdi.part_late/1", "part_id": f"{tag}-P000", "frame": late,
        }))  # fmt: skip

    @staticmethod
    def _spec(key: str, doc: dict[str, Any]) -> FrameSpec:
        return FrameSpec(key, orjson.dumps(doc), [], key.encode())

    def _frame(self, part_id: str, frame_id: str, roi: str, v: str, i: int) -> dict[str, Any]:
        body = hashlib.sha256(frame_id.encode()).digest() * 40
        image = b"\x89PNG\r\n\x1a\n" + body
        headers = [(k, x.encode()) for k, x in (("frame_id", frame_id), ("recipe_id", "disc-a"),
                   ("role_id", "Master1"), ("roi_id", roi), ("part_id", part_id))]  # fmt: skip
        self.frames.append(FrameSpec(frame_id, image, headers, part_id.encode()))
        doc = {
            "schema": "bdi.verdict/1", "frame_id": frame_id, "part_id": part_id,
            "recipe_id": "disc-a", "role_id": "Master1", "roi_id": roi, "verdict": v,
            "score": 3.0 if v == "NG" else 1.0, "threshold": 2.0, "regions": [],
            "model_version": "m1", "produced_at": iso(i),
            "source": {"topic": "bdi.frames", "partition": 0, "offset": i},
        }  # fmt: skip
        self.verdicts.append(self._spec(frame_id, doc))
        self.frame_verdict[frame_id] = v
        self.frame_part[frame_id] = part_id
        return doc

    def _part(self, part_id: str, v: str, docs: list[dict[str, Any]], i: int) -> None:
        self.part_verdict[part_id] = v
        frames = [{k: d[k] for k in ("frame_id", "role_id", "roi_id", "verdict", "score",
                                     "threshold", "model_version")} for d in docs]  # fmt: skip
        self.records.append(self._spec(part_id, {
            "schema": "bdi.part/1", "part_id": part_id, "recipe_id": "disc-a", "verdict": v,
            "frames": frames, "missing": ["Master1/roi2"] if v == "INCOMPLETE" else [],
            "unexpected": [], "plan_version": "p1", "first_frame_at": iso(i),
            "last_frame_at": iso(i), "decided_at": iso(i + 5), "reason": v.lower(),
        }))  # fmt: skip

    def kept(self) -> set[str]:
        """The frames whose crop the trace must keep."""
        out = set()
        for frame_id, v in self.frame_verdict.items():
            bad_part = self.part_verdict[self.frame_part[frame_id]] != "OK"
            if v != "OK" or bad_part or sampled(frame_id, OK_SAMPLE):
                out.add(frame_id)
        return out


def _settings(make_topics, kafka_broker, tmp_path: Path, db_url: str | None) -> dict[str, Any]:
    topics = make_topics(partitions=2)
    values: dict[str, Any] = {
        **topics.settings(kafka_broker.bootstrap),
        "models_dir": tmp_path / "models",
        "trace_group": f"{topics.group}-trace",
        "trace_ok_sample": OK_SAMPLE,
        "trace_db_url": db_url or "",
        "kafka_topic_parts": f"{topics.frames}.parts",
    }
    parts = parts_topic(tiny_settings(**values))  # bdi.parts until the setting exists
    asyncio.run(ensure_topics(kafka_broker.bootstrap, {parts: 2}))
    return values


async def _publish(bootstrap: str, settings: Any, line: Line, twice: bool = False) -> None:
    for topic, specs in (
        (settings.kafka_topic_frames, line.frames),
        (settings.kafka_topic_verdicts, line.verdicts),
        (parts_topic(settings), line.records),
    ):
        await produce(bootstrap, topic, specs + (specs[::3] if twice else []))


async def _all_committed(bootstrap: str, settings: Any) -> None:
    """Until the trace group has committed every record of its three topics."""
    for topic in (settings.kafka_topic_frames, settings.kafka_topic_verdicts,
                  parts_topic(settings)):  # fmt: skip
        await wait_all_committed(bootstrap, settings.trace_group, topic)


def _open(settings: Any) -> Database:
    """The feed's database, for reading (its tables made now if the feed has not yet)."""
    db = Database.open(target(settings.trace_db_url, settings.models_dir))
    migrate(db)
    return db


def _rows(db: Database, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    return db.read(sql, params)


def _check(db: Database, models: Path, line: Line, tag: str) -> None:
    like = (f"{tag}-%",)
    verdicts = _rows(db, "SELECT frame_id, verdict FROM verdicts WHERE frame_id LIKE ?", like)
    assert dict(verdicts) == line.frame_verdict and len(verdicts) == len(line.frame_verdict)
    parts = _rows(db, "SELECT part_id, verdict FROM parts WHERE part_id LIKE ?", like)
    assert dict(parts) == line.part_verdict and len(parts) == len(line.part_verdict)
    n_frames = _rows(db, "SELECT COUNT(*) FROM part_frames WHERE part_id LIKE ?", like)[0][0]
    assert n_frames == len(line.frame_verdict) - 1  # all but the late frame
    late = _rows(db, "SELECT frame_id FROM late_frames WHERE part_id LIKE ?", like)
    assert late == [(f"{tag}-P000-late",)]
    kept = _rows(
        db,
        "SELECT f.frame_id, c.path FROM frame_images f JOIN crops c ON c.sha256 = f.sha256 "
        "WHERE f.frame_id LIKE ?",
        like,
    )
    assert {r[0] for r in kept} == line.kept()
    files = {p.relative_to(models / "trace").as_posix()
             for p in (models / "trace" / "crops").rglob("*") if p.is_file()}  # fmt: skip
    every = _rows(db, "SELECT c.path FROM frame_images f JOIN crops c ON c.sha256 = f.sha256")
    assert files == {r[0] for r in every}, "a file for every kept crop, and no other file"


def _wait(db: Database, done, timeout_s: float = WAIT_S, proc=None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if done(db):
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"bdi trace exited {proc.returncode}")
        time.sleep(0.2)
    raise AssertionError("the trace store did not get there in time")


def _all_parts(n: int, tag: str):
    def done(db: Database) -> bool:
        sql = "SELECT COUNT(*) FROM parts WHERE part_id LIKE ?"
        return _rows(db, sql, (f"{tag}-%",))[0][0] >= n

    return done


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_the_feed_stores_rows_and_crops_once(kafka_broker, make_topics, tmp_path, request, kind):
    url = request.getfixturevalue("postgres").new_database() if kind == "postgresql" else None
    values = _settings(make_topics, kafka_broker, tmp_path, url)
    settings = tiny_settings(**values)
    line = Line("in", 30)

    async def scenario() -> None:
        await _publish(kafka_broker.bootstrap, settings, line, twice=True)
        feed = TraceFeed(settings)
        task = asyncio.create_task(feed.run())
        db = _open(settings)
        try:
            deadline = time.monotonic() + WAIT_S
            while not _all_parts(30, "in")(db) and not task.done():
                assert time.monotonic() < deadline, "not stored in time"
                await asyncio.sleep(0.2)
            await _all_committed(kafka_broker.bootstrap, settings)
        finally:
            feed.request_stop()
            await task
        _check(db, settings.models_dir, line, "in")
        assert feed.totals.ignored > 0 and feed.totals.conflicts == 0
        db.close()

    asyncio.run(scenario())


def _trace_process(values: dict[str, Any], log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BDI_", "BRAKEDISC_"))}
    env.update({f"BDI_{k.upper()}": str(v) for k, v in values.items()})
    env["BDI_ENV_FILE"] = os.devnull
    cmd = [sys.executable, "-m", "edge.cli", "trace", "--consumer-option=max_poll_records=15",
           "--consumer-option=session_timeout_ms=6000"]  # fmt: skip
    with log.open("ab") as out:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_sigkill_mid_way_then_restart_loses_and_doubles_nothing(
    kafka_broker, make_topics, tmp_path, request, kind
):
    url = request.getfixturevalue("postgres").new_database() if kind == "postgresql" else None
    values = _settings(make_topics, kafka_broker, tmp_path, url)
    settings = tiny_settings(**values)
    tag = f"k{kind[0]}"
    line = Line(tag, 80)
    asyncio.run(_publish(kafka_broker.bootstrap, settings, line, twice=True))
    log = tmp_path / "trace.log"
    first = _trace_process(values, log)
    try:
        db = _open(settings)
        _wait(db, lambda d: _rows(d, "SELECT COUNT(*) FROM verdicts")[0][0] >= 20, proc=first)
        sql = "SELECT COUNT(*) FROM verdicts WHERE frame_id LIKE ?"
        stored = _rows(db, sql, (f"{tag}-%",))[0][0]
        first.send_signal(signal.SIGKILL)  # no commit, no LeaveGroup, mid-batch
        first.wait(30)
    finally:
        if first.poll() is None:
            first.kill()
    # usually mid-way through the first line (a fast feed may have stored it all, then the
    # kill is between batches); the second line is published only after the kill
    assert stored >= 20
    more = Line(f"{tag}b", 20)
    asyncio.run(_publish(kafka_broker.bootstrap, settings, more, twice=True))
    second = _trace_process(values, log)
    try:
        _wait(db, _all_parts(len(line.part_verdict), tag), proc=second)
        _wait(db, _all_parts(len(more.part_verdict), f"{tag}b"), proc=second)
        asyncio.run(_all_committed(kafka_broker.bootstrap, settings))
    finally:
        second.send_signal(signal.SIGTERM)
        rc = second.wait(60)
    assert first.returncode == -signal.SIGKILL
    assert rc == 0, log.read_text()[-3000:]
    _check(db, settings.models_dir, line, tag)
    _check(db, settings.models_dir, more, f"{tag}b")
    temp = [p for p in (settings.models_dir / "trace").rglob(".*.tmp")]
    assert temp == []
    assert '"msg":"trace feed stopped"' in log.read_text()
    db.close()
