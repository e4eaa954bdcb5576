"""The trace store's ``audit`` table (store/trace/audit.py) on SQLite and PostgreSQL: added
by the schema's third migration (a version-2 database keeps its rows), entries stored and
read back newest first, filtered by user and action, the limit bounded."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from store.trace import audit
from store.trace.audit import AuditEntry
from store.trace.db import Database, target
from store.trace.schema import MIGRATIONS, SCHEMA_VERSION, migrate

T0 = 1_780_000_000_000


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A fresh, empty database of the parameter's kind (no tables yet)."""
    url = None
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres").new_database()
    opened = Database.open(target(url, tmp_path / "models"))
    yield opened
    opened.close()


def entry(at: int, user: str | None, action: str, **fields: object) -> AuditEntry:
    values: dict[str, object] = dict(
        at_ms=at, user=user, role="engineer", action=action, target="disc-a/Master1/r1",
        outcome=200, request_id=f"req-{at}", detail={"method": "POST", "via": "session"},
    )  # fmt: skip
    values.update(fields)
    return AuditEntry(**values)  # type: ignore[arg-type]


def test_a_version_2_database_is_migrated_and_keeps_its_rows(db: Database) -> None:
    with db.transaction() as tx:  # a database as the second schema left it
        tx.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        for statement in ";".join(MIGRATIONS[:2]).split(";"):
            if statement.strip():
                tx.execute(statement)
        tx.execute("INSERT INTO schema_version (version) VALUES (2)")
        tx.execute(
            "INSERT INTO verdicts (frame_id, verdict, produced_ms, received_ms, json) "
            "VALUES ('f1', 'NG', 1, 1, '{}')"
        )
    assert migrate(db) == 2
    assert db.read("SELECT version FROM schema_version") == [(SCHEMA_VERSION,)] == [(3,)]
    assert db.read("SELECT frame_id FROM verdicts") == [("f1",)]
    assert db.read("SELECT COUNT(*) FROM audit") == [(0,)]
    assert migrate(db) == SCHEMA_VERSION  # again: nothing to do


def test_entries_are_read_newest_first_and_filtered(db: Database) -> None:
    migrate(db)
    first = entry(T0, "ana", "fit_ok")
    second = entry(T0 + 5, "olo", "review", role="operator", target="frame-9")
    third = entry(T0 + 5, None, "login_failed", role=None, outcome=401, target="eve")
    fourth = entry(T0 + 9, "ana", "rollback", outcome=404)
    for e in (first, second, third, fourth):
        audit.add(db, e)
    got = audit.latest(db)
    # the same millisecond keeps the order of writing
    assert [g["audit_id"] for g in got] == [e.audit_id for e in (fourth, third, second, first)]
    assert got[-1] == first.to_dict()
    assert got[-1]["at"] == "2026-05-28T20:26:40.000+00:00"
    assert got[-1]["detail"] == {"method": "POST", "via": "session"}
    assert [g["action"] for g in audit.latest(db, user="ana")] == ["rollback", "fit_ok"]
    assert [g["user"] for g in audit.latest(db, action="review")] == ["olo"]
    assert audit.latest(db, user="ana", action="review") == []
    assert len(audit.latest(db, limit=2)) == 2
    assert len(audit.latest(db, limit=0)) == 1  # at least one, at most MAX_LIMIT
    row = db.read("SELECT user_name, role, action, target, outcome, request_id FROM audit "
                  "WHERE action = 'login_failed'")  # fmt: skip
    assert row == [(None, None, "login_failed", "eve", 401, f"req-{T0 + 5}")]
