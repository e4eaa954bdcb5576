"""POST /infer and /infer_dataset."""

from __future__ import annotations

import base64

import cv2
import numpy as np
import pytest

from edge.simulator.discs import encode_png, make_ng
from engine.images import PNG_MAGIC
from tests.helpers.api import IDS, files, fit
from tests.helpers.images import SIZE, ng_png, ok_png

pytestmark = pytest.mark.slow


def infer(client, blob: bytes, **form: str):
    return client.post("/infer", data={**IDS, **form}, files={"image": ("x.png", blob)})


def test_infer_ok_and_ng_with_regions_and_heatmap(trained):
    ok = infer(trained, ok_png(100)).json()
    assert ok["verdict"] == "OK" and ok["regions"] == []
    assert ok["score"] < ok["threshold"]
    disc = make_ng(101, SIZE, "rust")
    r = infer(trained, encode_png(disc.image), heatmap="true")
    assert r.status_code == 200, r.text
    ng = r.json()
    assert ng["verdict"] == "NG" and ng["score"] >= ng["threshold"]
    assert ng["model_version"] == trained.get("/state", params=IDS).json()["version"]
    assert ng["regions"], "an NG frame names where the defect is"
    x, y, w, h = ng["regions"][0]["bbox"]
    ys, xs = np.nonzero(disc.mask)
    # the largest region overlaps the true defect
    assert x <= xs.max() and xs.min() <= x + w and y <= ys.max() and ys.min() <= y + h
    assert ng["regions"][0]["area_mm2"] == pytest.approx(ng["regions"][0]["area_px"] * 0.01)
    png = base64.b64decode(ng["heatmap_png_base64"])
    assert png.startswith(PNG_MAGIC)
    heat = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert heat.shape[:2] == (SIZE, SIZE)
    assert ok["heatmap_png_base64"] is None  # only when asked


def test_infer_uses_the_frame_scale_when_the_recipe_has_none(client):
    r = client.post("/fit_ok", data=IDS, files=files("images", [ok_png(s) for s in range(8)]))
    assert r.status_code == 200 and r.json()["mm_per_px"] is None
    body = infer(client, ng_png(102, "rust"), mm_per_px="0.5").json()
    assert body["verdict"] == "NG" and body["regions"]
    assert body["regions"][0]["area_mm2"] == pytest.approx(body["regions"][0]["area_px"] * 0.25)
    unscaled = infer(client, ng_png(102, "rust")).json()
    assert unscaled["regions"][0]["area_mm2"] is None


def test_uncalibrated_model_is_never_ok(client):
    # one training image: no leave-one-out scores, hence no threshold
    r = client.post("/fit_ok", data=IDS, files=files("images", [ok_png(0)]))
    assert r.status_code == 200 and r.json()["threshold"] is None
    body = infer(client, ok_png(1)).json()
    assert body["verdict"] == "NO_MODEL" and body["error"]


def test_infer_without_model_is_missing_memory(client):
    r = infer(client, ok_png(0))
    assert r.status_code == 400 and r.json()["error"] == "missing_memory"


@pytest.mark.parametrize(
    ("blob", "status", "code"),
    [
        (b"GIF89a\x01\x00\x01\x00", 415, "unsupported_media_type"),
        (b"", 400, "invalid_image"),
        (PNG_MAGIC + b"\x00" * 40, 400, "invalid_image"),
    ],
)
def test_infer_refuses_bad_images(trained, blob, status, code):
    r = infer(trained, blob)
    assert r.status_code == status, r.text
    assert r.json()["error"] == code


def test_infer_refuses_16_bit_and_alpha_png(trained):
    deep = cv2.imencode(".png", np.zeros((32, 32, 3), np.uint16))[1].tobytes()
    alpha = cv2.imencode(".png", np.zeros((32, 32, 4), np.uint8))[1].tobytes()
    for blob in (deep, alpha):
        r = infer(trained, blob)
        assert r.status_code == 415, r.text


def test_infer_refuses_wrong_model_input_size(trained, make_client):
    # the same store served by an app configured for another input size still scores
    # with the model's own size: the model, not the settings, fixes the token grid
    other = make_client(image_size=128)
    r = infer(other, ok_png(3))
    assert r.status_code == 200 and r.json()["verdict"] in ("OK", "NG")


