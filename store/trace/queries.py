"""Reading the trace: frame verdicts filtered and paged, one part with its frames, one
frame with its crop. Pages are newest first, by keyset ``(produced_ms, frame_id)``: a page
is found through an index whatever its depth, and rows stored meanwhile never shift it.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from store.errors import InvalidValueError
from store.trace.crops import CropFiles
from store.trace.db import Database

MAX_PAGE = 1000


@dataclass(frozen=True)
class Cursor:
    """Where a page of verdicts ends: the last row's ``produced_ms`` and ``frame_id``."""

    produced_ms: int
    frame_id: str

    def encode(self) -> str:
        raw = orjson.dumps([self.produced_ms, self.frame_id])
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> Cursor:
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            ms, frame_id = orjson.loads(raw)
            if not isinstance(ms, int) or not isinstance(frame_id, str):
                raise ValueError
        except (ValueError, TypeError, binascii.Error):
            raise InvalidValueError(f"not a page cursor: {text[:80]!r}") from None
        return cls(ms, frame_id)


@dataclass(frozen=True)
class VerdictFilter:
    """``GET /verdicts`` filters; ``since_ms`` inclusive, ``until_ms`` exclusive;
    ``verdict`` one verdict or any of several."""

    recipe_id: str | None = None
    role_id: str | None = None
    roi_id: str | None = None
    verdict: str | tuple[str, ...] | None = None
    part_id: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None


@dataclass(frozen=True)
class Page:
    verdicts: list[dict[str, Any]]
    next: Cursor | None  # None: this was the last page


def verdicts(
    db: Database, where: VerdictFilter, after: Cursor | None = None, limit: int = 100
) -> Page:
    """One page of frame verdicts (their stored JSON), newest first."""
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidValueError(f"limit must be 1 to {MAX_PAGE}, got {limit}")
    clauses: list[str] = []
    params: list[Any] = []
    for column in ("recipe_id", "role_id", "roi_id", "verdict", "part_id"):
        value = getattr(where, column)
        if isinstance(value, tuple):
            clauses.append(f"{column} IN ({','.join('?' * len(value))})")
            params += value
        elif value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    if where.since_ms is not None:
        clauses.append("produced_ms >= ?")
        params.append(where.since_ms)
    if where.until_ms is not None:
        clauses.append("produced_ms < ?")
        params.append(where.until_ms)
    if after is not None:
        clauses.append("(produced_ms, frame_id) < (?, ?)")
        params += [after.produced_ms, after.frame_id]
    sql = "SELECT produced_ms, frame_id, json FROM verdicts"
    if clauses:
        sql += " WHERE " + " AND ".join(clauses)
    sql += " ORDER BY produced_ms DESC, frame_id DESC LIMIT ?"
    rows = db.read(sql, [*params, limit + 1])
    more = len(rows) > limit
    rows = rows[:limit]
    cursor = Cursor(int(rows[-1][0]), rows[-1][1]) if more else None
    return Page([orjson.loads(r[2]) for r in rows], cursor)


def frame(db: Database, files: CropFiles, frame_id: str) -> dict[str, Any] | None:
    """A frame's verdict (None until it comes), its image (SHA-256, size) and the crop's
    file when kept (``crop``: None when not kept or evicted). None: nothing known."""
    verdict = db.read("SELECT json FROM verdicts WHERE frame_id = ?", (frame_id,))
    image = db.read(
        "SELECT f.sha256, f.size, f.part_id, f.keep, c.path, c.kind FROM frame_images f "
        "LEFT JOIN crops c ON c.sha256 = f.sha256 AND c.kind <> 'deleting' "
        "WHERE f.frame_id = ?",
        (frame_id,),
    )
    if not verdict and not image:
        return None
    doc = orjson.loads(verdict[0][0]) if verdict else None
    out: dict[str, Any] = {"frame_id": frame_id, "verdict": doc, "image": None, "crop": None}
    if image:
        sha, size, part_id, keep, path, kind = image[0]
        out["image"] = {"sha256": sha, "size": size, "part_id": part_id, "keep": keep}
        if path is not None:
            out["crop"] = {"path": files.path(path), "kind": kind}
    return out


def crop_path(db: Database, files: CropFiles, frame_id: str) -> Path | None:
    """The kept crop file of a frame; None when there is none."""
    found = frame(db, files, frame_id)
    if found is None or found["crop"] is None:
        return None
    path: Path = found["crop"]["path"]
    return path


