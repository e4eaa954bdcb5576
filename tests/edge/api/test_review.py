"""The review loop over REST (edge/api/routes/review.py): ``POST /frames/{id}/review`` and
``GET /frames/{id}/reviews`` against a trace database filled through the store's own
ingest and a model trained over the API: what goes into which dataset with which
provenance, the append into the memory bank, the records, the refusals."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from store.trace import Batch, FrameImage, TraceStore
from tests.helpers.api import IDS, files, fit
from tests.helpers.images import ng_png, ok_png
from tests.helpers.settings import tiny_settings

pytestmark = pytest.mark.slow  # a (tiny) model is trained for each test
T0 = 1_780_000_000_000
KEY = "s3cret-key-for-tests"
WHO = {"reviewer": "ana.silva", "reason": "a polishing mark, not a crack"}


def verdict(frame_id: str, v: str, model_version: str | None, **extra: Any) -> dict[str, Any]:
    return {
        "schema": "bdi.verdict/1", "frame_id": frame_id, "part_id": "SN-1",
        "recipe_id": "disc-a", "role_id": IDS["role_id"], "roi_id": IDS["roi_id"],
        "verdict": v, "score": 40.0 if v == "NG" else 1.0, "threshold": 25.0, "regions": [],
        "model_version": model_version, "calibration_version": "c1", "image_sha256": "ab" * 32,
        "produced_at": datetime.fromtimestamp(T0 / 1000, UTC).isoformat(),
        "source": {"topic": "bdi.frames", "partition": 0, "offset": 1}, **extra,
    }  # fmt: skip


def frame(frame_id: str, data: bytes, part: str | None = "SN-1") -> FrameImage:
    return FrameImage(frame_id, data, part, "disc-a", IDS["role_id"], IDS["roi_id"],
                      "bdi.frames", 0, 1)  # fmt: skip


@pytest.fixture
def make_trace(tmp_path: Path) -> Iterator[Callable[..., TraceStore]]:
    """The trace database the app of ``make_client`` reads, opened as ``bdi trace`` does."""
    opened: list[TraceStore] = []

    def make(**overrides: Any) -> TraceStore:
        store = TraceStore.open(tiny_settings(models_dir=tmp_path / "models", **overrides))
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


@pytest.fixture
def line(trained: TestClient, make_trace: Callable[..., TraceStore]) -> TestClient:
    """The trained model's frames in the trace: ``ng1`` (NG, an NG disc's crop), ``ok1``
    (OK, kept), ``ok-dropped`` (OK, crop not kept), ``err1`` (ERROR), ``nm1`` (NO_MODEL),
    ``img-only`` (image, no verdict yet)."""
    version = trained.get("/state", params=IDS).json()["version"]
    store = make_trace(trace_ok_sample=0)
    docs = [verdict("ng1", "NG", version), verdict("ok1", "OK", version),
            verdict("ok-dropped", "OK", version, part_id=None),
            verdict("err1", "ERROR", version), verdict("nm1", "NO_MODEL", None)]  # fmt: skip
    images = [frame("ng1", ng_png(3)), frame("ok1", ok_png(70)), frame("err1", ng_png(4)),
              frame("ok-dropped", ok_png(71), part=None), frame("nm1", ng_png(5)),
              frame("img-only", ok_png(72))]  # fmt: skip
    store.ingest(Batch(T0, images, docs, []))  # SN-1 has no part record: its crops wait
    return trained


def review(client: TestClient, frame_id: str, decision: str, **body: Any) -> httpx.Response:
    return client.post(f"/frames/{frame_id}/review", json={"decision": decision, **WHO, **body})


def dataset(client: TestClient, label: str) -> list[dict[str, Any]]:
    listing = client.get("/datasets/list", params={**IDS, "with_meta": "true"}).json()
    return listing[label]


def infer(client: TestClient, blob: bytes) -> dict[str, Any]:
    r = client.post("/infer", data=IDS, files=files("image", [blob]))
    assert r.status_code == 200, r.text
    return r.json()


# --- what goes where ----------------------------------------------------------------------
def test_an_overruled_ng_goes_into_the_ok_dataset_with_its_provenance(line):
    version = line.get("/state", params=IDS).json()["version"]
    r = review(line, "ng1", "overrule")
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["verdict"], body["decision"], body["dataset_label"]) == ("NG", "overrule", "ok")
    assert (body["reviewer"], body["reason"]) == (WHO["reviewer"], WHO["reason"])
    assert (body["appended"], body["new_model_version"]) == (False, None)
    assert body["model_version"] == version and body["part_id"] == "SN-1"
    assert body["note"].startswith("a false reject: the crop is in the OK dataset")
    (item,) = dataset(line, "ok")
    assert item["name"] == body["dataset_item"] and dataset(line, "ng") == []
    provenance = item["meta"]["extra"]["review"]
    assert provenance == {
        "review_id": body["review_id"], "frame_id": "ng1", "part_id": "SN-1", "verdict": "NG",
        "score": 40.0, "threshold": 25.0, "model_version": version, "calibration_version": "c1",
        "image_sha256": "ab" * 32, "decision": "overrule", "reviewer": WHO["reviewer"],
        "reason": WHO["reason"], "reviewed_at": body["reviewed_at"],
    }  # fmt: skip
    assert item["meta"]["source"] == "review of frame ng1"
    stored = line.get("/datasets/file", params={**IDS, "label": "ok", "name": item["name"]})
    assert stored.status_code == 200 and stored.content.startswith(b"\x89PNG")
    assert line.get("/state", params=IDS).json()["version"] == version  # no append asked


def test_an_overruled_ng_appended_scores_ok_under_a_new_model_version(line):
    before = line.get("/state", params=IDS).json()
    assert infer(line, ng_png(3))["verdict"] == "NG"
    r = review(line, "ng1", "overrule", append=True)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["appended"] and body["new_model_version"] not in (None, before["version"])
    assert body["new_model_version"] in body["note"]
    after = line.get("/state", params=IDS).json()
    assert after["version"] == body["new_model_version"]
    assert after["threshold"] == before["threshold"]  # one image: the threshold stays
    again = infer(line, ng_png(3))
    assert (again["verdict"], again["model_version"]) == ("OK", body["new_model_version"])


def test_a_confirmed_ng_goes_into_the_ng_dataset(line):
    body = review(line, "ng1", "confirm").json()
    assert (body["dataset_label"], body["appended"]) == ("ng", False)
    assert body["note"].startswith("the NG verdict is confirmed")
    assert [i["name"] for i in dataset(line, "ng")] == [body["dataset_item"]]
    assert dataset(line, "ok") == []


def test_an_overruled_ok_is_a_missed_defect_and_the_threshold_is_kept(line):
    threshold = line.get("/state", params=IDS).json()["threshold"]
    body = review(line, "ok1", "overrule", reason="a crack the model missed").json()
    assert (body["verdict"], body["dataset_label"]) == ("OK", "ng")
    assert "the threshold was not changed" in body["note"]
    assert "/calibrate_dataset" in body["note"]
    assert [i["meta"]["extra"]["review"]["verdict"] for i in dataset(line, "ng")] == ["OK"]
    assert line.get("/state", params=IDS).json()["threshold"] == threshold


def test_a_confirmed_ok_is_only_recorded_and_needs_no_crop(line):
    body = review(line, "ok-dropped", "confirm").json()
    assert (body["dataset_label"], body["dataset_item"]) == (None, None)
    assert body["note"] == "the OK verdict is confirmed: recorded, nothing stored"
    assert dataset(line, "ok") == dataset(line, "ng") == []


# --- the records --------------------------------------------------------------------------
def test_every_review_is_recorded_and_a_crop_is_stored_once(line):
    first = review(line, "ng1", "overrule").json()
    second = review(line, "ng1", "overrule", reviewer="bo", reason="agreed").json()
    third = review(line, "ng1", "confirm", reviewer="cy", reason="no: a crack").json()
    assert second["dataset_item"] == first["dataset_item"]  # the same image, not a copy
    assert len(dataset(line, "ok")) == 1 and len(dataset(line, "ng")) == 1
    r = line.get("/frames/ng1/reviews")
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["frame_id"] == "ng1"
    assert [x["review_id"] for x in got["reviews"]] == [
        first["review_id"], second["review_id"], third["review_id"],
    ]  # fmt: skip
    assert got["reviews"][0] == first
    assert [x["reviewer"] for x in got["reviews"]] == ["ana.silva", "bo", "cy"]
    assert line.get("/frames/ok1/reviews").json()["reviews"] == []
    assert line.get("/frames/ng1").json()["frame_id"] == "ng1"  # still the frame


# --- refusals -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("frame_id", "body", "status", "code", "words"),
    [
        ("nope", {}, 404, "frame_not_found", "no frame 'nope'"),
        ("err1", {}, 409, "not_reviewable", "is ERROR: no model judged"),
        ("nm1", {}, 409, "not_reviewable", "is NO_MODEL"),
        ("img-only", {}, 409, "verdict_not_stored", "no verdict of frame 'img-only'"),
        ("ok-dropped", {"decision": "overrule"}, 409, "crop_not_kept", "BDI_TRACE_OK_SAMPLE"),
        ("ng1", {"decision": "confirm", "append": True}, 400, "append_not_applicable", "NG"),
        ("ok1", {"append": True}, 400, "append_not_applicable", "the verdict is OK"),
    ],
)
def test_refusals_say_why_and_store_nothing(line, frame_id, body, status, code, words):
    r = review(line, frame_id, body.pop("decision", "overrule"), **body)
    assert r.status_code == status, r.text
    assert r.json()["error"] == code and words in r.json()["detail"]
    assert dataset(line, "ok") == dataset(line, "ng") == []


@pytest.mark.parametrize(
    "body",
    [
        {"decision": "overrule"},
        {"decision": "overrule", "reviewer": ""},
        {"decision": "overrule", "reviewer": "   "},
        {"decision": "maybe", "reviewer": "ana"},
        {"decision": "overrule", "reviewer": "ana", "append": "yes"},
        {"decision": "overrule", "reviewer": "ana", "surprise": 1},
        {"decision": "overrule", "reviewer": "a\x00b"},
    ],
)
def test_a_bad_body_is_422(line, body):
    r = line.post("/frames/ng1/review", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "validation_error"


def test_an_append_the_model_cannot_take_is_409_and_stores_nothing(line, make_client):
    other = make_client(image_size=96)  # the same store and trace, another input size
    r = review(other, "ng1", "overrule", append=True)
    assert r.status_code == 409 and r.json()["error"] == "append_mismatch", r.text
    assert dataset(line, "ok") == []
    assert other.get("/frames/ng1/reviews").json()["reviews"] == []


def test_an_append_while_a_training_runs_is_429(line):
    slots = line.app.state.bdi.fit_slots
    assert slots.acquire(blocking=False)
    try:
        r = review(line, "ng1", "overrule", append=True)
    finally:
        slots.release()
    assert r.status_code == 429 and int(r.headers["retry-after"]) > 0
    assert dataset(line, "ok") == []


def test_without_a_trace_database_it_is_503(trained):
    for r in (review(trained, "ng1", "overrule"), trained.get("/frames/ng1/reviews")):
        assert r.status_code == 503 and r.json()["error"] == "trace_unavailable"


def test_the_api_key_guards_reviews(make_client, make_trace):
    make_trace()
    client = make_client(api_key=KEY)
    for r in (review(client, "ng1", "confirm"), client.get("/frames/ng1/reviews")):
        assert r.status_code == 401 and r.json()["error"] == "unauthorized"


# --- PostgreSQL, a real server --------------------------------------------------------------
def test_reviews_on_postgresql(postgres, make_client, make_trace):
    url = postgres.new_database()
    client = make_client(trace_db_url=url)
    assert fit(client).status_code == 200
    version = client.get("/state", params=IDS).json()["version"]
    make_trace(trace_db_url=url).ingest(
        Batch(T0, [frame("pg1", ng_png(6))], [verdict("pg1", "NG", version)], [])
    )
    body = review(client, "pg1", "overrule", append=True).json()
    assert body["appended"] and body["dataset_label"] == "ok"
    got = client.get("/frames/pg1/reviews").json()["reviews"]
    assert [x["review_id"] for x in got] == [body["review_id"]]


def test_the_loop_over_real_http(live_server, tmp_path):
    server = live_server(api_key=KEY)
    with httpx.Client(base_url=server.url, headers={"X-API-Key": KEY}, timeout=60) as http:
        r = http.post("/fit_ok", data={**IDS, "mm_per_px": "0.1"},
                      files=files("images", [ok_png(s) for s in range(8)]))  # fmt: skip
        assert r.status_code == 200, r.text
        store = TraceStore.open(tiny_settings(models_dir=tmp_path / "models"))
        try:
            doc = verdict("w1", "NG", r.json()["model_version"])
            store.ingest(Batch(T0, [frame("w1", ng_png(3))], [doc], []))
        finally:
            store.close()
        done = http.post("/frames/w1/review", json={"decision": "overrule", **WHO,
                                                    "append": True})  # fmt: skip
        assert done.status_code == 200, done.text
        assert done.headers["x-request-id"]
        listed = http.get("/frames/w1/reviews").json()["reviews"]
        assert listed[0]["new_model_version"] == done.json()["new_model_version"]
        bad = http.post("/frames/w1/review", json={"decision": "overrule"})
        assert bad.status_code == 422 and bad.json()["request_id"] == bad.headers["x-request-id"]
