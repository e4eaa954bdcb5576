"""``bdi bench parts``: the part aggregator, the trace store's ingest and ``GET /parts/{id}``.

Three measurements, each with its baseline in the same run (docs/BENCHMARKS.md, "Parts and
trace"):

- **aggregator**: synthetic frames of 6-ROI parts through the consumer's post-engine path,
  batch by batch: :class:`~consumers.pipeline.BatchProcessor` building and serialising the
  verdicts (the baseline: what every frame costs without parts), then
  :meth:`~consumers.part_state.PartState.batch` adding them to the part table with its
  changelog records, as the runner calls it. Each batch runs both, ``rounds`` times from
  an empty table, the fastest time of each kept per batch. Then :meth:`PartTable.add`
  alone on the same verdicts (the table's own share), and a table rebuilt from the
  changelog (a restore on assignment).
- **ingest**: :mod:`edge.bench.trace`; **api** (GET /parts/{id}): :mod:`edge.bench.trace_api`.

The frames: 5 % of the parts have an NG ROI, 2 % miss a ROI (a quarter of those send it
after the deadline: a late record), 1 % of the frames are sent twice.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import math
import sys
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import orjson
from aiokafka import TopicPartition

from configs.settings import load_settings
from consumers.frames import Decoded, Frame, FrameMeta, Source
from consumers.models import Resolved
from consumers.part_rules import LATE_SCHEMA
from consumers.part_state import PartState, PlanCache
from consumers.parts import PartTable
from consumers.pipeline import BatchProcessor
from engine.decision import Inference
from engine.regions import Region
from store.plans import InspectionPlan, PlanRoi

if TYPE_CHECKING:
    from configs.settings import Settings
    from consumers.models import ModelResolver
    from consumers.outcome import Outcome, OutRecord
    from engine import InferItem

RECIPE = "disc-a"
ROIS = tuple((role, roi) for role in ("Master1", "Master2") for roi in ("inner", "outer", "hub"))
PLAN = InspectionPlan(RECIPE, "bench-1", tuple(PlanRoi(r, o) for r, o in ROIS), 5_000)
START_MS = 1_767_225_600_000  # record timestamps from 2026-01-01 (0 would mean "none")
PART_GAP_MS, FRAME_GAP_MS, LATE_AFTER_MS = 40, 5, 6_000
NG_EVERY, MISSING_EVERY, DUPLICATE_EVERY = 20, 50, 100  # 5 % NG, 2 % missing, 1 % twice
CODE_VERSION = "bench"
_OK_IMAGE = np.zeros((8, 8, 3), np.uint8)
_NG_IMAGE = np.zeros((8, 8, 3), np.uint8)
_REGION = Region((40, 52, 18, 11), 164, 2.6, 1.31, 1.12)


@dataclass(frozen=True)
class SynthFrame:
    part_id: str
    role_id: str
    roi_id: str
    ng: bool
    ts_ms: int


@dataclass
class Expected:
    """What the frames must give: one part record per part, with this verdict."""

    verdicts: dict[str, str]  # part_id -> part verdict
    late: int
    duplicates: int


def part_ids(n_parts: int, prefix: str = "P") -> list[str]:
    return [f"{prefix}{i:07d}" for i in range(n_parts)]


def synth_frames(n_frames: int) -> tuple[list[SynthFrame], Expected]:
    """About ``n_frames`` frames of ``ceil(n_frames / 6)`` parts, in record-time order."""
    frames: list[SynthFrame] = []
    expected = Expected({}, 0, 0)
    for i, pid in enumerate(part_ids(math.ceil(n_frames / len(ROIS)))):
        t0 = START_MS + i * PART_GAP_MS
        ng = i % NG_EVERY == 7
        missing = ROIS[i % len(ROIS)] if i % MISSING_EVERY == 13 else None
        for k, (role, roi) in enumerate(ROIS):
            is_ng = ng and k == (i // NG_EVERY) % len(ROIS)
            if (role, roi) != missing:
                frames.append(SynthFrame(pid, role, roi, is_ng, t0 + k * FRAME_GAP_MS))
            elif (i // MISSING_EVERY) % 4 == 0:  # it comes, but after the deadline
                frames.append(SynthFrame(pid, role, roi, False, t0 + LATE_AFTER_MS))
                expected.late += 1
        expected.verdicts[pid] = "NG" if ng else "INCOMPLETE" if missing else "OK"
    frames.sort(key=lambda f: f.ts_ms)
    out = []
    for n, frame in enumerate(frames):
        out.append(frame)
        if n % DUPLICATE_EVERY == DUPLICATE_EVERY - 1:  # a camera's resend
            out.append(frame)
            expected.duplicates += 1
    return out, expected


def frame_id(f: SynthFrame) -> str:
    return f"{f.part_id}-{f.role_id}-{f.roi_id}"


def decoded_frames(frames: list[SynthFrame], topic: str) -> list[Decoded]:
    """The frames as the consumer has them after decoding (untimed)."""
    out = []
    started = time.monotonic()
    for offset, f in enumerate(frames):
        fid = frame_id(f)
        meta = FrameMeta(fid, False, RECIPE, f.role_id, f.roi_id, f.part_id)
        frame = Frame(
            Source(topic, 0, offset), 1, f.part_id.encode(), b"", (), f.ts_ms, started, meta, None
        )
        sha = hashlib.sha256(fid.encode()).hexdigest()
        out.append(Decoded(frame, _NG_IMAGE if f.ng else _OK_IMAGE, None, 0.4, sha))
    return out


class _Engine:
    """Answers at once: an OK, or an NG with one region, as the frame's image says."""

    def infer(self, items: Sequence[InferItem]) -> list[Inference]:
        return [
            Inference("NG", 1.62, 1.0, [_REGION], "m-000001", "c-000001")
            if item.image is _NG_IMAGE
            else Inference("OK", 0.71, 1.0, [], "m-000001", "c-000001")
            for item in items
        ]


