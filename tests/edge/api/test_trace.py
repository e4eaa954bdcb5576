"""Reading the trace over REST (edge/api/routes/trace.py): ``GET /parts/{id}``,
``/verdicts``, ``/frames/{id}`` and its crop and heatmap, from a trace database filled
through the store's own ingest; 503 before there is one, the API key, a real server."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from store.trace import Batch, FrameImage, TraceStore
from tests.helpers.api import IDS, fit
from tests.helpers.images import ng_png, ok_jpeg, ok_png
from tests.helpers.settings import tiny_settings

T0 = 1_780_000_000_000
KEY = "s3cret-key-for-tests"


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def verdict(frame_id: str, v: str = "OK", *, at: int = T0, part: str | None = "SN-1",
            roi: str = "r1", model_version: str | None = "m1",
            calibration_version: str | None = "c1", **ids: str) -> dict[str, Any]:  # fmt: skip
    return {
        "schema": "bdi.verdict/1", "frame_id": frame_id, "part_id": part,
        "recipe_id": ids.get("recipe_id", "disc-a"), "role_id": ids.get("role_id", "Master1"),
        "roi_id": roi, "verdict": v, "score": 3.0 if v == "NG" else 1.0, "threshold": 2.0,
        "regions": [], "model_version": model_version, "calibration_version": calibration_version,
        "image_sha256": None, "code_version": "0.1.0", "settings_fingerprint": "f1",
        "error_class": None, "produced_at": iso(at),
        "source": {"topic": "bdi.frames", "partition": 0, "offset": 1},
    }  # fmt: skip


def part_record(part_id: str, v: str, frames: list[dict[str, Any]], **extra: Any) -> dict:
    keep = ("frame_id", "role_id", "roi_id", "verdict", "score", "threshold", "regions",
            "model_version", "calibration_version", "code_version")  # fmt: skip
    return {
        "schema": "bdi.part/1", "part_id": part_id, "recipe_id": "disc-a", "verdict": v,
        "reason": f"{v} by test", "plan_version": "p1", "deadline_ms": 5000,
        "frames": [{k: f[k] for k in keep} | {"seen_at": iso(T0)} for f in frames],
        "missing": [], "unexpected": [], "first_frame_at": iso(T0), "last_frame_at": iso(T0),
        "decided_at": iso(T0 + 5), "code_version": "0.1.0", **extra,
    }  # fmt: skip


def image(frame_id: str, data: bytes, part: str | None = "SN-1", roi: str = "r1") -> FrameImage:
    return FrameImage(frame_id, data, part, "disc-a", "Master1", roi, "bdi.frames", 0, 1)


@pytest.fixture
def make_trace(tmp_path: Path) -> Callable[..., TraceStore]:
    """``make_trace(**settings)``: the trace database the app of ``make_client`` reads
    (both under ``tmp_path / "models"``), opened for writing as ``bdi trace`` does."""
    opened: list[TraceStore] = []

    def make(**overrides: Any) -> TraceStore:
        store = TraceStore.open(tiny_settings(models_dir=tmp_path / "models", **overrides))
        opened.append(store)
        return store

    yield make  # type: ignore[misc]
    for store in opened:
        store.close()


@pytest.fixture
def filled(make_trace: Callable[..., TraceStore], client: TestClient) -> TestClient:
    """SN-1: an NG part of two frames (one NG, crop kept), a late frame; SN-2: frames but
    no record yet; 30 more OK verdicts over time for paging."""
    store = make_trace(trace_ok_sample=0)
    v1, v2 = verdict("f1", "NG", roi="r1"), verdict("f2", "OK", roi="r2")
    late = verdict("f3", "OK", roi="r2", at=T0 + 9000)
    store.ingest(Batch(T0, [image("f1", ng_png(1)), image("f2", ok_png(2), roi="r2")],
                       [v1, v2], [part_record("SN-1", "NG", [v1, v2])]))  # fmt: skip
    late_record = {"schema": "bdi.part_late/1", "part_id": "SN-1", "recipe_id": "disc-a",
                   "part_verdict": "NG", "frame": {k: late[k] for k in ("frame_id", "role_id",
                   "roi_id", "verdict", "score", "threshold")}, "reason": "late"}  # fmt: skip
    store.ingest(Batch(T0 + 9000, [], [late], [late_record]))
    pending = [verdict(f"p{i}", at=T0 + i, part="SN-2", roi=f"r{i}") for i in range(2)]
    store.ingest(Batch(T0, [image("p0", ok_jpeg(3), part="SN-2", roi="r0")], pending, []))
    more = [
        verdict(
            f"m{i:02d}",
            "NG" if i % 3 == 0 else "OK",
            at=T0 + 10_000 + i * 1000,
            part=None,
            roi="r9",
            recipe_id="disc-b" if i % 2 else "Disc-B",
        )
        for i in range(30)
    ]  # fmt: skip  (recipe ids are case-insensitive)
    store.ingest(Batch(T0, [], more, []))
    return client


# --- GET /parts/{part_id} ---------------------------------------------------------------
def test_a_part_with_its_frames_provenance_links_and_late_frames(filled):
    r = filled.get("/parts/SN-1")
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["decided"], body["verdict"], body["reason"]) == (True, "NG", "NG by test")
    assert (body["plan_version"], body["deadline_ms"], body["recipe_id"]) == ("p1", 5000, "disc-a")
    assert body["decided_at"] == iso(T0 + 5) and body["missing"] == []
    assert body["record"]["schema"] == "bdi.part/1"
    frames = {f["frame_id"]: f for f in body["frames"]}
    assert list(frames) == ["f1", "f2"]
    ng, ok = frames["f1"], frames["f2"]
    assert (ng["verdict"], ng["score"], ng["threshold"], ng["roi_id"]) == ("NG", 3.0, 2.0, "r1")
    assert (ng["model_version"], ng["calibration_version"]) == ("m1", "c1")
    assert (ng["settings_fingerprint"], ng["produced_at"]) == ("f1", iso(T0))
    assert ng["verdict_stored"] and ng["frame_url"] == "/frames/f1"
    assert (ng["crop_url"], ng["heatmap_url"], ng["no_crop"]) == (
        "/frames/f1/crop", "/frames/f1/heatmap", None,
    )  # fmt: skip
    # every frame of a part that is not OK is kept (docs/TRACE.md)
    assert ok["crop_url"] == "/frames/f2/crop"
    assert [f["frame_id"] for f in body["late"]] == ["f3"]
    assert body["late"][0]["crop_url"] is None
    assert "has not read it from bdi.frames" in body["late"][0]["no_crop"]
    assert body["other_frames"] == [] and body["unexpected"] == []


def test_a_part_without_its_record_yet_is_pending(filled):
    body = filled.get("/parts/SN-2").json()
    assert (body["decided"], body["verdict"], body["plan_version"]) == (False, None, None)
    assert body["reason"].startswith("no part record yet: 2 frame verdicts stored")
    assert [f["frame_id"] for f in body["other_frames"]] == ["p0", "p1"]
    assert body["frames"] == [] and body["record"] is None


def test_an_unknown_part_is_404(filled):
    r = filled.get("/parts/SN-404")
    assert r.status_code == 404 and r.json()["error"] == "part_not_found"
    assert "SN-404" in r.json()["detail"]


def test_ids_with_a_slash_or_spaces_are_reachable(make_trace, client):
    store = make_trace()
    v = verdict("cam 3/f 1", "NG", part="SN/7 A")
    store.ingest(Batch(T0, [image("cam 3/f 1", ng_png(4), part="SN/7 A")], [v],
                       [part_record("SN/7 A", "NG", [v])]))  # fmt: skip
    body = client.get("/parts/SN/7 A").json()
    url = body["frames"][0]["crop_url"]
    assert url == "/frames/cam%203%2Ff%201/crop"
    assert client.get(url).content == ng_png(4)
    assert client.get("/frames/cam 3/f 1").json()["part_url"] == "/parts/SN%2F7%20A"


# --- GET /verdicts ---------------------------------------------------------------------
def test_verdicts_filtered_and_paged_newest_first(filled):
    r = filled.get("/verdicts", params={"recipe_id": "disc-b", "limit": 7})
    assert r.status_code == 200, r.text
    seen, page = [], r.json()
    while True:
        seen += [v["frame_id"] for v in page["verdicts"]]
        assert page["count"] == len(page["verdicts"]) <= 7
        if page["next_cursor"] is None:
            break
        page = filled.get("/verdicts", params={"recipe_id": "disc-b", "limit": 7,
                                               "cursor": page["next_cursor"]}).json()  # fmt: skip
    assert seen == [f"m{i:02d}" for i in reversed(range(30))]
    first = filled.get("/verdicts", params={"limit": 1}).json()["verdicts"][0]
    assert first["frame_url"] == f"/frames/{first['frame_id']}" and first["part_url"] is None
    assert first["schema"] == "bdi.verdict/1"


@pytest.mark.parametrize(
    ("params", "expect"),
    [
        ({"verdict": "ng", "recipe_id": "disc-b"}, {f"m{i:02d}" for i in range(0, 30, 3)}),
        ({"recipe_id": "DISC-B", "roi_id": "r9"}, {f"m{i:02d}" for i in range(30)}),
        ({"verdict": ["NG", "OK"], "part_id": "SN-1"}, {"f1", "f2", "f3"}),
        ({"verdict": "NG,ERROR", "part_id": "SN-1"}, {"f1"}),
        ({"role_id": "Master1", "roi_id": "r2", "part_id": "SN-1"}, {"f2", "f3"}),
        ({"since": iso(T0 + 10_000), "until": iso(T0 + 12_000)}, {"m00", "m01"}),
        ({"since": iso(T0 + 10_000)[:-6], "until": iso(T0 + 11_000)}, {"m00"}),  # naive: UTC
    ],
)
def test_verdict_filters(filled, params, expect):
    r = filled.get("/verdicts", params={**params, "limit": 1000})
    assert r.status_code == 200, r.text
    assert {v["frame_id"] for v in r.json()["verdicts"]} == expect


@pytest.mark.parametrize(
    ("params", "code", "words"),
    [
        ({"verdict": "MAYBE"}, "invalid_filter", "unknown verdict 'MAYBE'"),
        ({"since": "yesterday"}, "invalid_filter", "ISO 8601"),
        ({"since": iso(T0 + 1), "until": iso(T0)}, "invalid_filter", "before until"),
        ({"cursor": "not-a-cursor!"}, "invalid_cursor", "not a page cursor"),
        ({"recipe_id": "../.."}, "invalid_id", "invalid recipe_id"),
    ],
)
def test_bad_filters_are_400(filled, params, code, words):
    r = filled.get("/verdicts", params=params)
    assert r.status_code == 400, r.text
    assert r.json()["error"] == code and words in r.json()["detail"]


def test_a_page_past_1000_is_422(filled):
    assert filled.get("/verdicts", params={"limit": 1001}).status_code == 422


# --- GET /frames/{frame_id}, /crop ------------------------------------------------------
def test_a_frame_and_its_crop(filled):
    body = filled.get("/frames/f1").json()
    assert body["verdict"]["verdict"] == "NG" and body["part_url"] == "/parts/SN-1"
    assert body["image"] == {"sha256": hashlib.sha256(ng_png(1)).hexdigest(),
                             "size": len(ng_png(1))}  # fmt: skip
    crop = filled.get(body["crop_url"])
    assert crop.status_code == 200 and crop.content == ng_png(1)
    assert crop.headers["content-type"] == "image/png"
    assert crop.headers["etag"] == f'"{body["image"]["sha256"]}"'
    jpeg = filled.get("/frames/p0/crop")  # an OK frame of an open part: kept for now
    assert jpeg.headers["content-type"] == "image/jpeg" and jpeg.content == ok_jpeg(3)


def test_frames_without_a_crop_say_why(make_trace, client):
    store = make_trace(trace_ok_sample=0)
    v = verdict("solo", "OK", part=None)
    store.ingest(Batch(T0, [image("solo", ok_png(5), part=None)], [v], []))
    body = client.get("/frames/solo").json()
    assert body["crop_url"] is None and body["heatmap_url"] is None
    assert "outside the sample of 1 in BDI_TRACE_OK_SAMPLE" in body["no_crop"]
    r = client.get("/frames/solo/crop")
    assert r.status_code == 404 and r.json()["error"] == "crop_not_kept"
    assert "BDI_TRACE_OK_SAMPLE" in r.json()["detail"]
    for path in ("/frames/nope", "/frames/nope/crop", "/frames/nope/heatmap"):
        r = client.get(path)
        assert r.status_code == 404 and r.json()["error"] == "frame_not_found", path


# --- the heatmap, drawn by the model version that judged the frame -----------------------
def _trained_version(client: TestClient, n: int) -> tuple[str, str]:
    r = fit(client, n=n)
    assert r.status_code == 200, r.text
    return r.json()["model_version"], r.json()["calibration_version"]


def test_heatmap_by_the_judging_model_version_and_410_once_gone(make_client, make_trace):
    client = make_client(model_revisions_kept=2)
    store = make_trace()
    first = _trained_version(client, 8)
    crop = ng_png(7)
    ids = {"recipe_id": IDS["recipe_id"], "role_id": IDS["role_id"]}
    judged = verdict("h1", "NG", roi=IDS["roi_id"], model_version=first[0],
                     calibration_version=first[1], **ids)  # fmt: skip
    store.ingest(Batch(T0, [image("h1", crop, roi=IDS["roi_id"])], [judged], []))
    assert client.get("/frames/h1").json()["heatmap_url"] == "/frames/h1/heatmap"

    def drawn() -> np.ndarray:
        r = client.get("/frames/h1/heatmap")
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "image/png"
        return cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_COLOR)

    size = cv2.imdecode(np.frombuffer(crop, np.uint8), cv2.IMREAD_COLOR).shape
    current = drawn()
    assert current.shape == size
    assert _trained_version(client, 6)[0] != first[0]  # a newer model; the first one kept
    assert np.array_equal(drawn(), current)  # drawn by the stored older revision
    _trained_version(client, 5)  # two revisions kept: the first is gone now
    r = client.get("/frames/h1/heatmap")
    assert r.status_code == 410, r.text
    assert r.json()["error"] == "model_version_gone"
    assert first[0] in r.json()["detail"] and "no longer stored" in r.json()["detail"]


def test_no_heatmap_for_a_frame_no_model_scored(make_trace, client):
    store = make_trace()
    v = verdict("nm", "NO_MODEL", model_version=None, calibration_version=None)
    store.ingest(Batch(T0, [image("nm", ng_png(8))], [v], []))
    assert client.get("/frames/nm").json()["heatmap_url"] is None
    r = client.get("/frames/nm/heatmap")
    assert r.status_code == 404 and r.json()["error"] == "heatmap_unavailable"
    assert "NO_MODEL" in r.json()["detail"]


# --- no database yet, the API key, a real server ----------------------------------------
def test_without_a_trace_database_every_endpoint_is_503(client, tmp_path):
    for path in ("/parts/SN-1", "/verdicts", "/frames/f1", "/frames/f1/crop",
                 "/frames/f1/heatmap"):  # fmt: skip
        r = client.get(path)
        assert r.status_code == 503, (path, r.text)
        assert r.json()["error"] == "trace_unavailable"
        assert r.json()["detail"] == (
            "no trace database yet at BDI_MODELS_DIR/trace/trace.db: run `bdi trace` (or "
            "`bdi up`, which runs it) to create and fill it"
        )
    assert not (tmp_path / "models" / "trace" / "trace.db").exists()  # reading creates nothing


def test_a_database_created_later_is_found(client, make_trace):
    assert client.get("/verdicts").status_code == 503
    make_trace().ingest(Batch(T0, [], [verdict("later")], []))
    assert [v["frame_id"] for v in client.get("/verdicts").json()["verdicts"]] == ["later"]


def test_the_trace_on_postgresql(postgres, make_client, make_trace):
    url = postgres.new_database()
    v = verdict("pg1", "NG", part="SN-PG")
    make_trace(trace_db_url=url).ingest(Batch(T0, [image("pg1", ng_png(3), part="SN-PG")], [v],
                                              [part_record("SN-PG", "NG", [v])]))  # fmt: skip
    client = make_client(trace_db_url=url)
    part = client.get("/parts/SN-PG").json()
    assert part["verdict"] == "NG" and part["frames"][0]["crop_url"] == "/frames/pg1/crop"
    assert client.get("/frames/pg1/crop").content == ng_png(3)
    page = client.get("/verdicts", params={"verdict": "NG,OK", "part_id": "SN-PG"}).json()
    assert [x["frame_id"] for x in page["verdicts"]] == ["pg1"]


def test_an_unreachable_postgresql_is_503_without_its_address(make_client):
    client = make_client(trace_db_url="postgresql://bdi:pw@127.0.0.1:1/none")
    r = client.get("/verdicts")
    assert r.status_code == 503 and r.json()["error"] == "trace_unavailable"
    assert r.json()["detail"] == "the trace database (BDI_TRACE_DB_URL) cannot be opened"


def test_the_api_key_guards_the_trace(make_client, make_trace):
    make_trace().ingest(Batch(T0, [image("k1", ng_png(1))], [verdict("k1", "NG")], []))
    client = make_client(api_key=KEY)
    for path in ("/parts/SN-1", "/verdicts", "/frames/k1", "/frames/k1/crop",
                 "/frames/k1/heatmap"):  # fmt: skip
        for headers in ({}, {"X-API-Key": "wrong"}):
            r = client.get(path, headers=headers)
            assert r.status_code == 401 and r.json()["error"] == "unauthorized", path
    assert client.get("/frames/k1/crop", headers={"X-API-Key": KEY}).content == ng_png(1)


@pytest.mark.slow
def test_over_real_http(live_server, make_trace):
    v = verdict("w1", "NG", part="SN-9")
    make_trace().ingest(Batch(T0, [image("w1", ng_png(2), part="SN-9")], [v],
                              [part_record("SN-9", "NG", [v])]))  # fmt: skip
    server = live_server(api_key=KEY)
    with httpx.Client(base_url=server.url, headers={"X-API-Key": KEY}, timeout=10) as http:
        part = http.get("/parts/SN-9")
        assert part.status_code == 200 and part.headers["x-request-id"]
        crop = http.get(part.json()["frames"][0]["crop_url"])
        assert crop.content == ng_png(2) and crop.headers["content-type"] == "image/png"
        page = http.get("/verdicts", params={"verdict": "NG"}).json()
        assert [x["frame_id"] for x in page["verdicts"]] == ["w1"]
        bad = http.get("/verdicts", params={"cursor": "%%%"})
        assert bad.status_code == 400 and bad.json()["request_id"] == bad.headers["x-request-id"]
