"""``POST /fit_ok``: the conformal threshold's fields (``target_frr``, the bound, warnings)
and ``mode=append`` (OK images added to the stored model without a refit, a new version;
409 when the model was made otherwise)."""

from __future__ import annotations

import httpx
import pytest

from edge.api import fitting
from engine.images import decode_image
from tests.helpers.api import IDS, files, fit
from tests.helpers.images import ng_png, ok_png

pytestmark = pytest.mark.slow  # each test trains a (tiny) model


def append(client, blobs: list[bytes], **form: str) -> httpx.Response:
    return client.post("/fit_ok", data={**IDS, "mode": "append", **form},
                       files=files("images", blobs))  # fmt: skip


def infer(client, blob: bytes) -> dict:
    r = client.post("/infer", data=IDS, files=files("image", [blob]))
    assert r.status_code == 200, r.text
    return r.json()


# --- the threshold's fields ---------------------------------------------------------------
def test_a_fit_states_its_conformal_threshold_and_warns_when_unguaranteed(client):
    body = fit(client, n=8).json()
    assert (body["mode"], body["calibration_method"], body["target_frr"]) == (
        "fit", "conformal", 0.05,
    )  # fmt: skip
    conformal = body["conformal"]
    assert conformal["n"] == body["n_calibration"] == 4  # at most half are held out
    assert (conformal["alpha"], conformal["needed"], conformal["guaranteed"]) == (0.05, 19, False)
    assert conformal["threshold"] == body["threshold"]
    assert body["added_rows"] is None and body["previous_model_version"] is None
    (warning,) = body["warnings"]
    assert "0.05 is not guaranteed" in warning and "at least 38 OK images" in warning


def test_target_frr_per_request(client):
    body = fit(client, n=8, target_frr="0.25").json()
    assert body["target_frr"] == 0.25 and body["conformal"]["needed"] == 3
    assert body["conformal"]["guaranteed"] and body["warnings"] == []


@pytest.mark.parametrize("value", ["0", "1", "-0.1", "nan", "x"])
def test_target_frr_outside_0_1_is_422(client, value):
    r = fit(client, n=2, target_frr=value)
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["loc"] == ["body", "target_frr"]


def test_a_legacy_fit_has_no_conformal_fields(make_client):
    body = fit(make_client(threshold_method="percentile"), n=6).json()
    assert body["calibration_method"] == "ok_percentile"
    assert body["conformal"] is None and body["target_frr"] is None and body["warnings"] == []


# --- mode=append --------------------------------------------------------------------------
def test_append_adds_images_as_a_new_version_without_a_refit(trained):
    first = trained.get("/state", params=IDS).json()
    defect = ng_png(3)
    before = infer(trained, defect)
    assert before["verdict"] == "NG"
    r = append(trained, [defect])
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["mode"], body["source"], body["n_images"]) == ("append", "upload", 1)
    assert body["previous_model_version"] == first["version"] != body["model_version"]
    assert body["added_rows"] > 0 and body["n_calibration"] == 0
    assert body["threshold"] == first["threshold"]  # one image: all into the bank
    assert "append_s" in body["timings_s"]
    assert trained.get("/state", params=IDS).json()["version"] == body["model_version"]
    revisions = trained.get("/models/revisions", params=IDS).json()["revisions"]
    assert [r["version"] for r in revisions] == [body["model_version"], first["version"]]
    after = infer(trained, defect)  # the image is in the bank now: it scores like OK
    assert after["model_version"] == body["model_version"]
    assert after["score"] < before["score"] and after["verdict"] == "OK"


def test_append_of_a_batch_adds_calibration_scores(trained):
    r = append(trained, [ok_png(s) for s in range(40, 46)])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["n_calibration"] == 2 and body["conformal"]["n"] == 4 + 2
    assert "append about" in body["warnings"][0]


def test_append_from_the_stored_dataset(trained):
    up = trained.post("/datasets/upload", data={**IDS, "label": "ok"},
                      files=files("images", [ok_png(50), ok_png(51)]))  # fmt: skip
    assert up.status_code == 200, up.text
    r = trained.post("/fit_ok", data={**IDS, "mode": "append", "use_dataset": "true"})
    assert r.status_code == 200, r.text  # fewer than BDI_MIN_OK_SAMPLES is fine
    assert (r.json()["source"], r.json()["n_images"]) == ("dataset", 2)


def test_append_from_an_empty_dataset_is_400(trained):
    r = trained.post("/fit_ok", data={**IDS, "mode": "append", "use_dataset": "true"})
    assert r.status_code == 400 and r.json()["error"] == "missing_ok_samples"
    assert "at least 1 needed to append" in r.json()["detail"]


def test_append_without_a_model_is_400(client):
    r = append(client, [ok_png(1)])
    assert r.status_code == 400 and r.json()["error"] == "missing_memory"


def test_append_to_a_model_of_another_input_size_is_409(trained, make_client):
    other = make_client(image_size=96)  # the same store, another BDI_IMAGE_SIZE
    version = other.get("/state", params=IDS).json()["version"]
    r = append(other, [ok_png(1)])
    assert r.status_code == 409, r.text
    assert r.json()["error"] == "append_mismatch"
    assert "efficientnet_lite0@64" in r.json()["detail"] and "@96" in r.json()["detail"]
    assert other.get("/state", params=IDS).json()["version"] == version  # nothing stored


def test_append_with_another_mm_per_px_is_409(trained):
    r = append(trained, [ok_png(1)], mm_per_px="0.2")
    assert r.status_code == 409 and r.json()["error"] == "mm_per_px_mismatch"
    assert append(trained, [ok_png(1)], mm_per_px="0.1").status_code == 200


def test_append_keeps_the_models_target(trained):
    r = append(trained, [ok_png(1)], target_frr="0.1")
    assert r.status_code == 400 and r.json()["error"] == "target_frr_with_append"


def test_an_unknown_mode_is_422(trained):
    r = append(trained, [ok_png(1)], mode="merge")
    assert r.status_code == 422 and r.json()["errors"][0]["loc"] == ["body", "mode"]


def test_an_append_never_overwrites_a_model_stored_meanwhile(trained):
    state = trained.app.state.bdi
    ref = state.store.ref(IDS["recipe_id"], IDS["role_id"], IDS["roi_id"])
    model = state.store.load_model(ref)
    grown = state.engine.append(model, [decode_image(ok_png(60), 10**7)])
    assert fit(trained, n=5).status_code == 200  # another training meanwhile
    newest = state.store.model_version(ref)
    with pytest.raises(fitting.ModelChanged, match="changed while the images"):
        fitting.save(state.store, ref, grown.model, model)
    assert state.store.model_version(ref) == newest


def test_append_over_real_http(live_server):
    server = live_server()
    with httpx.Client(base_url=server.url, timeout=60) as http:
        r = http.post("/fit_ok", data={**IDS, "mm_per_px": "0.1"},
                      files=files("images", [ok_png(s) for s in range(6)]))  # fmt: skip
        assert r.status_code == 200, r.text
        r = append(http, [ok_png(7), ok_png(8)])
        assert r.status_code == 200 and r.json()["mode"] == "append", r.text
        assert r.headers["x-request-id"]
