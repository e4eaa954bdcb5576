"""GET /manifest and /state."""

from __future__ import annotations

import pytest

from tests.edge.conftest import IDS, files, ok_png


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
