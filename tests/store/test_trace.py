"""The trace store on SQLite and on PostgreSQL: idempotent ingest (first wins), the queries
of ``GET /verdicts`` and ``GET /parts/{id}``, which crops are kept, the disk budget."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from store.trace import Batch, Cursor, FrameImage, TraceDbError, TraceStore, VerdictFilter
from store.trace.crops import DAY_MS, PART_WAIT_MS, sampled
from store.trace.schema import SCHEMA_VERSION
from tests.helpers.settings import tiny_settings

T0 = 1_780_000_000_000  # ms; the records' own times
GB = 1 << 30


def iso(ms: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def verdict(frame_id: str, v: str = "OK", *, at: int = T0, part: str | None = "P1",
            recipe: str = "disc-a", role: str = "Master1", roi: str = "r1",
            score: float = 1.0) -> dict[str, Any]:  # fmt: skip
    return {
        "schema": "bdi.verdict/1", "frame_id": frame_id, "part_id": part, "recipe_id": recipe,
        "role_id": role, "roi_id": roi, "verdict": v, "score": score, "threshold": 2.0,
        "regions": [], "model_version": "m1", "produced_at": iso(at),
        "source": {"topic": "bdi.frames", "partition": 0, "offset": 1},
    }  # fmt: skip


def part_record(part_id: str, v: str, frames: list[dict[str, Any]], **extra: Any) -> dict:
    return {
        "schema": "bdi.part/1", "part_id": part_id, "recipe_id": "disc-a", "verdict": v,
        "frames": [{k: f[k] for k in ("frame_id", "role_id", "roi_id", "verdict", "score",
                                      "threshold", "model_version")} for f in frames],
        "missing": [], "unexpected": [], "plan_version": "p1",
        "first_frame_at": iso(T0), "last_frame_at": iso(T0), "decided_at": iso(T0 + 5),
        "reason": "test", **extra,
    }  # fmt: skip


def image(frame_id: str, part: str | None = "P1", size: int = 1000) -> FrameImage:
    body = hashlib.sha256(frame_id.encode()).digest() * (size // 32 + 1)
    data = b"\x89PNG\r\n\x1a\n" + body[: size - 8]
    return FrameImage(frame_id, data, part, "disc-a", "Master1", "r1", "bdi.frames", 0, 1)


def batch(frames=(), verdicts=(), parts=(), at: int = T0) -> Batch:
    return Batch(at, list(frames), list(verdicts), list(parts))


@pytest.fixture(params=["sqlite", "postgresql"])
def make_trace(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[..., TraceStore]]:
    """``make_trace(**settings)``: a TraceStore on a fresh database of the parameter's kind
    (the same database for every call of one test: a reopen)."""
    url = None
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres").new_database()
    opened: list[TraceStore] = []

    def make(**overrides: Any) -> TraceStore:
        settings = tiny_settings(
            models_dir=tmp_path / "models", trace_db_url=url or "", **overrides
        )
        store = TraceStore.open(settings)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


def count(store: TraceStore, table: str) -> int:
    return int(store.db.read(f"SELECT COUNT(*) FROM {table}")[0][0])


def crop_files(store: TraceStore) -> list[Path]:
    return sorted(p for p in store.files.folder.rglob("*") if p.is_file())


def keep(store: TraceStore, frame_id: str) -> str | None:
    return store.db.read("SELECT keep FROM frame_images WHERE frame_id = ?", (frame_id,))[0][0]


# --- idempotence ------------------------------------------------------------------------
def test_a_redelivered_batch_changes_nothing(make_trace):
    store = make_trace(trace_ok_sample=0)
    vs = [verdict("f1"), verdict("f2", "NG")]
    b = batch([image("f1"), image("f2")], vs, [part_record("P1", "NG", vs)])
    first = store.ingest(b)
    assert (first.frames, first.verdicts, first.parts, first.ignored) == (2, 2, 1, 0)
    tables = ("verdicts", "parts", "part_frames", "frame_images", "crops")
    before = {t: count(store, t) for t in tables}
    files = crop_files(store)
    again = store.ingest(b)
    assert (again.frames, again.verdicts, again.parts, again.conflicts) == (0, 0, 0, 0)
    assert again.ignored == 5
    assert {t: count(store, t) for t in tables} == before == {
        "verdicts": 2, "parts": 1, "part_frames": 2, "frame_images": 2, "crops": 2,
    }  # fmt: skip
    assert crop_files(store) == files


def test_a_second_different_verdict_is_ignored_first_wins(make_trace):
    store = make_trace()
    store.ingest(batch(verdicts=[verdict("f1", "OK")]))
    got = store.ingest(batch(verdicts=[verdict("f1", "NG", score=9.0), verdict("f1", "OK")]))
    assert (got.verdicts, got.conflicts) == (0, 1)
    assert store.frame("f1")["verdict"]["verdict"] == "OK"
    # within one batch too: the first of the batch
    got = store.ingest(batch(verdicts=[verdict("f2", "NG"), verdict("f2", "OK")]))
    assert got.verdicts == 1 and store.frame("f2")["verdict"]["verdict"] == "NG"


def test_unusable_documents_are_counted_not_stored(make_trace):
    store = make_trace()
    got = store.ingest(batch(verdicts=[{"frame_id": "x"}, {"verdict": "OK"}],
                             parts=[{"part_id": "P", "verdict": "MAYBE"}]))  # fmt: skip
    assert got.bad == 3 and count(store, "verdicts") == count(store, "parts") == 0


def test_schema_is_versioned_and_a_newer_one_refused(make_trace):
    store = make_trace()
    assert store.db.read("SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]
    store.ingest(batch(verdicts=[verdict("f1")]))
    store.close()
    again = make_trace()  # reopened: same rows, no second version row
    assert again.db.read("SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]
    assert count(again, "verdicts") == 1
    with again.db.transaction() as tx:
        tx.execute("UPDATE schema_version SET version = 99")
    with pytest.raises(TraceDbError, match="schema version 99, newer"):
        make_trace()


def test_unknown_url_scheme_is_one_clear_error(tmp_path):
    settings = tiny_settings(models_dir=tmp_path, trace_db_url="mysql://u:secret@h/db")
    with pytest.raises(TraceDbError, match="BDI_TRACE_DB_URL must be postgresql://") as err:
        TraceStore.open(settings)
    assert "secret" not in str(err.value)


def test_unreachable_postgres_names_it_without_the_password(tmp_path):
    from tests.helpers.postgres import free_port

    url = f"postgresql://bdi:s3cret@127.0.0.1:{free_port()}/trace"
    with pytest.raises(TraceDbError, match="cannot connect to the trace database") as err:
        TraceStore.open(tiny_settings(models_dir=tmp_path, trace_db_url=url))
    assert "s3cret" not in str(err.value) and "***" in str(err.value)


# --- queries ----------------------------------------------------------------------------
def _corpus(store: TraceStore) -> list[dict[str, Any]]:
    docs = []
    for i in range(60):
        docs.append(verdict(
            f"f{i:03d}", ("OK", "NG", "ERROR")[i % 3], at=T0 + (i // 2) * 1000,
            recipe=("disc-a", "disc-b")[i % 2], role=("Master1", "Master2")[i % 4 // 2],
            roi=f"r{i % 5}", part=f"P{i // 6}",
        ))  # fmt: skip
    store.ingest(batch(verdicts=docs))
    return docs


def _ids(docs) -> list[str]:
    return [d["frame_id"] for d in docs]


def test_filters_select_exactly_the_matching_verdicts_newest_first(make_trace):
    store = make_trace()
    docs = _corpus(store)
    newest_first = sorted(docs, key=lambda d: (d["produced_at"], d["frame_id"]), reverse=True)
    page = store.verdicts(VerdictFilter(), limit=1000)
    assert _ids(page.verdicts) == _ids(newest_first) and page.next is None
    cases = [
        (VerdictFilter(recipe_id="disc-b"), lambda d: d["recipe_id"] == "disc-b"),
        (VerdictFilter(role_id="Master2"), lambda d: d["role_id"] == "Master2"),
        (VerdictFilter(recipe_id="disc-a", role_id="Master1", roi_id="r2"),
         lambda d: (d["recipe_id"], d["role_id"], d["roi_id"]) == ("disc-a", "Master1", "r2")),
        (VerdictFilter(verdict="NG"), lambda d: d["verdict"] == "NG"),
        (VerdictFilter(part_id="P3"), lambda d: d["part_id"] == "P3"),
        (VerdictFilter(since_ms=T0 + 10_000, until_ms=T0 + 20_000),
         lambda d: iso(T0 + 10_000) <= d["produced_at"] < iso(T0 + 20_000)),
    ]  # fmt: skip
    for where, match in cases:
        got = store.verdicts(where, limit=1000).verdicts
        assert _ids(got) == _ids([d for d in newest_first if match(d)]), where
        assert got, where


def test_keyset_pages_cover_everything_once_and_survive_inserts(make_trace):
    store = make_trace()
    docs = _corpus(store)
    seen: list[str] = []
    cursor: Cursor | None = None
    pages = 0
    while True:
        page = store.verdicts(VerdictFilter(verdict="OK"), after=cursor, limit=7)
        seen += _ids(page.verdicts)
        pages += 1
        if pages == 1:  # newer rows arriving meanwhile do not shift the pages
            store.ingest(batch(verdicts=[verdict("new", at=T0 + 999_000)]))
        if page.next is None:
            break
        cursor = Cursor.decode(page.next.encode())
    want = [d for d in docs if d["verdict"] == "OK"]
    assert sorted(seen) == sorted(_ids(want)) and len(seen) == len(set(seen)) == 20
    assert pages == 3


def test_a_garbled_cursor_or_limit_is_refused(make_trace):
    from store.errors import InvalidValueError

    store = make_trace()
    with pytest.raises(InvalidValueError, match="not a page cursor"):
        Cursor.decode("!!nonsense")
    with pytest.raises(InvalidValueError, match="limit must be 1 to 1000"):
        store.verdicts(VerdictFilter(), limit=0)


def test_a_part_comes_with_its_frames_crops_and_late_frames(make_trace):
    store = make_trace(trace_ok_sample=0)
    vs = [verdict("a1", role="Master1"), verdict("a2", "NG", role="Master2")]
    late = {"schema": "bdi.part_late/1", "part_id": "P1",
            "frame": verdict("a3", role="Master3")}  # fmt: skip
    extra = verdict("a4", role="Master9")  # not in the plan: listed as unexpected
    record = part_record("P1", "NG", vs, unexpected=[{k: extra[k] for k in
                         ("frame_id", "role_id", "roi_id", "verdict", "score")}])  # fmt: skip
    store.ingest(batch([image(f) for f in ("a1", "a2", "a3", "a4")], [*vs, extra],
                       [record, late]))  # fmt: skip
    got = store.part("P1")
    assert got["record"]["verdict"] == "NG" and got["record"]["plan_version"] == "p1"
    assert [(f["frame_id"], f["verdict"], f["crop_kept"]) for f in got["frames"]] == [
        ("a1", "OK", True), ("a2", "NG", True),  # a part that is not OK keeps every crop
        ("a4", "OK", True),
    ]  # fmt: skip
    assert got["other_frames"] == []
    assert got["frames"][1]["stored_verdict"]["score"] == 1.0
    assert [x["frame"]["frame_id"] for x in got["late"]] == ["a3"]
    assert store.part("nope") is None
    undecided = store.ingest(batch(verdicts=[verdict("b1", part="P2")]))
    assert undecided.verdicts == 1
    open_part = store.part("P2")
    assert open_part["record"] is None and [f["frame_id"] for f in open_part["other_frames"]] == [
        "b1"
    ]


# --- crops ------------------------------------------------------------------------------
def test_which_crops_are_kept(make_trace):
    store = make_trace(trace_ok_sample=0)
    ok, ng, err = verdict("ok1"), verdict("ng1", "NG"), verdict("er1", "ERROR")
    store.ingest(batch([image("ok1"), image("ng1"), image("er1"), image("lone", part=None)]))
    assert len(crop_files(store)) == 4  # pending: no verdict yet
    store.ingest(batch(verdicts=[ok, ng, err, verdict("lone", part=None)]))
    assert keep(store, "ng1") == keep(store, "er1") == "ng"
    assert keep(store, "lone") == "drop"  # OK without a part: nothing to wait for
    assert keep(store, "ok1") is None  # OK, its part undecided
    assert store.crop_path("lone") is None and len(crop_files(store)) == 3
    store.ingest(batch(parts=[part_record("P1", "OK", [ok])]))
    assert keep(store, "ok1") == "drop" and store.crop_path("ok1") is None
    assert store.crop_path("ng1").read_bytes() == image("ng1").data
    assert store.crop_path("ng1").name == hashlib.sha256(image("ng1").data).hexdigest() + ".png"
    assert len(crop_files(store)) == 2


def test_an_incomplete_part_keeps_its_ok_crops_whatever_the_order(make_trace):
    store = make_trace(trace_ok_sample=0)
    v = verdict("k1", part="P9")
    # the part record first, then the verdict, then the image
    store.ingest(batch(parts=[part_record("P9", "INCOMPLETE", [v], missing=["Master2/r2"])]))
    store.ingest(batch(verdicts=[v]))
    store.ingest(batch([image("k1", part="P9")]))
    assert keep(store, "k1") == "ng" and store.crop_path("k1") is not None
    assert store.frame("k1")["crop"]["kind"] == "ng"


def test_ok_frames_are_sampled_by_frame_id(make_trace):
    store = make_trace(trace_ok_sample=4)
    ids = [f"s{i}" for i in range(40)]
    vs = [verdict(i) for i in ids]
    store.ingest(batch([image(i) for i in ids], vs, [part_record("P1", "OK", vs)]))
    kept = {i for i in ids if store.crop_path(i) is not None}
    assert kept == {i for i in ids if sampled(i, 4)} and 0 < len(kept) < 40


def test_an_ok_frame_whose_part_never_comes_is_let_go(make_trace):
    store = make_trace(trace_ok_sample=0)
    store.ingest(batch([image("w1", part="NOPLAN")], [verdict("w1", part="NOPLAN")]))
    assert store.maintain(T0 + 1000).dropped == 0 and store.crop_path("w1") is not None
    done = store.maintain(T0 + PART_WAIT_MS + 1)
    assert done.dropped == 1 and store.crop_path("w1") is None and not crop_files(store)


def test_the_budget_evicts_oldest_ok_samples_first_never_young_ng(make_trace):
    size = 10_000
    store = make_trace(trace_ok_sample=1, trace_max_gb=25_000 / GB, trace_ng_days=30)
    oks = [verdict(f"o{i}", part=None) for i in range(4)]
    for i, v in enumerate(oks):  # one batch each: o0 is the oldest
        store.ingest(batch([image(v["frame_id"], None, size)], [v], at=T0 + i))
    ngs = [verdict(f"n{i}", "NG", part=None) for i in range(3)]
    store.ingest(batch([image(v["frame_id"], None, size) for v in ngs], ngs, at=T0 + 10))
    assert store.stored_bytes() == 7 * size
    done = store.maintain(T0 + 20)
    assert done.evicted == 4 and done.stored_bytes == 3 * size
    assert done.over_budget_bytes == 5_000  # three young NG crops: kept, over budget
    assert [i for i in range(4) if store.crop_path(f"o{i}")] == []
    assert all(store.crop_path(v["frame_id"]) for v in ngs)
    # older than BDI_TRACE_NG_DAYS: now they may go, oldest first, only as far as needed
    later = store.maintain(T0 + 10 + 30 * DAY_MS + 1)
    assert later.evicted == 1 and later.over_budget_bytes == 0
    assert len(crop_files(store)) == 2


def test_a_kill_between_marking_and_removing_a_crop_is_finished_on_open(make_trace):
    store = make_trace(trace_ok_sample=0)
    store.ingest(batch([image("d1", part=None)]))
    (path,) = crop_files(store)
    with store.db.transaction() as tx:  # as if killed after the commit, before the unlink
        tx.execute("UPDATE crops SET kind = 'deleting'")
    stray = path.parent / f".{path.name}.123.abcd.tmp"  # a writer killed mid-write
    stray.write_bytes(b"x")
    store.close()
    again = make_trace()
    assert not path.exists() and not stray.exists() and count(again, "crops") == 0
    assert os.listdir(path.parent) == []
