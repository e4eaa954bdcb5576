"""Ingest: a :class:`~store.trace.records.Batch` into the tables and crop files, in one
transaction, idempotently.

Every row is keyed (``frame_id``, ``part_id``, ``(part_id, frame_id)``, the crop's
SHA-256) and inserted only when absent: a redelivered record changes nothing, and a
second, *different* verdict for a frame (or record for a part) is ignored and logged: the
first wins, as MES systems are told to do (docs/KAFKA.md). A crop file is written before
the transaction that records it commits, and removed only after the one that marked it
``deleting`` did: a kill at any point leaves at worst a file nobody lists, never a row
without its file.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import Any

from store.trace import crops as c
from store.trace.crops import CropFiles
from store.trace.db import Database, Tx
from store.trace.records import (
    LATE_COLUMNS,
    PART_COLUMNS,
    PART_FRAME_COLUMNS,
    VERDICT_COLUMNS,
    BadRecord,
    Batch,
    FrameImage,
    is_late,
    late_row,
    part_frame_rows,
    part_row,
    verdict_row,
)

log = logging.getLogger(__name__)


@dataclass
class Ingested:
    """What one batch changed (``ignored``: already stored; ``conflicts``: already stored
    with another verdict, the first kept; ``bad``: unusable documents)."""

    frames: int = 0
    verdicts: int = 0
    parts: int = 0
    late: int = 0
    ignored: int = 0
    conflicts: int = 0
    bad: int = 0
    crops_written: int = 0
    deleting: list[str] = field(default_factory=list)


def _insert(table: str, columns: str, key: str) -> str:
    marks = ", ".join("?" * len(columns.split(",")))
    return f"INSERT INTO {table} ({columns}) VALUES ({marks}) ON CONFLICT ({key}) DO NOTHING"


def _first(rows: list[tuple[Any, ...]], width: int = 1) -> list[tuple[Any, ...]]:
    """Rows with their first ``width`` columns unique, the first of each kept."""
    seen: set[tuple[Any, ...]] = set()
    out = []
    for row in rows:
        if row[:width] not in seen:
            seen.add(row[:width])
            out.append(row)
    return out


class Ingester:
    """Writes batches; ``ok_sample`` and ``ng_days`` as in the settings."""

    def __init__(self, db: Database, files: CropFiles, ok_sample: int, ng_days: int) -> None:
        self.db, self.files = db, files
        self.ok_sample, self.ng_days = ok_sample, ng_days

    def ingest(self, batch: Batch) -> Ingested:
        out = Ingested()
        with self.db.transaction() as tx:
            touched = self._verdicts(tx, batch, out)
            touched += self._parts(tx, batch, out)
            images = self._frames(tx, batch, out)
            touched += list(images)
            shas = self.resolve(tx, touched)
            shas |= {c_sha for c_sha, _ in images.values()}
            data = {sha: frame.data for sha, frame in images.values()}
            self.place(tx, sorted(shas), data, batch.received_ms, out)
        self.finish_deletions(out.deleting)
        return out

    # --- rows ------------------------------------------------------------------------------
    def _verdicts(self, tx: Tx, batch: Batch, out: Ingested) -> list[str]:
        rows = []
        for doc in batch.verdicts:
            try:
                rows.append(verdict_row(doc, batch.received_ms))
            except BadRecord as exc:
                out.bad += 1
                log.warning("verdict not stored", extra={"error": str(exc)})
        rows = _first(rows)
        known = {
            r[0]: r[1:]
            for r in tx.query_in(
                "SELECT frame_id, verdict, score FROM verdicts WHERE frame_id IN ({})",
                [r[0] for r in rows],
            )
        }
        new = [r for r in rows if r[0] not in known]
        for row in rows:
            if row[0] in known:
                out.ignored += 1
                if known[row[0]] != (row[5], row[6]):
                    out.conflicts += 1
                    log.warning(
                        "a different verdict for a stored frame: the first is kept",
                        extra={"frame_id": row[0], "kept": known[row[0]][0], "got": row[5]},
                    )
        tx.executemany(_insert("verdicts", VERDICT_COLUMNS, "frame_id"), new)
        out.verdicts += len(new)
        return [r[0] for r in new]

    def _parts(self, tx: Tx, batch: Batch, out: Ingested) -> list[str]:
        parts, frames, late = [], [], []
        for doc in batch.parts:
            try:
                if is_late(doc):
                    late.append(late_row(doc, batch.received_ms))
                else:
                    parts.append((part_row(doc, batch.received_ms), part_frame_rows(doc)))
            except BadRecord as exc:
                out.bad += 1
                log.warning("part record not stored", extra={"error": str(exc)})
        ids = [p[0][0] for p in parts]
        sql = "SELECT part_id, verdict FROM parts WHERE part_id IN ({})"
        known: dict[str, str] = {r[0]: r[1] for r in tx.query_in(sql, ids)}
        fresh: dict[str, tuple[Any, ...]] = {}
        for row, part_frames in parts:
            part_id = row[0]
            if part_id in known or part_id in fresh:
                out.ignored += 1
                kept = known.get(part_id) or fresh[part_id][2]
                if kept != row[2]:
                    out.conflicts += 1
                    log.warning(
                        "a different record for a stored part: the first is kept",
                        extra={"part_id": part_id, "kept": kept, "got": row[2]},
                    )
                continue
            fresh[part_id] = row
            frames += part_frames
        tx.executemany(_insert("parts", PART_COLUMNS, "part_id"), list(fresh.values()))
        tx.executemany(
            _insert("part_frames", PART_FRAME_COLUMNS, "part_id, frame_id"), _first(frames, 2)
        )
        known_late = set(
            tx.query_in(
                "SELECT part_id, frame_id FROM late_frames WHERE part_id IN ({})",
                sorted({r[0] for r in late}),
            )
        )
        new_late = [r for r in _first(late, 2) if (r[0], r[1]) not in known_late]
        out.ignored += len(late) - len(new_late)
        late = new_late
        tx.executemany(_insert("late_frames", LATE_COLUMNS, "part_id, frame_id"), late)
        out.parts += len(fresh)
        out.late += len(late)
        touched = [r[1] for r in late] + [f[1] for f in frames]
        touched += [
            r[0]
            for r in tx.query_in(
                "SELECT frame_id FROM frame_images WHERE part_id IN ({})", list(fresh)
            )
        ]
        return touched

    def _frames(self, tx: Tx, batch: Batch, out: Ingested) -> dict[str, tuple[str, FrameImage]]:
        """Record the new frames' images; ``{frame_id: (sha256, frame)}`` of those."""
        frames: dict[str, FrameImage] = {}
        for frame in batch.frames:
            frames.setdefault(frame.frame_id, frame)
        known = {
            r[0]
            for r in tx.query_in(
                "SELECT frame_id FROM frame_images WHERE frame_id IN ({})", list(frames)
            )
        }
        out.ignored += len(batch.frames) - len(frames) + len(known)
        new = {
            fid: (hashlib.sha256(f.data).hexdigest(), f)
            for fid, f in frames.items()
            if fid not in known
        }
        tx.executemany(
            "INSERT INTO frame_images (frame_id, sha256, size, part_id, recipe_id, role_id, "
            "roi_id, source_topic, source_partition, source_offset, received_ms, keep) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL) ON CONFLICT (frame_id) DO NOTHING",
            [
                (fid, sha, len(f.data), f.part_id, f.recipe_id, f.role_id, f.roi_id,
                 f.topic, f.partition, f.offset, batch.received_ms)
                for fid, (sha, f) in new.items()
            ],
        )  # fmt: skip
        out.frames += len(new)
        return new

    # --- crops -----------------------------------------------------------------------------
    def resolve(self, tx: Tx, frame_ids: list[str]) -> set[str]:
        """Decide what the crops of ``frame_ids`` need, now that a verdict, a part or the
        image came; returns the SHA-256 of the crops whose frames changed."""
        rows = tx.query_in(
            "SELECT f.frame_id, f.sha256, COALESCE(f.part_id, v.part_id), f.keep, v.verdict, "
            "p.verdict FROM frame_images f "
            "LEFT JOIN verdicts v ON v.frame_id = f.frame_id "
            "LEFT JOIN parts p ON p.part_id = COALESCE(f.part_id, v.part_id) "
            "WHERE f.frame_id IN ({}) AND (f.keep IS NULL OR f.keep = 'ok_sample')",
            sorted(set(frame_ids)),
        )
        changed: list[tuple[str | None, str]] = []
        shas: set[str] = set()
        for frame_id, sha, part_id, keep, verdict, part_verdict in rows:
            new = c.keep_of(verdict, part_id, part_verdict, c.sampled(frame_id, self.ok_sample))
            if new != keep and not (keep == c.OK_SAMPLE and new is None):
                changed.append((new, frame_id))
                shas.add(sha)
        tx.executemany("UPDATE frame_images SET keep = ? WHERE frame_id = ?", changed)
        return shas

    def place(
        self, tx: Tx, shas: list[str], data: dict[str, bytes], now_ms: int, out: Ingested
    ) -> None:
        """Bring the crops of ``shas`` in line with their frames' keep decisions: write the
        ones now needed (``data`` holds the bytes that came in this batch), change kinds,
        mark the unneeded ``deleting``."""
        keeps: dict[str, list[str | None]] = {}
        for sha, keep in tx.query_in(
            "SELECT sha256, keep FROM frame_images WHERE sha256 IN ({})", shas
        ):
            keeps.setdefault(sha, []).append(keep)
        stored = {
            r[0]: r[1:]
            for r in tx.query_in(
                "SELECT sha256, kind, path, created_ms FROM crops WHERE sha256 IN ({})", shas
            )
        }
        for sha in shas:
            kind = c.crop_kind(keeps.get(sha, []))
            kind_now, path, created = stored.get(sha, (None, None, now_ms))
            if kind is None:
                if path is not None and kind_now != c.DELETING:
                    tx.execute("UPDATE crops SET kind = ? WHERE sha256 = ?", (c.DELETING, sha))
                    out.deleting.append(sha)
                continue
            until = created + self.ng_days * c.DAY_MS if kind == c.NG else None
            if path is None or kind_now == c.DELETING:
                if sha not in data:
                    continue  # its bytes came earlier and were let go; nothing to keep
                path = self.files.relative(sha, data[sha])
                self.files.write(path, data[sha])
                out.crops_written += 1
                until = now_ms + self.ng_days * c.DAY_MS if kind == c.NG else None
                tx.execute(
                    "INSERT INTO crops (sha256, path, size, kind, kept_until_ms, created_ms) "
                    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (sha256) DO UPDATE SET "
                    "kind = excluded.kind, kept_until_ms = excluded.kept_until_ms, "
                    "created_ms = excluded.created_ms",
                    (sha, path, len(data[sha]), kind, until, now_ms),
                )
            elif kind != kind_now:
                tx.execute(
                    "UPDATE crops SET kind = ?, kept_until_ms = ? WHERE sha256 = ?",
                    (kind, until, sha),
                )

    def finish_deletions(self, shas: list[str] | None = None) -> int:
        """Remove the files of crops marked ``deleting`` (these, or all), then their rows."""
        with self.db.transaction() as tx:
            if shas is None:
                rows = tx.query("SELECT sha256, path FROM crops WHERE kind = ?", (c.DELETING,))
            else:
                rows = tx.query_in(
                    "SELECT sha256, path FROM crops WHERE kind = 'deleting' AND sha256 IN ({})",
                    shas,
                )
            for _, path in rows:
                self.files.remove(path)
            tx.executemany(
                "DELETE FROM crops WHERE sha256 = ? AND kind = 'deleting'", [(r[0],) for r in rows]
            )
        return len(rows)
