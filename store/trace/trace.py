"""The trace store: verdicts, part records and kept crops, in a database and a folder.

``TraceStore.open(settings)`` opens (and creates or migrates) the database named by
``BDI_TRACE_DB_URL`` (SQLite at ``<BDI_MODELS_DIR>/trace/trace.db`` when unset) and the
crop folder ``<BDI_MODELS_DIR>/trace/crops``; :meth:`ingest` stores a batch,
:meth:`maintain` lets go of what is no longer needed and keeps the crops within
``BDI_TRACE_MAX_GB``. See docs/TRACE.md.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from store.trace import crops as c
from store.trace import queries
from store.trace.crops import CropFiles
from store.trace.db import Database, TraceDbError, Tx, db_errors, target
from store.trace.ingest import Ingested, Ingester
from store.trace.queries import Cursor, Page, VerdictFilter
from store.trace.records import Batch
from store.trace.schema import migrate

if TYPE_CHECKING:
    from configs.settings import Settings

log = logging.getLogger(__name__)
GB = 1 << 30
EVICT_CHUNK = 500


@dataclass(frozen=True)
class Maintained:
    """One :meth:`TraceStore.maintain`: crops let go after their part's wait, crops
    evicted for the budget, the bytes stored, and what is left above the budget (NG crops
    too young to evict)."""

    dropped: int
    evicted: int
    stored_bytes: int
    over_budget_bytes: int


def now_ms() -> int:
    return int(time.time() * 1000)


class TraceStore:
    def __init__(
        self, db: Database, files: CropFiles, *, ok_sample: int, max_bytes: int, ng_days: int
    ) -> None:
        self.db, self.files = db, files
        self.max_bytes, self.ng_days = max_bytes, ng_days
        self._ingester = Ingester(db, files, ok_sample, ng_days)

    @classmethod
    def open(cls, settings: Settings) -> TraceStore:
        """Open the database, bring its schema up to date, finish what a killed writer left
        (crop files marked for deletion, temp files)."""
        where = target(settings.trace_db_url, settings.models_dir)
        db = Database.open(where)
        try:
            try:
                migrate(db)
            except db_errors() as exc:  # an unreadable file, a user without CREATE, ...
                raise TraceDbError(f"the trace database {db.shown}: {exc}") from None
            store = cls(
                db,
                CropFiles(settings.models_dir / "trace"),
                ok_sample=settings.trace_ok_sample,
                max_bytes=int(settings.trace_max_gb * GB),
                ng_days=settings.trace_ng_days,
            )
            store._ingester.finish_deletions()
            store.files.sweep()
        except BaseException:
            db.close()
            raise
        return store

    def ingest(self, batch: Batch) -> Ingested:
        return self._ingester.ingest(batch)

    def stored_bytes(self) -> int:
        rows = self.db.read("SELECT COALESCE(SUM(size), 0) FROM crops WHERE kind <> 'deleting'")
        return int(rows[0][0])

    def maintain(self, now: int | None = None) -> Maintained:
        """Drop the crops of OK frames whose part record has not come within
        :data:`~store.trace.crops.PART_WAIT_MS`; then, while the crops take more than the
        budget, evict the oldest OK samples, then crops still waiting for a verdict, then NG
        crops older than ``BDI_TRACE_NG_DAYS``. NG crops younger than that are never evicted;
        what they keep above the budget is ``over_budget_bytes`` (the caller warns)."""
        now = now_ms() if now is None else now
        deleting: list[str] = []
        with self.db.transaction() as tx:
            waited = tx.query(
                "SELECT f.frame_id FROM frame_images f JOIN verdicts v ON v.frame_id = f.frame_id "
                "WHERE f.keep IS NULL AND v.verdict = 'OK' AND v.received_ms < ?",
                (now - c.PART_WAIT_MS,),
            )
            tx.executemany(
                "UPDATE frame_images SET keep = 'drop' WHERE frame_id = ? AND keep IS NULL",
                [(r[0],) for r in waited],
            )
            shas = [
                r[0]
                for r in tx.query_in(
                    "SELECT DISTINCT sha256 FROM frame_images WHERE frame_id IN ({})",
                    [r[0] for r in waited],
                )
            ]
            done = Ingested()
            self._ingester.place(tx, shas, {}, now, done)
            dropped = len(done.deleting)
            deleting += done.deleting
            total = int(
                tx.query("SELECT COALESCE(SUM(size), 0) FROM crops WHERE kind <> 'deleting'")[0][0]
            )
            total -= self._evict(tx, total, now, deleting)
        self._ingester.finish_deletions(deleting)
        over = max(0, total - self.max_bytes)
        return Maintained(dropped, len(deleting) - dropped, total, over)

    def _evict(self, tx: Tx, total: int, now: int, deleting: list[str]) -> int:
        """Mark crops ``deleting`` in eviction order until ``total`` fits; bytes freed."""
        freed = 0
        tiers = (
            ("kind = 'ok_sample'", ()),
            ("kind = 'pending' AND created_ms < ?", (now - c.PART_WAIT_MS,)),
            ("kind = 'ng' AND kept_until_ms < ?", (now,)),
        )
        for where, params in tiers:
            while total - freed > self.max_bytes:
                rows = tx.query(
                    f"SELECT sha256, size FROM crops WHERE {where} "
                    f"ORDER BY created_ms, sha256 LIMIT {EVICT_CHUNK}",
                    params,
                )
                if not rows:
                    break
                chosen = []
                for sha, size in rows:
                    if total - freed <= self.max_bytes:
                        break
                    chosen.append(sha)
                    freed += int(size)
                tx.executemany(
                    "UPDATE crops SET kind = 'deleting' WHERE sha256 = ?", [(s,) for s in chosen]
                )
                deleting += chosen
        return freed

    # --- reading (docs/TRACE.md, the REST API) --------------------------------------------
    def verdicts(self, where: VerdictFilter, after: Cursor | None = None, limit: int = 100) -> Page:
        return queries.verdicts(self.db, where, after, limit)

    def part(self, part_id: str) -> dict[str, Any] | None:
        return queries.part(self.db, part_id)

    def frame(self, frame_id: str) -> dict[str, Any] | None:
        return queries.frame(self.db, self.files, frame_id)

    def crop_path(self, frame_id: str) -> Path | None:
        return queries.crop_path(self.db, self.files, frame_id)

    def close(self) -> None:
        self.db.close()
