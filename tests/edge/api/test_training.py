"""POST /fit_ok, /calibrate_ng, /calibrate_dataset."""

from __future__ import annotations

import pytest

from tests.helpers.api import IDS, files, fit
from tests.helpers.images import ng_png, ok_jpeg, ok_png

pytestmark = pytest.mark.slow  # each test trains a (tiny) model


def test_fit_ok_builds_and_stores_a_model(client):
    r = fit(client, n=6)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["recipe_id"] == "disc-a" and body["role_id"] == "Master1"
    assert body["n_images"] == 6
    assert body["n_patches"] == 6 * 8 * 8  # 64 px input, stride 8
    assert 0 < body["memory_bank"] <= body["n_patches"]
    assert body["threshold"] > 0  # OK-only threshold from leave-one-out scores
    assert body["mm_per_px"] == 0.1
    assert body["source"] == "upload"
    assert set(body["timings_s"]) >= {"embed_s", "coreset_s", "fit_s"}
    state = client.get("/state", params=IDS).json()
    assert state["ready"] and state["version"] == body["model_version"]


def test_fit_ok_accepts_jpeg(client):
    r = client.post(
        "/fit_ok", data=IDS, files=files("images", [ok_jpeg(s) for s in range(3)], "jpeg")
    )
    assert r.status_code == 200, r.text


def test_mm_per_px_is_locked_per_recipe(client):
    assert fit(client, n=3).status_code == 200
    r = fit(client, n=3, mm_per_px="0.2", roi_id="another-roi")
    assert r.status_code == 409
    assert r.json()["error"] == "mm_per_px_mismatch"


@pytest.mark.parametrize(
    ("form", "code"),
    [
        ({"recipe_id": "last"}, "invalid_id"),
        ({"recipe_id": "../etc"}, "invalid_id"),
        ({"recipe_id": "Dïsc"}, "invalid_id"),
    ],
)
def test_fit_ok_refuses_bad_ids(client, form, code):
    r = fit(client, n=2, **form)
    assert r.status_code == 400
    assert r.json()["error"] == code


def test_fit_ok_without_images(client):
    r = client.post("/fit_ok", data=IDS)
    assert r.status_code == 400
    assert r.json()["error"] == "missing_images"


def test_fit_ok_rejects_non_positive_scale(client):
    assert fit(client, n=2, mm_per_px="-1").status_code == 422
    assert fit(client, n=2, mm_per_px="nan").status_code == 422


def test_fit_from_dataset_enforces_min_ok_samples(make_client):
    client = make_client(min_ok_samples=4)
    up = client.post(
        "/datasets/upload", data={**IDS, "label": "ok"},
        files=files("images", [ok_png(s) for s in range(3)]),
    )  # fmt: skip
    assert up.status_code == 200, up.text
    r = client.post("/fit_ok", data={**IDS, "use_dataset": "true"})
    assert r.status_code == 400
    assert r.json()["error"] == "missing_ok_samples"
    assert "BDI_MIN_OK_SAMPLES" in r.json()["detail"]
    client.post("/datasets/upload", data={**IDS, "label": "ok"}, files=files("images", [ok_png(9)]))
    r = client.post("/fit_ok", data={**IDS, "use_dataset": "true"})
    assert r.status_code == 200, r.text
    assert r.json()["n_images"] == 4 and r.json()["source"] == "dataset"


def test_train_dataset_only_refuses_uploads(make_client):
    client = make_client(train_dataset_only=True)
    r = fit(client, n=2)
    assert r.status_code == 400
    assert r.json()["error"] == "train_dataset_only"


def test_busy_trainer_answers_429_with_retry_after(client):
    slots = client.app.state.bdi.fit_slots
    assert slots.acquire(blocking=False)
    try:
        r = fit(client, n=2)
    finally:
        slots.release()
    assert r.status_code == 429
    assert int(r.headers["retry-after"]) > 0
    assert fit(client, n=2).status_code == 200  # the slot is free again


def test_calibrate_ng_stores_the_threshold(trained):
    r = trained.post("/calibrate_ng", json={**IDS, "ok_scores": [1, 2, 3], "ng_scores": [7, 9]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["method"] == "ok_ng" and body["threshold"] == 5.0
    assert body["ng_miss_rate"] == 0.0 and body["source"] == "scores"
    assert trained.get("/state", params=IDS).json()["threshold"] == 5.0


def test_calibrate_ng_needs_a_model(client):
    r = client.post("/calibrate_ng", json={**IDS, "ok_scores": [1.0], "ng_scores": [2.0]})
    assert r.status_code == 400
    assert r.json()["error"] == "missing_memory"


@pytest.mark.parametrize(
    "body",
    [
        {"ok_scores": []},
        {"ok_scores": ["x"]},
        {"ok_scores": [1.0], "surprise": 1},
    ],
)
def test_calibrate_ng_validates_scores(trained, body):
    r = trained.post("/calibrate_ng", json={**IDS, **body})
    assert r.status_code == 422


def test_calibrate_ng_refuses_non_finite_scores(trained):
    # JSON has no NaN; a client that sends one anyway gets a clear 4xx, never a stored NaN
    r = trained.post(
        "/calibrate_ng",
        content=b'{"role_id": "Master1", "roi_id": "inspection-1", "recipe_id": "disc-a", '
        b'"ok_scores": [1.0, NaN]}',
        headers={"content-type": "application/json"},
    )
    assert r.status_code in (400, 422)


def test_calibrate_dataset_separates_ok_from_ng(trained):
    for label, blobs in (("ok", [ok_png(s) for s in range(20, 24)]),
                         ("ng", [ng_png(s) for s in range(4)])):  # fmt: skip
        up = trained.post(
            "/datasets/upload", data={**IDS, "label": label}, files=files("images", blobs)
        )
        assert up.status_code == 200, up.text
    r = trained.post("/calibrate_dataset", data=IDS)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["source"] == "dataset" and body["ok"]["n"] == 4 and body["ng"]["n"] == 4
    assert body["ng_miss_rate"] == 0.0


def test_calibrate_dataset_without_ok_images(trained):
    r = trained.post("/calibrate_dataset", data=IDS)
    assert r.status_code == 400
    assert r.json()["error"] == "missing_ok_samples"
