"""``GET /parts/{id}`` with a full trace, for ``bdi bench parts`` (``edge/bench/parts.py``).

A database filled with ``verdicts`` synthetic frame verdicts (parts of 6 ROIs shaped like
the aggregator's own records, raw inserts), a ``bdi serve`` process over it, and
``GET /parts/{id}`` of random parts through one keep-alive client, each request after a
``GET /health`` (the HTTP floor); then the endpoint's work in this process without HTTP,
and ``GET /verdicts`` first pages with filters.
"""

from __future__ import annotations

import contextlib
import math
import os
import secrets
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from consumers.broker import free_port
from consumers.part_rules import iso
from edge.bench.parts import FRAME_GAP_MS, MISSING_EVERY, NG_EVERY, PART_GAP_MS, part_ids
from edge.bench.trace import Db, Doc, insert_rows, opened, scratch, server_version
from store.trace.db import Database
from store.trace.records import (
    PART_COLUMNS,
    PART_FRAME_COLUMNS,
    VERDICT_COLUMNS,
    part_frame_rows,
    part_row,
    verdict_row,
)

if TYPE_CHECKING:
    from configs.settings import Settings

FILL_PARTS = 5_000  # parts per transaction while filling
START_S = 120.0


@dataclass
class Template:
    """A part the aggregator decided: its verdict documents and its record."""

    verdicts: list[Doc]
    record: Doc


def templates(docs: list[tuple[str, Doc]]) -> dict[str, Template]:
    """One decided part per part verdict (OK, NG, INCOMPLETE, as far as there are any)."""
    by_part: dict[str, dict[str, Doc]] = defaultdict(dict)
    for kind, doc in docs:
        if kind == "verdict":
            by_part[doc["part_id"]].setdefault(doc["frame_id"], doc)
    out: dict[str, Template] = {}
    for kind, doc in docs:
        if kind == "part" and doc["verdict"] not in out:
            out[doc["verdict"]] = Template(list(by_part[doc["part_id"]].values()), doc)
    if "OK" not in out:
        raise ValueError("the aggregator decided no OK part: give more --frames")
    return out


def _template_of(j: int, shapes: dict[str, Template]) -> Template:
    if j % NG_EVERY == 7 and "NG" in shapes:
        return shapes["NG"]
    if j % MISSING_EVERY == 13 and "INCOMPLETE" in shapes:
        return shapes["INCOMPLETE"]
    return shapes["OK"]


def fill(db: Database, url: str | None, shapes: dict[str, Template], ids: list[str]) -> int:
    """Store ``len(ids)`` parts shaped like ``shapes``, :data:`FILL_PARTS` at a time (raw
    inserts into SQLite, COPY into PostgreSQL at ``url``, then ANALYZE); returns the
    verdicts stored."""
    base_ms = int(time.time() * 1000) - len(ids) * PART_GAP_MS
    stored = 0
    for start in range(0, len(ids), FILL_PARTS):
        verdicts, parts, frames = [], [], []
        for j in range(start, min(start + FILL_PARTS, len(ids))):
            pid, shape, t0 = ids[j], _template_of(j, shapes), base_ms + j * PART_GAP_MS
            for k, doc in enumerate(shape.verdicts):
                fid = f"{pid}-{doc['role_id']}-{doc['roi_id']}"
                source = {**doc["source"], "offset": j * 6 + k}
                new = {
                    **doc,
                    "part_id": pid,
                    "frame_id": fid,
                    "source": source,
                    "produced_at": iso(t0 + k * FRAME_GAP_MS),
                }
                verdicts.append(verdict_row(new, t0))
            rec = shape.record
            members = [
                {**f, "frame_id": f"{pid}-{f['role_id']}-{f['roi_id']}"} for f in rec["frames"]
            ]
            new = {
                **rec,
                "part_id": pid,
                "frames": members,
                "first_frame_at": iso(t0),
                "decided_at": iso(t0 + 30),
            }
            parts.append(part_row(new, t0 + 30))
            frames += part_frame_rows(new)
        if url is None:
            insert_rows(db, verdicts, parts, frames, [])
        else:
            copy_rows(url, {"verdicts": verdicts, "parts": parts, "part_frames": frames})
        stored += len(verdicts)
    if url is not None:  # the statistics autovacuum would gather soon after such a load
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("ANALYZE")
    return stored


