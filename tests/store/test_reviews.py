"""The trace store's ``reviews`` table (store/trace/reviews.py) on SQLite and PostgreSQL:
added by the schema's second migration (a version-1 database keeps its rows), reviews
stored and read back per frame, oldest first."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from store.trace import Batch
from store.trace import reviews as records
from store.trace.db import Database, target
from store.trace.reviews import Review
from store.trace.schema import SCHEMA_VERSION, V1, migrate

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


def review(frame_id: str, at: int, **fields: object) -> Review:
    values: dict[str, object] = dict(
        review_id=Review.new_id(), frame_id=frame_id, part_id="SN-1", recipe_id="disc-a",
        role_id="Master1", roi_id="r1", verdict="NG", score=3.5, decision="overrule",
        reviewer="ana", reason="a mark, not a crack", reviewed_ms=at, dataset_label="ok",
        dataset_item="20261127-165714-000000_0000abcd.png", model_version="m1",
        calibration_version="c1", appended=True, new_model_version="m2", note="a false reject",
    )  # fmt: skip
    values.update(fields)
    return Review(**values)  # type: ignore[arg-type]


def test_a_version_1_database_is_migrated_and_keeps_its_rows(db: Database) -> None:
    with db.transaction() as tx:  # a database as the first schema left it
        tx.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        for statement in V1.split(";"):
            if statement.strip():
                tx.execute(statement)
        tx.execute("INSERT INTO schema_version (version) VALUES (1)")
        tx.execute(
            "INSERT INTO verdicts (frame_id, verdict, produced_ms, received_ms, json) "
            "VALUES ('f1', 'NG', 1, 1, '{}')"
        )
    assert migrate(db) == 1
    assert db.read("SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]
    assert SCHEMA_VERSION >= 2  # later migrations add tables beside it
    assert db.read("SELECT frame_id FROM verdicts") == [("f1",)]
    assert db.read("SELECT COUNT(*) FROM reviews") == [(0,)]
    assert migrate(db) == SCHEMA_VERSION  # again: nothing to do


def test_reviews_are_stored_and_read_per_frame_oldest_first(db: Database) -> None:
    migrate(db)
    second = review("f1", T0 + 5, decision="confirm", dataset_label="ng", appended=False,
                    new_model_version=None, reason="")  # fmt: skip
    first = review("f1", T0)
    other = review("f2", T0 + 1, verdict="OK", dataset_label=None, dataset_item=None)
    for r in (second, other, first):
        records.add(db, r)
    got = records.of_frame(db, "f1")
    assert [g["review_id"] for g in got] == [first.review_id, second.review_id]
    assert got[0] == first.to_dict()
    assert got[0]["reviewed_at"] == "2026-05-28T20:26:40.000+00:00"
    assert (got[1]["decision"], got[1]["dataset_label"], got[1]["appended"]) == (
        "confirm", "ng", False,
    )  # fmt: skip
    assert records.of_frame(db, "f3") == []
    row = db.read(
        "SELECT reviewer, decision, dataset_label, new_model_version FROM reviews "
        "WHERE review_id = ?",
        (first.review_id,),
    )
    assert row == [("ana", "overrule", "ok", "m2")]


def test_a_review_id_is_stored_once(db: Database) -> None:
    migrate(db)
    once = review("f1", T0)
    records.add(db, once)
    with pytest.raises(Exception, match="(?i)unique|duplicate"):
        records.add(db, once)
    assert len(records.of_frame(db, "f1")) == 1


def test_the_trace_store_opens_with_the_reviews_table(tmp_path: Path) -> None:
    from store.trace import TraceStore
    from tests.helpers.settings import tiny_settings

    store = TraceStore.open(tiny_settings(models_dir=tmp_path / "models"))
    try:
        store.ingest(Batch(T0, [], [], []))
        records.add(store.db, review("f9", T0))
        assert [r["frame_id"] for r in records.of_frame(store.db, "f9")] == ["f9"]
    finally:
        store.close()
