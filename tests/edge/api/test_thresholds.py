"""Conformal thresholds over real HTTP: ``/calibrate_ng`` reports the conformal and the
balanced choice and stores the one asked for, re-derives the threshold at another target
false-reject rate, warns when too few held-out images back it, divides it among a part's
ROIs; every verdict carries its p-value; ``/state`` says how the threshold was set."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import httpx
import numpy as np
import pytest

from engine.calibration import from_ok_ng
from tests.helpers.api import IDS, LiveServer, files, fit
from tests.helpers.images import ng_png, ok_png

pytestmark = pytest.mark.slow  # each test trains a (tiny) model

Api = tuple[httpx.Client, LiveServer]


def above(score: float) -> float:
    """The stored threshold of a conformal choice s_(k): the next float up (NG above s_(k))."""
    return float(np.nextafter(score, np.inf))


@pytest.fixture
def api(live_server: Callable[..., LiveServer]) -> Iterator[Callable[..., Api]]:
    """``api(**settings)`` -> an HTTP client of a live server whose store holds a model
    fitted from 8 OK images (4 held out to calibrate), and the server."""
    opened: list[httpx.Client] = []

    def start(**settings: object) -> Api:
        server = live_server(**settings)
        http = httpx.Client(base_url=server.url, timeout=120)
        opened.append(http)
        fitted = fit(http)  # type: ignore[arg-type]
        assert fitted.status_code == 200, fitted.text
        return http, server

    yield start
    for http in opened:
        http.close()


def held_out(server: LiveServer) -> list[float]:
    """The stored model's held-out OK scores, ascending."""
    store = server.app.state.bdi.store
    model = store.load_model(store.ref(IDS["recipe_id"], IDS["role_id"], IDS["roi_id"]))
    return list(model.calibration.conformal.scores)


def calibrate(http: httpx.Client, **body: object) -> httpx.Response:
    return http.post("/calibrate_ng", json={**IDS, **body})


def state(http: httpx.Client) -> dict:
    return http.get("/state", params=IDS).json()


def test_calibrate_ng_reports_both_choices_and_applies_the_asked_one(api):
    http, server = api(target_frr=0.2)
    scores = held_out(server)
    assert len(scores) == 4  # needed(0.2) = 4: guaranteed
    top = scores[-1]  # k = ceil(0.8 * 5) = 4
    assert state(http)["threshold"] == above(top)
    ok, ng = [top * 0.1, top * 0.2, top * 0.3], [top * 0.5, top * 2.0]
    balanced = from_ok_ng(ok, ng, 99.5)

    r = calibrate(http, ok_scores=ok, ng_scores=ng)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["applied"] == "balanced" and body["method"] == "ok_ng"
    assert body["threshold"] == balanced.threshold == body["balanced"]["threshold"]
    assert body["balanced"]["ng_miss_rate"] == balanced.ng_miss_rate
    assert body["conformal"] == {
        "alpha": 0.2, "target_frr": 0.2, "per_part_rois": 1, "n": 4, "k": 4, "bound": 0.2,
        "guaranteed": True, "needed": 4, "threshold": above(top), "ng_miss_rate": 0.5,
    }  # fmt: skip
    assert body["warnings"] == []
    now = state(http)
    assert now["threshold"] == balanced.threshold and now["threshold_method"] == "ok_ng"
    assert now["target_frr"] is None  # the applied threshold is not the conformal one
    assert now["n_held_out"] is None

    r = calibrate(http, ok_scores=ok, ng_scores=ng, apply="conformal")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["applied"] == "conformal" and body["method"] == "conformal"
    assert body["threshold"] == above(top) == body["conformal"]["threshold"]
    assert body["ng_miss_rate"] == 0.5 and body["ng"]["n"] == 2
    assert body["balanced"]["threshold"] == balanced.threshold  # reported beside it
    now = state(http)
    assert (
        now["threshold"] == above(top) and now["calibration_version"] == body["calibration_version"]
    )
    assert (now["threshold_method"], now["target_frr"], now["frr_guaranteed"]) == (
        "conformal", 0.2, True)  # fmt: skip
    verdict = http.post("/infer", data=IDS, files=files("image", [ok_png(50)])).json()
    assert verdict["threshold"] == above(top) and verdict["p_value"] is not None


def test_target_frr_rederives_the_threshold_without_scores(api):
    http, server = api(target_frr=0.2)
    scores = held_out(server)
    version = state(http)["version"]

    r = calibrate(http, apply="conformal", target_frr=0.4)  # no images, no scores
    assert r.status_code == 200, r.text
    body = r.json()
    # k = ceil(0.6 * 5) = 3; bound (4 + 1 - 3) / 5
    assert body["threshold"] == above(scores[2]) and body["conformal"]["k"] == 3
    assert body["conformal"]["bound"] == pytest.approx(0.4) and body["conformal"]["guaranteed"]
    assert body["ok"]["n"] == 4 and body["ng"] is None and body["balanced"] is None
    now = state(http)
    assert (now["threshold"], now["target_frr"], now["version"]) == (above(scores[2]), 0.4, version)

    # the held-out scores stay: a second re-derivation starts from the same four
    r = calibrate(http, apply="conformal", target_frr=0.2)
    assert r.json()["threshold"] == above(scores[3]) and held_out(server) == scores

    # today's validation otherwise: OK scores are needed
    for body in ({"target_frr": 0.4}, {"apply": "conformal", "ng_scores": [1.0]},
                 {"apply": "conformal", "target_frr": 0.0},
                 {"apply": "conformal", "target_frr": 1.0}):  # fmt: skip
        assert calibrate(http, **body).status_code == 422, body