def part(db: Database, part_id: str) -> dict[str, Any] | None:
    """A part: its record (None while undecided), the frames it is made of (each with its
    stored verdict when there is one, and whether a crop is kept), the frames seen with its
    ``part_id`` but not in the record, and late frames. None: nothing known of it."""
    record = db.read("SELECT json FROM parts WHERE part_id = ?", (part_id,))
    listed = db.read(
        "SELECT pf.frame_id, pf.role_id, pf.roi_id, pf.verdict, pf.score, pf.threshold, "
        "pf.model_version, v.json FROM part_frames pf "
        "LEFT JOIN verdicts v ON v.frame_id = pf.frame_id "
        "WHERE pf.part_id = ? ORDER BY pf.role_id, pf.roi_id, pf.frame_id",
        (part_id,),
    )
    seen = db.read(
        "SELECT frame_id, role_id, roi_id, verdict, score, threshold, model_version, json "
        "FROM verdicts WHERE part_id = ? ORDER BY role_id, roi_id, frame_id",
        (part_id,),
    )
    late = db.read(
        "SELECT json FROM late_frames WHERE part_id = ? ORDER BY received_ms, frame_id",
        (part_id,),
    )
    if not (record or listed or seen or late):
        return None
    names = ("frame_id", "role_id", "roi_id", "verdict", "score", "threshold", "model_version")
    in_record = {r[0] for r in listed}
    kept = _kept(db, [r[0] for r in listed] + [r[0] for r in seen])

    def one(row: tuple[Any, ...]) -> dict[str, Any]:
        item = dict(zip(names, row[:7], strict=True))
        item["stored_verdict"] = orjson.loads(row[7]) if row[7] else None
        item["crop_kept"] = row[0] in kept
        return item

    return {
        "part_id": part_id,
        "record": orjson.loads(record[0][0]) if record else None,
        "frames": [one(r) for r in listed],
        "other_frames": [one(r) for r in seen if r[0] not in in_record],
        "late": [orjson.loads(r[0]) for r in late],
    }


def crops_of(db: Database, frame_ids: list[str]) -> dict[str, tuple[str | None, str | None]]:
    """Per frame whose image is stored: its keep decision and its crop's kind (None: no crop
    file, let go or evicted). A frame missing from the answer has no stored image."""
    out: dict[str, tuple[str | None, str | None]] = {}
    for i in range(0, len(frame_ids), 500):
        chunk = frame_ids[i : i + 500]
        rows = db.read(
            "SELECT f.frame_id, f.keep, c.kind FROM frame_images f "
            "LEFT JOIN crops c ON c.sha256 = f.sha256 AND c.kind <> 'deleting' "
            f"WHERE f.frame_id IN ({','.join('?' * len(chunk))})",
            chunk,
        )
        out.update({r[0]: (r[1], r[2]) for r in rows})
    return out


def _kept(db: Database, frame_ids: list[str]) -> set[str]:
    if not frame_ids:
        return set()
    marks = ",".join("?" * len(frame_ids))
    rows = db.read(
        "SELECT f.frame_id FROM frame_images f JOIN crops c ON c.sha256 = f.sha256 "
        f"WHERE c.kind <> 'deleting' AND f.frame_id IN ({marks})",
        frame_ids,
    )
    return {r[0] for r in rows}


def recent_parts(
    db: Database,
    verdict: tuple[str, ...] | None = None,
    recipe_id: str | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """The newest decided parts (by decision time), optionally of some verdicts or one
    recipe: what a screen lists before anyone types a serial."""
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidValueError(f"limit must be 1 to {MAX_PAGE}, got {limit}")
    clauses: list[str] = []
    params: list[Any] = []
    if verdict:
        clauses.append(f"verdict IN ({','.join('?' * len(verdict))})")
        params += verdict
    if recipe_id is not None:
        clauses.append("recipe_id = ?")
        params.append(recipe_id)
    sql = "SELECT json FROM parts"
    if clauses:
        sql += " WHERE " + " AND ".join(clauses)
    sql += " ORDER BY decided_ms DESC, part_id DESC LIMIT ?"
    return [orjson.loads(r[0]) for r in db.read(sql, [*params, limit])]