class _Resolver:
    """Every ROI has a model (a stand-in: the engine above never reads it)."""

    model = SimpleNamespace(version="m-000001")

    def resolve(self, keys: Any) -> dict[Any, Resolved]:
        return {key: Resolved(cast(Any, self.model)) for key in dict.fromkeys(keys)}


@dataclass
class AggregatorRun:
    """Seconds per batch (the fastest over the rounds), and what round 1 produced."""

    batches: int
    verdict_s: np.ndarray = field(init=False)
    parts_s: np.ndarray = field(init=False)
    records: list[tuple[str, bytes]] = field(default_factory=list)  # (verdict|part|late, value)
    emitted: Counter[str] = field(default_factory=Counter)  # part records delivered, by verdict
    changelog: list[tuple[bytes, bytes | None]] = field(default_factory=list)
    inputs: list[tuple[dict[str, Any], int]] = field(default_factory=list)  # the table's

    def __post_init__(self) -> None:
        self.verdict_s = np.full(self.batches, np.inf)
        self.parts_s = np.full(self.batches, np.inf)


def run_aggregator(n_frames: int, batch: int, rounds: int) -> tuple[dict[str, Any], AggregatorRun]:
    settings = load_settings(kafka_topic_heatmaps=None)
    frames, expected = synth_frames(n_frames)
    decoded = decoded_frames(frames, settings.kafka_topic_frames)
    batches = [decoded[i : i + batch] for i in range(0, len(decoded), batch)]
    processor = BatchProcessor(settings, _Engine(), cast("ModelResolver", _Resolver()))
    run = AggregatorRun(len(batches))
    with ThreadPoolExecutor(1) as pool:
        warm_up = batches[:4]
        asyncio.run(_round(settings, processor, warm_up, AggregatorRun(len(warm_up)), pool, False))
        for r in range(rounds):
            asyncio.run(_round(settings, processor, batches, run, pool, first=r == 0))
    n_parts = len(expected.verdicts)
    decided: Counter[str] = Counter()
    got: dict[str, list[str]] = {}
    for kind, value in run.records:
        if kind == "part":
            record = orjson.loads(value)
            decided[record["verdict"]] += 1
            got.setdefault(record["part_id"], []).append(record["verdict"])
    verdict_s, parts_s = float(run.verdict_s.sum()), float(run.parts_s.sum())
    state_bytes = sum(len(v) for _, v in run.changelog if v is not None)
    part_bytes = [len(v) for kind, v in run.records if kind == "part"]
    restore_s = _restore(run.changelog)
    table_s = _table_only(run.inputs, rounds)
    result = {
        "frames": len(decoded),
        "parts": n_parts,
        "batch": batch,
        "rounds": rounds,
        "parts_per_s": round(n_parts / parts_s, 1),
        "frames_per_s": round(len(decoded) / parts_s, 1),
        "verdict_frames_per_s": round(len(decoded) / verdict_s, 1),
        "aggregator_us_per_frame": round(parts_s / len(decoded) * 1e6, 2),
        "verdict_us_per_frame": round(verdict_s / len(decoded) * 1e6, 2),
        "aggregator_vs_verdict": round(parts_s / verdict_s, 3),
        "table_frames_per_s": round(len(decoded) / table_s, 1),
        "table_us_per_frame": round(table_s / len(decoded) * 1e6, 2),
        "part_verdicts": dict(sorted(decided.items())),
        "expected_verdicts": dict(sorted(Counter(expected.verdicts.values()).items())),
        "part_records": sum(decided.values()),
        "parts_lost": sum(pid not in got for pid in expected.verdicts),
        "parts_doubled": sum(len(v) > 1 for v in got.values()),
        "parts_wrong": sum(v[0] != expected.verdicts.get(pid) for pid, v in got.items()),
        "late_records": run.emitted["late"],
        "expected_late": expected.late,
        "duplicates_sent": expected.duplicates,
        "part_record_bytes": round(sum(part_bytes) / max(1, len(part_bytes))),
        "changelog_records": len(run.changelog),
        "changelog_bytes_per_part": round(state_bytes / n_parts),
        "restore_records_per_s": round(len(run.changelog) / restore_s, 1),
    }
    return result, run


