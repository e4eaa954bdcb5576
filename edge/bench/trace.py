"""The trace store's ingest, for ``bdi bench parts`` (``edge/bench/parts.py``), and the
scratch databases it and ``edge/bench/trace_api.py`` work in.

The verdicts and part records the aggregator produced, in batches of :data:`BATCH` records
as ``bdi trace`` takes them off the broker, through :meth:`TraceStore.ingest`; the
baseline, in the same run on a fresh database each time, inserts the same rows
(``ON CONFLICT DO NOTHING``, as redelivered records need) without the ingest's lookups,
conflict accounting and crop decisions.

SQLite in a temp folder (``TMPDIR``); PostgreSQL in a schema of its own, dropped at the end.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import shutil
import sqlite3
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from configs.settings import load_settings
from store.trace import Batch, FrameImage, TraceDbError, TraceStore
from store.trace.db import Database
from store.trace.records import (
    LATE_COLUMNS,
    PART_COLUMNS,
    PART_FRAME_COLUMNS,
    VERDICT_COLUMNS,
    is_late,
    late_row,
    part_frame_rows,
    part_row,
    verdict_row,
)

if TYPE_CHECKING:
    from configs.settings import Settings

BATCH = 500  # records per poll of bdi trace (consumers/trace_feed.py MAX_RECORDS)
FILL_PARTS = 5_000  # parts per transaction while filling
START_S = 120.0
Doc = dict[str, Any]


@dataclass(frozen=True)
class Db:
    dialect: str  # "sqlite" or "postgresql"
    url: str | None = None  # the PostgreSQL server's URL


def databases(choice: str | None, postgres: str | None) -> list[Db]:
    """SQLite, and PostgreSQL when a URL is given (``--postgres`` or BDI_TRACE_DB_URL)."""
    if postgres is None:
        configured = load_settings().trace_db_url
        if configured and configured.startswith(("postgresql://", "postgres://")):
            postgres = configured
    if choice in ("postgresql", "both") and postgres is None:
        raise ValueError(f"--db {choice} needs --postgres URL (or BDI_TRACE_DB_URL)")
    if choice == "sqlite":
        return [Db("sqlite")]
    if postgres:
        _pg(postgres, "SHOW server_version")  # unreachable: said now, not after the aggregator
    pg = [Db("postgresql", postgres)] if postgres else []
    return pg if choice == "postgresql" else [Db("sqlite"), *pg]


def _pg(url: str, sql: str) -> str:
    import psycopg

    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
            cur = conn.execute(sql)
            row = cur.fetchone() if sql.startswith("SHOW") else None
    except psycopg.Error as exc:
        raise ValueError(f"PostgreSQL at --postgres: {' '.join(str(exc).split())}") from None
    return str(row[0]) if row else ""


@contextlib.contextmanager
def scratch(db: Db) -> Iterator[Settings]:
    """Settings naming an empty trace database: a SQLite file in a temp folder, or a fresh
    schema of the PostgreSQL database (its search_path); removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="bdi-bench-parts-"))
    schema = None
    try:
        url = None
        if db.url is not None:
            name = f"bdi_bench_{uuid.uuid4().hex[:10]}"
            _pg(db.url, f"CREATE SCHEMA {name}")
            schema = name
            url = f"{db.url}{'&' if '?' in db.url else '?'}options=-csearch_path%3D{schema}"
        yield load_settings(models_dir=folder, trace_db_url=url)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        if schema is not None and db.url is not None:
            _pg(db.url, f"DROP SCHEMA {schema} CASCADE")


@contextlib.contextmanager
def opened(settings: Settings) -> Iterator[TraceStore]:
    try:
        store = TraceStore.open(settings)
    except TraceDbError as exc:
        raise ValueError(str(exc)) from None
    try:
        yield store
    finally:
        store.close()


def _insert(table: str, columns: str, key: str) -> str:
    marks = ", ".join("?" * len(columns.split(",")))
    return f"INSERT INTO {table} ({columns}) VALUES ({marks}) ON CONFLICT ({key}) DO NOTHING"


SQL_VERDICTS = _insert("verdicts", VERDICT_COLUMNS, "frame_id")
SQL_PARTS = _insert("parts", PART_COLUMNS, "part_id")
SQL_PART_FRAMES = _insert("part_frames", PART_FRAME_COLUMNS, "part_id, frame_id")
SQL_LATE = _insert("late_frames", LATE_COLUMNS, "part_id, frame_id")


def insert_rows(
    db: Database, verdicts: list[tuple], parts: list[tuple], frames: list[tuple], late: list[tuple]
) -> None:
    with db.transaction() as tx:
        tx.executemany(SQL_VERDICTS, verdicts)
        tx.executemany(SQL_PARTS, parts)
        tx.executemany(SQL_PART_FRAMES, frames)
        tx.executemany(SQL_LATE, late)


def raw_insert(db: Database, batch: Batch) -> None:
    """The baseline: the same rows as :meth:`TraceStore.ingest`, inserted as they come."""
    ms = batch.received_ms
    parts = [d for d in batch.parts if not is_late(d)]
    insert_rows(
        db,
        [verdict_row(d, ms) for d in batch.verdicts],
        [part_row(d, ms) for d in parts],
        [r for d in parts for r in part_frame_rows(d)],
        [late_row(d, ms) for d in batch.parts if is_late(d)],
    )


