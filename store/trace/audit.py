"""The audit log (docs/AUTH.md): who did what over the REST API, when, to what, and how
it ended (the HTTP status). Rows are only ever added; the REST API writes one for every
state-changing request and reads them back newest first.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from store.trace.db import Database

COLUMNS = ("audit_id", "at_ms", "user_name", "role", "action", "target", "outcome", "request_id")
MAX_LIMIT = 1000


@dataclass(frozen=True)
class AuditEntry:
    """One action, as stored (``json`` keeps all of it; the columns are for queries)."""

    at_ms: int
    user: str | None  # None: nobody was authenticated (a refused request)
    role: str | None
    action: str  # "fit_ok", "rollback", "review", "datasets.upload", "login", ...
    target: str | None  # recipe/role/roi, a frame id, a recipe, a user name
    outcome: int  # the HTTP status of the answer
    request_id: str | None
    detail: dict[str, Any] = field(default_factory=dict)
    # nanoseconds first: entries of the same millisecond keep their order
    audit_id: str = field(default_factory=lambda: f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}")

    def to_dict(self) -> dict[str, Any]:
        at = datetime.fromtimestamp(self.at_ms / 1000, UTC).isoformat(timespec="milliseconds")
        return {**asdict(self), "at": at}


def add(db: Database, entry: AuditEntry) -> None:
    """Store one entry (its own transaction)."""
    values = entry.to_dict()
    row = {**values, "user_name": entry.user}
    with db.transaction() as tx:
        tx.execute(
            f"INSERT INTO audit ({', '.join(COLUMNS)}, json) "  # noqa: S608 - fixed names
            f"VALUES ({', '.join('?' * (len(COLUMNS) + 1))})",
            [*(row[c] for c in COLUMNS), orjson.dumps(values).decode()],
        )


def latest(
    db: Database, limit: int = 100, user: str | None = None, action: str | None = None
) -> list[dict[str, Any]]:
    """The newest ``limit`` entries (of ``user``, of ``action``), newest first."""
    where, params = [], []
    if user is not None:
        where.append("user_name = ?")
        params.append(user)
    if action is not None:
        where.append("action = ?")
        params.append(action)
    clause = f"WHERE {' AND '.join(where)} " if where else ""
    rows = db.read(
        f"SELECT json FROM audit {clause}"  # noqa: S608 - fixed clauses, values are bound
        "ORDER BY at_ms DESC, audit_id DESC LIMIT ?",
        (*params, max(1, min(int(limit), MAX_LIMIT))),
    )
    return [orjson.loads(r[0]) for r in rows]