async def _round(
    settings: Settings,
    processor: BatchProcessor,
    batches: list[list[Decoded]],
    run: AggregatorRun,
    pool: ThreadPoolExecutor,
    first: bool,
) -> None:
    counts: Counter[str] = Counter()
    state = PartState(
        settings,
        plans=PlanCache(lambda _: PLAN, 1.0),
        reader_options={},
        code_version=CODE_VERSION,
        counts=counts,
    )
    tp = TopicPartition(settings.kafka_topic_frames, 0)
    state.tables[tp] = PartTable(code_version=CODE_VERSION)
    outcomes: list[Outcome] = []
    for i, decoded in enumerate(batches):
        t0 = time.perf_counter()
        outcomes = processor.infer(decoded)
        t1 = time.perf_counter()
        async with state.batch(outcomes, lambda _tp, _epoch: True, pool):
            pass
        for outcome in outcomes:
            state.delivered(outcome.records)
        t2 = time.perf_counter()
        run.verdict_s[i] = min(run.verdict_s[i], t1 - t0)
        run.parts_s[i] = min(run.parts_s[i], t2 - t1)
        if first:
            for outcome in outcomes:
                _keep(run, outcome.records, settings.kafka_topic_verdicts)
                run.inputs.append((outcome.verdict.to_dict(), outcome.frame.timestamp_ms))
    if first:  # the parts still open: decided at their deadline (the timer's work, untimed)
        table = state.tables[tp]
        for e in table.expire(table.clock + PLAN.deadline_ms + 1):
            if e.kind == "changelog":
                run.changelog.append((e.key.encode(), e.value))
            else:
                assert e.value is not None and e.record is not None
                run.records.append((e.kind, e.value))
                counts["late" if e.kind == "late" else e.record["verdict"]] += 1
        run.emitted = counts


def _keep(run: AggregatorRun, records: list[OutRecord], verdicts: str) -> None:
    for record in records:
        if record.state:
            assert record.key is not None
            run.changelog.append((record.key, record.value))
        elif record.value is not None:
            if record.topic == verdicts:
                run.records.append(("verdict", record.value))
            else:
                late = orjson.loads(record.value).get("schema") == LATE_SCHEMA
                run.records.append(("late" if late else "part", record.value))


def _table_only(inputs: list[tuple[dict[str, Any], int]], rounds: int) -> float:
    """Seconds for :meth:`PartTable.add` alone (rules, state, changelog values), best of
    ``rounds``: the part of the aggregator's cost that is not the consumer's wiring."""
    best = math.inf
    for _ in range(rounds):
        table = PartTable(code_version=CODE_VERSION)
        t0 = time.perf_counter()
        for verdict, seen_ms in inputs:
            table.add(verdict, PLAN, seen_ms)
        best = min(best, time.perf_counter() - t0)
    return max(best, 1e-9)


def _restore(changelog: list[tuple[bytes, bytes | None]]) -> float:
    """Seconds to rebuild a table from the changelog (as on assignment), best of 3."""
    best = math.inf
    for _ in range(3):
        table = PartTable(code_version=CODE_VERSION)
        t0 = time.perf_counter()
        for key, value in changelog:
            table.restore(key, value)
        best = min(best, time.perf_counter() - t0)
    return max(best, 1e-9)


def run_parts_benchmark(args: argparse.Namespace) -> int:
    from edge.bench import trace, trace_api

    dbs = trace.databases(args.db, args.postgres)
    _say(f"aggregator: {args.frames} frames, {args.rounds} rounds")
    agg, run = run_aggregator(args.frames, args.batch, args.rounds)
    result: dict[str, Any] = {"aggregator": agg, "ingest": {}, "api": {}}
    docs = [(kind, orjson.loads(value)) for kind, value in run.records]
    for db in dbs:
        _say(f"ingest into {db.dialect}: {len(docs)} records, {args.rounds} rounds")
        result["ingest"][db.dialect] = trace.measure_ingest(
            db, docs, args.rounds, args.images, args.image_kb
        )
    for db in dbs if args.verdicts else []:
        _say(f"GET /parts/{{id}} on {db.dialect}: {args.verdicts} verdicts stored first")
        result["api"][db.dialect] = trace_api.measure_api(db, docs, args.verdicts, args.requests)
    result["machine"] = trace.machine()
    print(orjson.dumps(result, option=0 if args.json else orjson.OPT_INDENT_2).decode())
    return 0


def _say(text: str) -> None:
    print(f"[bench parts] {text}", file=sys.stderr, flush=True)
