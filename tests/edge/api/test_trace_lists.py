"""The trace's lists for a screen: ``GET /parts`` (the newest decided parts, in brief) and
``GET /review/queue`` (the NG, ERROR and near-threshold frames nobody reviewed yet), from a
trace database filled through the store's own ingest."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from store.trace import Batch, TraceStore
from store.trace import reviews as records
from store.trace.reviews import Review
from tests.helpers.settings import tiny_settings

T0 = 1_780_000_000_000


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def verdict(frame_id: str, v: str, score: float, at: int, part: str | None) -> dict[str, Any]:
    return {
        "schema": "bdi.verdict/1", "frame_id": frame_id, "part_id": part,
        "recipe_id": "disc-a", "role_id": "Master1", "roi_id": "r1", "verdict": v,
        "score": score, "threshold": 10.0, "regions": [], "model_version": "m1",
        "calibration_version": "c1", "produced_at": iso(at), "p_value": 0.01 if v == "NG" else 0.5,
        "source": {"topic": "bdi.frames", "partition": 0, "offset": 1},
    }  # fmt: skip


def part_record(part_id: str, v: str, at: int, frames: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "schema": "bdi.part/1", "part_id": part_id, "recipe_id": "disc-a", "verdict": v,
        "reason": f"{v} by test", "plan_version": "p1", "deadline_ms": 5000,
        "frames": [{k: f[k] for k in ("frame_id", "role_id", "roi_id", "verdict", "score")}
                   for f in frames],
        "missing": [{"role_id": "Master1", "roi_id": "r2"}] if v == "INCOMPLETE" else [],
        "unexpected": [], "first_frame_at": iso(at - 100), "last_frame_at": iso(at - 50),
        "decided_at": iso(at), "code_version": "0.1.0",
    }  # fmt: skip


@pytest.fixture
def trace_store(tmp_path: Path) -> Iterator[TraceStore]:
    """The trace database the app of ``client`` reads, opened as ``bdi trace`` does."""
    store = TraceStore.open(tiny_settings(models_dir=tmp_path / "models"))
    yield store
    store.close()


@pytest.fixture
def line(trace_store: TraceStore, client: TestClient) -> TestClient:
    """Parts SN-0..SN-5 decided one second apart (SN-1 NG, SN-3 INCOMPLETE, SN-4 ERROR),
    one frame each; frame verdicts: ``ng`` NG, ``err`` ERROR, ``nm`` NO_MODEL, ``near`` OK at
    0.9 of its threshold, ``far`` OK at 0.2, ``ng-old`` an older NG already reviewed."""
    kinds = {1: "NG", 3: "INCOMPLETE", 4: "ERROR"}
    for i in range(6):
        v = verdict(f"sn{i}", "NG" if i == 1 else "OK", 12.0 if i == 1 else 1.0, T0 + i, f"SN-{i}")
        record = part_record(f"SN-{i}", kinds.get(i, "OK"), T0 + i * 1000, [v])
        trace_store.ingest(Batch(T0, [], [v], [record]))
    frames = [verdict("ng-old", "NG", 20.0, T0 + 10_000, None),
              verdict("far", "OK", 2.0, T0 + 10_001, None),
              verdict("near", "OK", 9.0, T0 + 10_002, "SN-9"),
              verdict("nm", "NO_MODEL", 0.0, T0 + 10_003, None),
              verdict("err", "ERROR", 0.0, T0 + 10_004, None),
              verdict("ng", "NG", 15.0, T0 + 10_005, "SN/7")]  # fmt: skip
    trace_store.ingest(Batch(T0, [], frames, []))
    old = Review(
        review_id=Review.new_id(), frame_id="ng-old", part_id=None, recipe_id="disc-a",
        role_id="Master1", roi_id="r1", verdict="NG", score=20.0, decision="confirm",
        reviewer="ana", reason="", reviewed_ms=T0 + 20_000, dataset_label=None,
        dataset_item=None, model_version="m1", calibration_version="c1", appended=False,
        new_model_version=None, note="",
    )  # fmt: skip
    records.add(trace_store.db, old)
    return client


# --- GET /parts -------------------------------------------------------------------------
def test_recent_parts_newest_decision_first_in_brief(line):
    r = line.get("/parts", params={"limit": 4})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [p["part_id"] for p in body["parts"]] == ["SN-5", "SN-4", "SN-3", "SN-2"]
    assert body["count"] == 4
    sn3 = body["parts"][2]
    assert (sn3["verdict"], sn3["reason"], sn3["plan_version"]) == (
        "INCOMPLETE",
        "INCOMPLETE by test",
        "p1",
    )
    assert (sn3["frames"], sn3["not_ok"], sn3["recipe_id"]) == (1, 0, "disc-a")
    assert sn3["missing"] == [{"role_id": "Master1", "roi_id": "r2"}]
    assert sn3["decided_at"] == iso(T0 + 3000) and sn3["part_url"] == "/parts/SN-3"


def test_a_parts_frames_carry_their_p_value(line):
    (frame,) = line.get("/parts/SN-1").json()["frames"]
    assert (frame["verdict"], frame["p_value"]) == ("NG", 0.01)


def test_recent_parts_by_verdict_and_recipe(line):
    r = line.get("/parts", params={"verdict": "NG,INCOMPLETE"})
    assert [p["part_id"] for p in r.json()["parts"]] == ["SN-3", "SN-1"]
    assert r.json()["parts"][1]["not_ok"] == 1
    r = line.get("/parts", params={"verdict": ["error"], "recipe_id": "DISC-A"})
    assert [p["part_id"] for p in r.json()["parts"]] == ["SN-4"]
    assert line.get("/parts", params={"recipe_id": "disc-b"}).json() == {"parts": [], "count": 0}


@pytest.mark.parametrize(
    ("params", "code", "words"),
    [({"verdict": "MAYBE"}, "invalid_filter", "unknown verdict 'MAYBE'"),
     ({"limit": 0}, "validation_error", "limit")],
)  # fmt: skip
def test_recent_parts_refuse_a_bad_filter_in_words(line, params, code, words):
    r = line.get("/parts", params=params)
    assert r.status_code in (400, 422) and r.json()["error"] == code
    assert words in r.text


def test_recent_parts_before_any_trace_is_503_in_words(client):
    r = client.get("/parts")
    assert r.status_code == 503 and r.json()["error"] == "trace_unavailable"


# --- GET /review/queue -----------------------------------------------------------------
def test_the_queue_holds_ng_error_and_near_threshold_frames_not_reviewed(line):
    r = line.get("/review/queue")
    assert r.status_code == 200, r.text
    body = r.json()
    got = [(i["frame_id"], i["queued_as"]) for i in body["items"]]
    # SN-1's NG frame (sn1) is older than the others; reviewed ng-old and far OK are out
    assert got == [("ng", "NG"), ("err", "ERROR"), ("near", "near_threshold"), ("sn1", "NG")]
    first = body["items"][0]
    assert first["verdict"]["score"] == 15.0 and first["reviews"] == 0
    assert (first["frame_url"], first["part_url"]) == ("/frames/ng", "/parts/SN%2F7")
    assert body["count"] == 4 and body["next_cursor"] is None


def test_the_queue_options_reviewed_near_verdict_and_pages(line):
    q = line.get("/review/queue", params={"reviewed": "true", "near": 1}).json()
    got = {i["frame_id"]: i["reviews"] for i in q["items"]}
    assert got == {"ng": 0, "err": 0, "ng-old": 1, "sn1": 0}
    q = line.get("/review/queue", params={"verdict": "none", "near": 0.15}).json()
    assert [i["frame_id"] for i in q["items"]] == ["near", "far"]
    q = line.get("/review/queue", params={"verdict": "NO_MODEL", "near": 1}).json()
    assert [i["frame_id"] for i in q["items"]] == ["nm"]
    seen, page = [], line.get("/review/queue", params={"limit": 3}).json()
    while True:
        seen += [i["frame_id"] for i in page["items"]]
        if page["next_cursor"] is None:
            break
        page = line.get("/review/queue", params={"limit": 3, "cursor": page["next_cursor"]}).json()
    assert seen == ["ng", "err", "near", "sn1"]


def test_a_review_takes_the_frame_out_of_the_queue(line, trace_store):
    old = records.of_frame(trace_store.db, "ng-old")[0]
    fields = {k: old[k] for k in Review.__dataclass_fields__}
    records.add(
        trace_store.db, Review(**{**fields, "review_id": Review.new_id(), "frame_id": "ng"})
    )
    assert "ng" not in [i["frame_id"] for i in line.get("/review/queue").json()["items"]]


@pytest.mark.parametrize(
    ("params", "code", "words"),
    [({"verdict": "OK"}, "invalid_filter", "unknown verdict 'OK'"),
     ({"cursor": "nope"}, "invalid_cursor", "next_cursor"),
     ({"near": 2}, "validation_error", "near")],
)  # fmt: skip
def test_the_queue_refuses_a_bad_filter_in_words(line, params, code, words):
    r = line.get("/review/queue", params=params)
    assert r.status_code in (400, 422) and r.json()["error"] == code
    assert words in r.text


def test_an_operator_reads_both_lists(line, make_client):
    operator = make_client(api_key="s3cret-key-for-tests", api_key_role="operator")
    operator.headers["X-API-Key"] = "s3cret-key-for-tests"
    assert operator.get("/auth/me").json()["role"] == "operator"
    assert operator.get("/parts").json()["count"] == 6
    assert operator.get("/review/queue").json()["count"] == 4