def _batches(docs: list[tuple[str, Any]]) -> list[Batch]:
    """Batches of :data:`BATCH` records (verdicts, part records, frames' images) as
    ``bdi trace`` polls them."""
    out = []
    for i in range(0, len(docs), BATCH):
        batch = Batch(int(time.time() * 1000))
        for kind, doc in docs[i : i + BATCH]:
            if kind == "frame":
                batch.frames.append(doc)
            else:
                (batch.verdicts if kind == "verdict" else batch.parts).append(doc)
        out.append(batch)
    return out


def with_images(docs: list[tuple[str, Doc]], frames: int, kb: int) -> list[tuple[str, Any]]:
    """The records up to the ``frames``-th verdict, each verdict after its frame's image
    (``kb`` KiB, unique per frame), as the camera's frame comes before its verdict."""
    out: list[tuple[str, Any]] = []
    for kind, doc in docs:
        if kind == "verdict":
            if frames <= 0:
                break
            frames -= 1
            fid = doc["frame_id"]
            data = (b"\x89PNG\r\n\x1a\n" + fid.encode()).ljust(kb * 1024, b"\0")
            source = doc.get("source") or {}
            out.append(("frame", FrameImage(fid, data, doc.get("part_id"), doc.get("recipe_id"),
                                            doc.get("role_id"), doc.get("roi_id"),
                                            source.get("topic", "bdi.frames"), 0,
                                            source.get("offset", 0))))  # fmt: skip
        out.append((kind, doc))
    return out


def _ingest(db: Db, batches: list[Batch]) -> tuple[float, dict[str, int]]:
    """Seconds to ingest ``batches`` into an empty database, and what was stored."""
    with scratch(db) as settings, opened(settings) as store:
        totals: dict[str, int] = defaultdict(int)
        t0 = time.perf_counter()
        for batch in batches:
            done = store.ingest(batch)
            for name in ("verdicts", "parts", "late", "ignored", "conflicts", "bad",
                         "frames", "crops_written"):  # fmt: skip
                totals[name] += getattr(done, name)
            totals["crops_deleted"] += len(done.deleting)
        seconds = time.perf_counter() - t0
        for kind, count in store.db.read("SELECT kind, COUNT(*) FROM crops GROUP BY kind"):
            totals[f"crops_{kind}"] = int(count)
    return seconds, dict(totals)


def _raw(db: Db, batches: list[Batch]) -> float:
    with scratch(db) as settings, opened(settings) as store:
        t0 = time.perf_counter()
        for batch in batches:
            raw_insert(store.db, batch)
        return time.perf_counter() - t0


def measure_ingest(
    db: Db, docs: list[tuple[str, Doc]], rounds: int, images: int, image_kb: int
) -> dict[str, Any]:
    """Ingest rate against the raw insert, alternating, each on an empty database; then
    the first ``images`` frames with their images, against the same records without."""
    batches = _batches(docs)
    raw_s = ingest_s = math.inf
    stored: dict[str, int] = {}
    for _ in range(rounds):
        raw_s = min(raw_s, _raw(db, batches))
        seconds, stored = _ingest(db, batches)
        ingest_s = min(ingest_s, seconds)
    verdicts = sum(kind == "verdict" for kind, _ in docs)
    parts = sum(kind == "part" for kind, _ in docs)
    result = {
        "batches": len(batches),
        "batch_records": BATCH,
        "verdicts": verdicts,
        "part_records": parts,
        "late_records": sum(kind == "late" for kind, _ in docs),
        "stored": stored,
        "records_per_s": round(len(docs) / ingest_s, 1),
        "verdicts_per_s": round(verdicts / ingest_s, 1),
        "parts_per_s": round(parts / ingest_s, 1),
        "raw_records_per_s": round(len(docs) / raw_s, 1),
        "ingest_vs_raw": round(raw_s / ingest_s, 3),
        **server_version(db),
    }
    if images:
        result["with_images"] = _images(db, docs, rounds, images, image_kb)
    return result


def _images(
    db: Db, docs: list[tuple[str, Doc]], rounds: int, images: int, image_kb: int
) -> dict[str, Any]:
    records = with_images(docs, images, image_kb)
    plain = _batches([r for r in records if r[0] != "frame"])
    full = _batches(records)
    plain_s = full_s = math.inf
    stored: dict[str, int] = {}
    for _ in range(rounds):
        plain_s = min(plain_s, _ingest(db, plain)[0])
        seconds, stored = _ingest(db, full)
        full_s = min(full_s, seconds)
    frames = sum(kind == "frame" for kind, _ in records)
    parts = sum(kind == "part" for kind, _ in records)
    return {
        "frames": frames,
        "image_kb": image_kb,
        "records": len(records),
        "stored": stored,
        "frames_per_s": round(frames / full_s, 1),
        "parts_per_s": round(parts / full_s, 1),
        "without_images_frames_per_s": round(frames / plain_s, 1),
        "images_vs_without": round(plain_s / full_s, 3),
    }


def server_version(db: Db) -> dict[str, Any]:
    if db.url is None:
        return {"sqlite": sqlite3.sqlite_version}
    return {"postgresql": _pg(db.url, "SHOW server_version")}


def machine() -> dict[str, Any]:
    """The machine, and its load (1-minute average) when the run ended: on a shared VM a
    busy neighbour shows there."""
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