def test_infer_dataset_scores_every_stored_image(trained):
    for label, blobs in (("ok", [ok_png(s) for s in range(30, 33)]),
                         ("ng", [ng_png(s) for s in range(3)])):  # fmt: skip
        trained.post("/datasets/upload", data={**IDS, "label": label}, files=files("images", blobs))
    r = trained.post("/infer_dataset", data=IDS)
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["results"]) == 6
    assert sum(body["counts"].values()) == 6
    assert body["auroc"] is not None and body["auroc"] >= 0.9
    only_ng = trained.post("/infer_dataset", data={**IDS, "label": "ng"}).json()
    assert {row["label"] for row in only_ng["results"]} == {"ng"}
    assert only_ng["auroc"] is None


def test_infer_dataset_empty(trained):
    r = trained.post("/infer_dataset", data=IDS)
    assert r.status_code == 400 and r.json()["error"] == "empty_dataset"


def test_infer_scale_must_match_the_recipe(trained):
    r = infer(trained, ok_png(5), mm_per_px="0.5")  # the recipe is locked at 0.1
    assert r.status_code == 409 and r.json()["error"] == "mm_per_px_mismatch"
    assert infer(trained, ok_png(5), mm_per_px="0.1").status_code == 200


def test_token_grid_mismatch_is_a_400(trained):
    import dataclasses

    from engine.patchcore import PatchCoreModel

    store = trained.app.state.bdi.store
    model = store.load_model(store.ref("disc-a", "Master1", "inspection-1"))
    h, w = model.meta.grid
    odd = PatchCoreModel(dataclasses.replace(model.meta, grid=(h + 1, w)), model.index,
                         model.calibration)  # fmt: skip
    store.save_model(store.ref("disc-a", "Master1", "inspection-1"), odd)
    r = infer(trained, ok_png(5))
    assert r.status_code == 400 and r.json()["error"] == "token_grid_mismatch"


def test_damaged_model_is_a_500_without_server_paths(trained, tmp_path):
    store = trained.app.state.bdi.store
    ref = store.ref("disc-a", "Master1", "inspection-1")
    npz = store.locate(ref).files[".npz"]
    data = bytearray(npz.read_bytes())
    data[len(data) // 2] ^= 0xFF
    npz.write_bytes(bytes(data))
    store.cache.invalidate()
    r = infer(trained, ok_png(5))
    assert r.status_code == 500 and r.json()["error"] == "corrupt_model"
    assert str(tmp_path) not in r.text and ".npz" not in r.text
    state = trained.get("/state", params=IDS).json()
    assert str(tmp_path) not in str(state)


def test_every_answer_says_what_made_it_over_real_http(live_server):
    """Model, calibration, image, code and settings: a recalibration keeps the model's
    version and changes the calibration's, in the answer, the state and the revisions."""
    import hashlib

    import httpx

    from engine import EngineConfig
    from engine.provenance import code_version, settings_fingerprint

    server = live_server()
    with httpx.Client(base_url=server.url, timeout=120) as http:
        trained = fit(http)
        assert trained.status_code == 200, trained.text
        blob = ok_png(100)
        before = infer(http, blob).json()
        assert before["image_sha256"] == hashlib.sha256(blob).hexdigest()
        assert before["code_version"] == code_version()
        settings = server.app.state.bdi.settings
        assert before["settings_fingerprint"] == settings_fingerprint(
            EngineConfig.from_settings(settings)
        )
        state = http.get("/state", params=IDS).json()
        assert before["model_version"] == state["version"] == trained.json()["model_version"]
        assert before["calibration_version"] == state["calibration_version"]
        assert before["calibration_version"] == trained.json()["calibration_version"]

        cal = http.post("/calibrate_ng", json={**IDS, "ok_scores": [1.0], "ng_scores": [3.0]})
        assert cal.status_code == 200, cal.text
        after = infer(http, blob).json()
        assert after["threshold"] == 2.0 != before["threshold"]
        assert after["model_version"] == before["model_version"]  # the bank is the same
        assert after["calibration_version"] == cal.json()["calibration_version"]
        assert after["calibration_version"] != before["calibration_version"]
        assert (
            http.get("/state", params=IDS).json()["calibration_version"]
            == (after["calibration_version"])
        )
        revisions = http.get("/models/revisions", params=IDS).json()["revisions"]
        assert [r["calibration_version"] for r in revisions] == [
            after["calibration_version"], before["calibration_version"]]  # fmt: skip
        other = ok_png(101)
        assert infer(http, other).json()["image_sha256"] == hashlib.sha256(other).hexdigest()


def test_an_uncalibrated_answer_has_no_calibration_version_but_names_its_image(client):
    client.post("/fit_ok", data=IDS, files=files("images", [ok_png(0)]))
    body = infer(client, ok_png(1)).json()
    assert body["verdict"] == "NO_MODEL" and body["calibration_version"] is None
    assert body["image_sha256"] and body["code_version"] and body["settings_fingerprint"]