def copy_rows(url: str, tables: dict[str, list[tuple[Any, ...]]]) -> None:
    import psycopg

    columns = {
        "verdicts": VERDICT_COLUMNS,
        "parts": PART_COLUMNS,
        "part_frames": PART_FRAME_COLUMNS,
    }
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        for table, rows in tables.items():
            with cur.copy(f"COPY {table} ({columns[table]}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)


def measure_api(db: Db, docs: list[tuple[str, Doc]], n_verdicts: int, n_requests: int) -> dict:
    shapes = templates(docs)
    ids = part_ids(math.ceil(n_verdicts / 6), "F")
    with scratch(db) as settings, opened(settings) as store:
        t0 = time.perf_counter()
        stored = fill(store.db, settings.trace_db_url, shapes, ids)
        fill_s = time.perf_counter() - t0
        chosen = np.random.default_rng(0).integers(0, len(ids), n_requests)
        picks = [ids[i] for i in chosen]
        frames = {ids[i]: len(_template_of(int(i), shapes).record["frames"]) for i in chosen}
        with api_server(settings, secrets.token_urlsafe(16)) as client:
            timed = http_latencies(client, picks, frames)
        direct = endpoint_latencies(settings, picks)
    health, parts = timed.pop("health"), timed.pop("parts")
    return {
        "verdicts_stored": stored,
        "parts_stored": len(ids),
        "fill_s": round(fill_s, 2),
        "fill_verdicts_per_s": round(stored / fill_s),
        "requests": n_requests,
        "parts_ms_p50": _ms(parts, 50),
        "parts_ms_p99": _ms(parts, 99),
        "health_ms_p50": _ms(health, 50),
        "health_ms_p99": _ms(health, 99),
        "endpoint_ms_p50": _ms(direct, 50),
        "endpoint_ms_p99": _ms(direct, 99),
        "parts_vs_health_p50": round(float(np.median(parts) / np.median(health)), 2),
        "parts_vs_endpoint_p50": round(float(np.median(parts) / np.median(direct)), 2),
        **{f"{name}_ms_p50": _ms(v, 50) for name, v in timed.items() if name != "wrong"},
        **{f"{name}_ms_p99": _ms(v, 99) for name, v in timed.items() if name != "wrong"},
        "wrong_answers": int(timed["wrong"][0]),
        **server_version(db),
    }


def _ms(values: list[float], q: int) -> float:
    return round(float(np.percentile(np.array(values) * 1e3, q)), 3)


@contextlib.contextmanager
def api_server(settings: Settings, key: str) -> Iterator[Any]:
    """A ``bdi serve`` process over ``settings``' trace database, and a keep-alive client
    carrying the API key; the process is stopped afterwards."""
    import httpx

    port = free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("BDI_KAFKA_BOOTSTRAP", "BDI_TRACE_DB_URL", "BRAKEDISC_MODELS_DIR")
    }
    # the trace's reads need no model: the small backbone, no GPU demanded, whatever the
    # profile (a production one would refuse to start without CUDA or DINOv2 weights)
    env |= {
        "BDI_MODELS_DIR": str(settings.models_dir),
        "BDI_API_KEY": key,
        "BDI_REQUIRE_CUDA": "0",
        "BDI_BACKBONE": "efficientnet_lite0",
    }
    if settings.trace_db_url:
        env["BDI_TRACE_DB_URL"] = settings.trace_db_url
    log_path = settings.models_dir / "serve.log"
    command = [
        sys.executable,
        "-m",
        "edge.cli",
        "serve",
        "--no-warmup",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=log)
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, headers={"X-API-Key": key}, timeout=60) as client:
            deadline = time.monotonic() + START_S
            while True:
                if proc.poll() is not None:
                    tail = log_path.read_text(errors="replace")[-800:]
                    raise ValueError(f"bdi serve exited with status {proc.returncode}: {tail}")
                with contextlib.suppress(httpx.TransportError):
                    if client.get("/health").status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise ValueError(f"bdi serve did not answer within {START_S:.0f} s")
                time.sleep(0.2)
            yield client
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def http_latencies(client: Any, picks: list[str], frames: dict[str, int]) -> dict[str, list]:
    """Seconds per request: GET /health then GET /parts/{id}, alternating (so that the VM's
    drift hits both alike), then GET /verdicts first pages with two filters."""
    for pid in picks[:20]:  # warm-up: the API opens the database on its first read
        client.get("/health")
        client.get(f"/parts/{pid}")
    out: dict[str, list] = {"health": [], "parts": [], "verdicts_ng": [], "verdicts_roi": []}
    wrong = 0
    for pid in picks:
        t0 = time.perf_counter()
        health = client.get("/health")
        t1 = time.perf_counter()
        part = client.get(f"/parts/{pid}")
        t2 = time.perf_counter()
        out["health"].append(t1 - t0)
        out["parts"].append(t2 - t1)
        ok = health.status_code == part.status_code == 200
        wrong += not (ok and len(part.json()["frames"]) == frames[pid])
    filters = {
        "verdicts_ng": {"recipe_id": "disc-a", "verdict": "NG"},
        "verdicts_roi": {"recipe_id": "disc-a", "role_id": "Master2", "roi_id": "hub"},
    }
    for _ in range(max(1, len(picks) // 10)):
        for name, params in filters.items():
            t0 = time.perf_counter()
            page = client.get("/verdicts", params=params)
            out[name].append(time.perf_counter() - t0)
            wrong += page.status_code != 200 or not page.json()["verdicts"]
    out["wrong"] = [wrong]
    return out


def endpoint_latencies(settings: Settings, picks: list[str]) -> list[float]:
    """Seconds per ``GET /parts/{id}``'s own work (database reads, the answer's shape) in
    this process, without HTTP."""
    from edge.api.trace import TraceReader, part

    reader = TraceReader(settings)
    try:
        part(reader, picks[0])
        out = []
        for pid in picks:
            t0 = time.perf_counter()
            part(reader, pid)
            out.append(time.perf_counter() - t0)
        return out
    finally:
        reader.close()
