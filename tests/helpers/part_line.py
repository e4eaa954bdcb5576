"""The line of the part scenario (S22, ``tests/reliability/test_part_line.py``): a plan of
six ROIs, the frames of many parts as the cameras send them (some parts with an NG ROI,
some missing a ROI, frames sent twice, late retakes), the part rules written out again as
the test's own oracle, the figures of what an MES read against what was sent, ``bdi
trace`` processes and what their databases hold."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.simulator.discs import encode_png, make_ng, make_ok
from store.trace.db import Database, target
from store.trace.schema import migrate
from tests.helpers.consumer import GROUP_OPTIONS
from tests.helpers.images import SIZE
from tests.helpers.kafka import FrameSpec, headers
from tests.helpers.paths import REPO
from tests.helpers.probes import TopicLog

Roi = tuple[str, str]  # (role_id, roi_id)
PLAN: tuple[Roi, ...] = tuple(
    (role, roi) for role in ("Master1", "Master2") for roi in ("inner-ring", "outer-ring", "hub")
)
RANK = {"OK": 0, "NO_MODEL": 1, "ERROR": 2, "NG": 3}  # the worst verdict of a ROI counts


@dataclass
class Part:
    part_id: str
    ng_roi: Roi | None = None  # the ROI whose image has a defect
    missing_roi: Roi | None = None  # the ROI never sent
    frames: dict[Roi, str] = field(default_factory=dict)  # frame_id of each ROI sent in time
    late: list[str] = field(default_factory=list)  # retakes sent after the deadline


@dataclass
class Line:
    """``chunks[c]``: the frames of the c-th quarter of the parts, each part's frames in a
    burst (in a shuffled ROI order), a repeat sent at once right after its original;
    ``extras[c]``: that quarter's late retakes and the repeats sent later, to be sent
    after its deadline. ``image``: what each frame_id was made to show (``OK``/``NG``)."""

    parts: dict[str, Part]
    chunks: list[list[FrameSpec]]
    extras: list[list[FrameSpec]]
    image: dict[str, str]
    sha256: dict[str, str]
    repeated: set[str]
    late: dict[str, str]  # late frame_id -> part_id

    @property
    def messages(self) -> int:
        return sum(map(len, self.chunks)) + sum(map(len, self.extras))


def _frame(part_id: str, frame_id: str, roi: Roi, ng: bool, seed: int) -> FrameSpec:
    disc = make_ng(200_000 + seed, SIZE) if ng else make_ok(100_000 + seed, SIZE)
    meta = headers(frame_id, role_id=roi[0], roi_id=roi[1], part_id=part_id, mm_per_px="0.1")
    return FrameSpec(frame_id, encode_png(disc.image), meta, part_id.encode(),
                     "NG" if ng else "OK")  # fmt: skip


def make_line(
    n_parts: int, n_chunks: int, *, seed: int, ng: float = 0.05, missing: float = 0.02,
    repeated: float = 0.01, late: float = 0.005,
) -> Line:  # fmt: skip
    """``n_parts`` parts of the six ROIs of :data:`PLAN`: a share ``ng`` with one NG ROI,
    ``missing`` (other parts) with one ROI never sent; ``repeated`` of the frames sent
    twice (half at once, half after the deadline); ``late`` of the frames' count as
    retakes of OK parts' ROIs (two in three showing a defect) sent after the deadline."""
    rng = random.Random(seed)
    order = list(range(n_parts))
    rng.shuffle(order)
    n_ng, n_missing = round(ng * n_parts), round(missing * n_parts)
    ng_set, missing_set = set(order[:n_ng]), set(order[n_ng : n_ng + n_missing])
    n_frames = len(PLAN) * n_parts - n_missing
    late_set = set(rng.sample(order[n_ng + n_missing :], round(late * n_frames)))
    repeats = set(rng.sample(range(n_frames), round(repeated * n_frames)))
    per_chunk = -(-n_parts // n_chunks)
    line = Line({}, [[] for _ in range(n_chunks)], [[] for _ in range(n_chunks)], {}, {},
                set(), {})  # fmt: skip
    k = 0  # the frame's number among the on-time frames
    for p in range(n_parts):
        part = Part(f"SN-{p:05d}")
        if p in ng_set:
            part.ng_roi = rng.choice(PLAN)
        if p in missing_set:
            part.missing_roi = rng.choice(PLAN)
        c = p // per_chunk
        rois = [r for r in PLAN if r != part.missing_roi]
        rng.shuffle(rois)  # cameras do not send the ROIs in the plan's order
        for roi in rois:
            spec = _frame(part.part_id, f"{part.part_id}-{roi[0]}-{roi[1]}", roi,
                          roi == part.ng_roi, k)  # fmt: skip
            part.frames[roi] = spec.frame_id
            line.chunks[c].append(spec)
            if k in repeats:
                line.repeated.add(spec.frame_id)
                (line.chunks[c] if k % 2 else line.extras[c]).append(spec)
            k += 1
        if p in late_set:
            roi = rng.choice(PLAN)
            spec = _frame(part.part_id, f"{part.part_id}-{roi[0]}-{roi[1]}-retake", roi,
                          rng.random() < 2 / 3, 50_000 + p)  # fmt: skip
            part.late.append(spec.frame_id)
            line.late[spec.frame_id] = part.part_id
            line.extras[c].append(spec)
        line.parts[part.part_id] = part
    for spec in (s for chunk in (*line.chunks, *line.extras) for s in chunk):
        assert spec.value is not None and spec.expect is not None
        line.image[spec.frame_id] = spec.expect
        line.sha256[spec.frame_id] = hashlib.sha256(spec.value).hexdigest()
    return line


def split_at_part(chunk: list[FrameSpec]) -> tuple[list[FrameSpec], list[FrameSpec]]:
    """``chunk`` cut in two near its middle, between two parts (frames are keyed by part),
    so that no part has frames on both sides."""
    cut = len(chunk) // 2
    while 0 < cut < len(chunk) and chunk[cut].key == chunk[cut - 1].key:
        cut += 1
    return chunk[:cut], chunk[cut:]


def part_verdict(plan: Iterable[Roi], judged: dict[Roi, list[str]]) -> str:
    """The part rules of docs/KAFKA.md, written out again (every plan ROI required): each
    ROI counts with its worst frame verdict; NG, else INCOMPLETE (a ROI without a frame),
    else ERROR, else NO_MODEL, else OK."""
    worst = {roi: max(vs, key=lambda v: RANK.get(v, RANK["ERROR"])) for roi, vs in judged.items()}
    counted = [v if v in RANK else "ERROR" for v in worst.values()]
    if "NG" in counted:
        return "NG"
    if any(roi not in worst for roi in plan):
        return "INCOMPLETE"
    for verdict in ("ERROR", "NO_MODEL"):
        if verdict in counted:
            return verdict
    return "OK"


# --- what the MES saw -----------------------------------------------------------------
MUST_BE_ZERO = (
    "parts_lost", "parts_doubled", "wrong_part_verdicts", "missing_roi_not_incomplete",
    "ok_with_bad_roi", "parts_with_wrong_frames", "part_frames_not_as_published",
    "late_lost", "late_doubled", "late_counted_in_part", "late_verdict_differs",
    "late_records_not_late",
    "frame_verdicts_lost", "frame_verdicts_doubled",
)  # fmt: skip


def line_figures(
    line: Line, parts_log: TopicLog, verdicts_log: TopicLog, raw: TopicLog, plan_version: str
) -> dict[str, Any]:
    """What the MES saw (read_committed), against what was sent and how its frames were
    judged on bdi.verdicts."""
    answers: dict[str, list[tuple[int, str]]] = {}  # a frame sent twice has two answers
    for v in verdicts_log.values:
        answers.setdefault(v["frame_id"], []).append((v["source"]["offset"], v["verdict"]))
    # a frame's first delivery (lowest offset: one part, one partition) is the one counted
    judged = {fid: min(pairs)[1] for fid, pairs in answers.items()}
    judged_twice = sum(len({v for _, v in pairs}) > 1 for pairs in answers.values())
    sources = Counter(
        (v["source"]["partition"], v["source"]["offset"]) for v in verdicts_log.values
    )
    records = Counter(v["part_id"] for v in parts_log.values if v["schema"] == "bdi.part/1")
    part = {v["part_id"]: v for v in parts_log.values if v["schema"] == "bdi.part/1"}
    lates = [v for v in parts_log.values if v["schema"] == "bdi.part_late/1"]
    late_ids = Counter(v["frame"]["frame_id"] for v in lates)
    wrong, not_incomplete, ok_bad, wrong_frames, late_counted, differ = [], [], [], [], [], []
    for p in line.parts.values():
        got = part.get(p.part_id)
        if got is None:
            continue
        seen = {roi: [judged[fid]] for roi, fid in p.frames.items() if fid in judged}
        expect = part_verdict(PLAN, seen)
        if got["verdict"] != expect or got["plan_version"] != plan_version:
            wrong.append((p.part_id, got["verdict"], expect))
        if p.missing_roi is not None:  # INCOMPLETE, unless an NG ROI decides it (NG wins)
            missing = [(m["role_id"], m["roi_id"]) for m in got["missing"]]
            has_ng = any("NG" in vs for vs in seen.values())
            if got["verdict"] != ("NG" if has_ng else "INCOMPLETE") or missing != [p.missing_roi]:
                not_incomplete.append(p.part_id)
        bad = len(seen) < len(PLAN) or any(vs != ["OK"] for vs in seen.values())
        if got["verdict"] == "OK" and (bad or any(f["verdict"] != "OK" for f in got["frames"])):
            ok_bad.append(p.part_id)
        ids = [f["frame_id"] for f in got["frames"]]
        if sorted(ids) != sorted(p.frames.values()):  # each frame once, none late
            wrong_frames.append(p.part_id)
        late_counted += [f for f in p.late if f in ids]
        differ += [f for f in got["frames"] if f["verdict"] != judged.get(f["frame_id"])]
    late_differs = [v["frame"]["frame_id"] for v in lates
                    if v["part_verdict"] != part.get(v["part_id"], {}).get("verdict")]  # fmt: skip
    misjudged = [f for f, kind in line.image.items() if judged.get(f, kind) != kind]
    return dict(
        parts=len(line.parts), frames_sent=line.messages,
        ng_parts=sum(p.ng_roi is not None for p in line.parts.values()),
        missing_roi_parts=sum(p.missing_roi is not None for p in line.parts.values()),
        repeated_frames=len(line.repeated), late_frames=len(line.late),
        part_records=sum(records.values()), parts_lost=len(set(line.parts) - set(records)),
        parts_doubled=sum(n - 1 for n in records.values()),
        part_verdicts=dict(Counter(v["verdict"] for v in part.values())),
        aborted_part_records=sum(v["schema"] == "bdi.part/1" for v in raw.values)
        - sum(records.values()),
        wrong_part_verdicts=len(wrong), missing_roi_not_incomplete=len(not_incomplete),
        ok_with_bad_roi=len(ok_bad), parts_with_wrong_frames=len(wrong_frames),
        part_frames_not_as_published=len(differ),
        late_records=len(lates), late_lost=len(set(line.late) - set(late_ids)),
        late_doubled=sum(n - 1 for n in late_ids.values()),
        late_counted_in_part=len(late_counted), late_verdict_differs=len(late_differs),
        late_records_not_late=len(set(late_ids) - set(line.late)),
        frame_verdicts=len(verdicts_log.values),
        frame_verdicts_lost=line.messages - len(sources),
        frame_verdicts_doubled=sum(n - 1 for n in sources.values()),
        model_misjudged_frames=len(misjudged), repeats_judged_differently=judged_twice,
        examples={"wrong": wrong[:5], "not_incomplete": not_incomplete[:5],
                  "ok_bad": ok_bad[:5], "wrong_frames": wrong_frames[:5]},
    )  # fmt: skip


# --- bdi trace ----------------------------------------------------------------------
def trace_process(values: dict[str, object], log: Path) -> subprocess.Popen[bytes]:
    """``python -m edge.cli trace`` with ``BDI_*`` from ``values`` only."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BDI_", "BRAKEDISC_"))}
    env.update({f"BDI_{k.upper()}": str(v) for k, v in values.items()})
    env["BDI_ENV_FILE"] = os.devnull
    options = [f"--consumer-option={k}={v}" for k, v in GROUP_OPTIONS.items()]
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "edge.cli", "trace", *options], cwd=REPO,
                                env=env, stdout=out, stderr=subprocess.STDOUT)  # fmt: skip


def open_trace(url: str | None, models_dir: Path) -> Database:
    """The trace database ``bdi trace`` fills (its tables made now if it has not yet)."""
    db = Database.open(target(url, models_dir))
    migrate(db)
    return db


def stored(db: Database) -> dict[str, int]:
    """How many parts, frame verdicts, part frames, late frames and frame images (one per
    frame_id read from bdi.frames) the database holds."""
    tables = ("parts", "verdicts", "part_frames", "late_frames", "frame_images")
    return {t: int(db.read(f"SELECT COUNT(*) FROM {t}")[0][0]) for t in tables}  # noqa: S608
