"""GET /manifest, /state and /models/revisions; POST /models/rollback."""

from __future__ import annotations

import pytest

from tests.helpers.api import IDS, files
from tests.helpers.images import ok_png


def test_state_of_nothing(client):
    body = client.get("/state", params=IDS).json()
    assert body["ready"] is False and body["has_memory"] is False and body["version"] is None


@pytest.mark.slow
def test_manifest_and_state_after_training(trained):
    trained.post("/datasets/upload", data={**IDS, "label": "ng"},
                 files=files("images", [ok_png(5)]))  # fmt: skip
    m = trained.get("/manifest")
    assert m.status_code == 200
    body = m.json()
    assert "root" not in body  # no server paths
    (recipe,) = body["recipes"]
    assert recipe["recipe_id"] == "disc-a" and recipe["mm_per_px"] == 0.1
    (model,) = recipe["models"]
    assert model["ready"] and model["has_index"] and model["dataset"] == {"ok": 0, "ng": 1}
    st = trained.get("/state", params=IDS).json()
    assert st["version"] == model["version"] and st["threshold"] == model["threshold"]
    assert trained.get("/manifest", params={"recipe_id": "DISC-A"}).json() == body | {
        "legacy": body.get("legacy")
    }


def test_manifest_refuses_bad_recipe(client):
    r = client.get("/manifest", params={"recipe_id": "last"})
    assert r.status_code == 400 and r.json()["error"] == "invalid_id"


def _revisions(client) -> dict:
    r = client.get("/models/revisions", params=IDS)
    assert r.status_code == 200, r.text
    return r.json()


def test_revisions_of_nothing(client):
    body = _revisions(client)
    assert body["current"] is None and body["revisions"] == []
    assert (body["recipe_id"], body["model_key"]) == ("disc-a", "inspection-1")


@pytest.mark.slow
def test_revisions_and_rollback(trained):
    """Training, then a calibration: two revisions of one version, told apart by their
    threshold; rolling back to the trained one serves its threshold again."""
    first = _revisions(trained)
    (trained_rev,) = first["revisions"]
    assert trained_rev["current"] and not trained_rev["calibrated"]
    scores = {"ok_scores": [1.0, 2.0, 3.0], "ng_scores": [10.0, 12.0]}
    cal = trained.post("/calibrate_ng", json={**IDS, **scores})
    assert cal.status_code == 200, cal.text

    body = _revisions(trained)
    current, previous = body["revisions"]
    assert body["current"] == current["revision"] != trained_rev["revision"]
    assert previous == {**trained_rev, "current": False}
    assert current["calibrated"] and current["threshold"] == cal.json()["threshold"]
    assert current["version"] == previous["version"]

    r = trained.post("/models/rollback", data={**IDS, "revision": previous["revision"]})
    assert r.status_code == 200, r.text
    assert r.json()["current"] == previous["revision"]
    state = trained.get("/state", params=IDS).json()
    assert (state["revision"], state["threshold"]) == (
        previous["revision"],
        previous["threshold"],
    )


def test_rollback_to_an_unknown_revision_is_a_404(trained):
    before = trained.get("/state", params=IDS).json()["revision"]
    for revision in ("0" * 16, "../../etc/passwd"):
        r = trained.post("/models/rollback", data={**IDS, "revision": revision})
        assert r.status_code == 404 and r.json()["error"] == "not_found"
        assert "no revision" in r.json()["detail"]
    assert trained.get("/state", params=IDS).json()["revision"] == before


def test_rollback_validates_ids_and_form(client):
    r = client.post("/models/rollback", data={**IDS, "recipe_id": "last", "revision": "x"})
    assert r.status_code == 400 and r.json()["error"] == "invalid_id"
    assert client.post("/models/rollback", data=IDS).status_code == 422
    r = client.get("/models/revisions", params={**IDS, "recipe_id": "../x"})
    assert r.status_code == 400