def test_an_unguaranteed_target_is_stored_marked_with_a_warning(api):
    http, server = api(target_frr=0.2)
    scores = held_out(server)
    r = calibrate(http, apply="conformal", target_frr=0.01)
    assert r.status_code == 200, r.text
    body = r.json()
    conformal = body["conformal"]
    assert (conformal["guaranteed"], conformal["needed"], conformal["n"]) == (False, 99, 4)
    assert body["threshold"] == above(scores[-1]) == conformal["threshold"]  # the highest
    (warning,) = body["warnings"]
    assert "99 held-out OK images" in warning and "has 4" in warning
    now = state(http)
    assert (now["target_frr"], now["frr_guaranteed"], now["n_held_out"]) == (0.01, False, 4)
    (recipe,) = http.get("/manifest").json()["recipes"]
    assert recipe["models"][0]["frr_guaranteed"] is False
    assert recipe["models"][0]["n_held_out"] == 4


def test_per_part_rois_divides_the_target(api):
    http, server = api(target_frr=0.2)
    scores = held_out(server)
    r = calibrate(http, apply="conformal", target_frr=0.8, per_part_rois=2)
    assert r.status_code == 200, r.text
    conformal = r.json()["conformal"]
    assert (conformal["alpha"], conformal["target_frr"], conformal["per_part_rois"]) == (
        0.4, 0.8, 2)  # fmt: skip
    assert r.json()["threshold"] == above(scores[2])  # as target_frr=0.4 for one ROI
    assert state(http)["target_frr"] == 0.4  # the stored threshold is per ROI
    for body in ({"apply": "conformal", "per_part_rois": 2},  # no target to divide
                 {"apply": "conformal", "target_frr": 0.1, "per_part_rois": 0},
                 {"apply": "conformal", "target_frr": 0.1, "per_part_rois": 1.5}):  # fmt: skip
        assert calibrate(http, **body).status_code == 422, body


def test_apply_conformal_on_a_legacy_model_is_a_409(api):
    http, _ = api(threshold_method="percentile")
    assert state(http)["threshold_method"] == "ok_percentile"
    r = calibrate(http, apply="conformal", target_frr=0.1)
    assert r.status_code == 409
    assert r.json()["error"] == "no_held_out_scores" and "refit" in r.json()["detail"]
    r = calibrate(http, ok_scores=[1.0, 2.0], ng_scores=[5.0], target_frr=0.1)
    assert r.status_code == 200, r.text
    assert r.json()["conformal"] is None and r.json()["balanced"]["threshold"] == 3.5
    verdict = http.post("/infer", data=IDS, files=files("image", [ok_png(50)])).json()
    assert verdict["verdict"] in ("OK", "NG") and verdict["p_value"] is None


def test_every_verdict_carries_its_conformal_p_value(api):
    http, server = api(target_frr=0.2)
    scores = held_out(server)

    def expected(score: float) -> float:
        return (1 + sum(s >= score for s in scores)) / (len(scores) + 1)

    for blob in (ok_png(60), ng_png(1)):
        v = http.post("/infer", data=IDS, files=files("image", [blob])).json()
        assert 0 < v["p_value"] <= 1 and v["p_value"] == pytest.approx(expected(v["score"]))
    log = server.app.state.bdi.diagnostics.path.read_text().splitlines()
    lines = [json.loads(line) for line in log if '"event":"inference"' in line]
    assert [e["p_value"] for e in lines][-1] == v["p_value"]  # the diagnostics line too
    for label, blobs in (("ok", [ok_png(61), ok_png(62)]), ("ng", [ng_png(2)])):
        up = http.post("/datasets/upload", data={**IDS, "label": label},
                       files=files("images", blobs))  # fmt: skip
        assert up.status_code == 200, up.text
    rows = http.post("/infer_dataset", data=IDS).json()["results"]
    assert len(rows) == 3
    assert all(r["p_value"] == pytest.approx(expected(r["score"])) for r in rows)

    # /calibrate_dataset reports the conformal choice beside its own
    r = http.post("/calibrate_dataset", data=IDS)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["applied"] == "balanced" and body["balanced"]["threshold"] == body["threshold"]
    ng_score = next(row["score"] for row in rows if row["label"] == "ng")
    assert body["conformal"]["threshold"] == above(scores[-1])
    assert body["conformal"]["ng_miss_rate"] == (1.0 if ng_score < scores[-1] else 0.0)
