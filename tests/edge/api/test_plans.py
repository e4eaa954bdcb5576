"""``PUT`` / ``GET /recipes/{recipe_id}/plan`` (edge/api/routes/plans.py): stored versioned,
read back by version, refused with 400 / 404 / 422 codes, warnings for ROIs without a
model, the API key, over a real HTTP server too."""

from __future__ import annotations

import httpx
import pytest

from tests.helpers.api import IDS

KEY = "s3cret-key-for-tests"
PLAN = {
    "rois": [
        {"role_id": "Master1", "roi_id": "inner-ring", "required": True},
        {"role_id": "Master1", "roi_id": "outer-ring", "required": False},
        {"role_id": "Master2", "roi_id": "inner-ring"},
    ],
    "deadline_ms": 4000,
}


def test_put_stores_the_plan_and_get_reads_it_back(client):
    r = client.put("/recipes/Disc-A/plan", json=PLAN)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["recipe_id"] == "disc-a" and body["deadline_ms"] == 4000 and body["current"]
    assert body["rois"][2] == {"role_id": "Master2", "roi_id": "inner-ring", "required": True}
    assert len(body["version"]) == 16 and isinstance(body["created_at"], float)
    assert client.get("/recipes/disc-a/plan").json() == body
    again = client.put("/recipes/DISC-A/plan", json=PLAN).json()
    assert again == body  # the same plan keeps its version and its first time


def test_defaults_and_older_versions(client):
    first = client.put("/recipes/r/plan", json={"rois": PLAN["rois"][:1]}).json()
    assert first["deadline_ms"] == 5000 and first["rois"][0]["required"] is True
    second = client.put("/recipes/r/plan", json=PLAN).json()
    assert second["version"] != first["version"]
    old = client.get("/recipes/r/plan", params={"version": first["version"]})
    assert old.status_code == 200
    assert {**old.json(), "current": True} == first  # what a part record's plan_version names
    assert old.json()["current"] is False
    assert client.get("/recipes/r/plan").json()["version"] == second["version"]


def test_warnings_name_the_rois_without_a_model(trained):
    plan = {"rois": [{"role_id": IDS["role_id"], "roi_id": IDS["roi_id"]},
                     {"role_id": IDS["role_id"], "roi_id": "no-such-roi"}]}  # fmt: skip
    body = trained.put(f"/recipes/{IDS['recipe_id']}/plan", json=plan).json()
    assert body["warnings"] == [
        {
            "role_id": IDS["role_id"],
            "roi_id": "no-such-roi",
            "reason": "no_model",
            "detail": "no model stored for role 'Master1', ROI 'no-such-roi': "
            "its frames get NO_MODEL",
        }
    ]
    assert trained.get(f"/recipes/{IDS['recipe_id']}/plan").json()["warnings"] == body["warnings"]


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"rois": []}, "at least one ROI"),
        ({"rois": [PLAN["rois"][0], {**PLAN["rois"][0], "required": False}]}, "named twice"),
        ({**PLAN, "deadline_ms": 0}, "between 1 and 3600000"),
        ({**PLAN, "deadline_ms": 3_600_001}, "between 1 and 3600000"),
        ({**PLAN, "deadline_ms": 10**30}, "between 1 and 3600000"),
    ],
)
def test_unusable_plans_are_400_invalid_plan(client, body, detail):
    r = client.put("/recipes/r/plan", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "invalid_plan" and detail in r.json()["detail"]
    assert client.get("/recipes/r/plan").status_code == 404  # nothing was stored


@pytest.mark.parametrize(
    ("recipe", "roi"),
    [
        ("Disc%20A", PLAN["rois"][0]),
        ("last", PLAN["rois"][0]),
        ("r", {"role_id": "", "roi_id": "x"}),
        ("r", {"role_id": "m", "roi_id": "é" * 33}),  # 66 UTF-8 bytes
        ("r", {"role_id": "m\u0007", "roi_id": "x"}),
    ],
)
def test_bad_ids_are_400_invalid_id(client, recipe, roi):
    r = client.put(f"/recipes/{recipe}/plan", json={"rois": [roi]})
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "invalid_id"


@pytest.mark.parametrize(
    "body",
    [
        {"rois": "Master1/inner-ring"},
        {"rois": [{"role_id": "m"}]},
        {"rois": [{"role_id": "m", "roi_id": "x", "required": "yes"}]},
        {"rois": [{"role_id": "m", "roi_id": "x"}], "deadline_ms": "5000"},
        {"rois": [{"role_id": "m", "roi_id": "x"}], "deadline_ms": 5.5},
        {"rois": [{"role_id": "m", "roi_id": "x"}], "colour": "red"},
        {"deadline_ms": 5000},
    ],
)
def test_bodies_that_do_not_match_the_schema_are_422(client, body):
    r = client.put("/recipes/r/plan", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "validation_error"


def test_missing_plans_and_versions_are_404_plan_not_found(client):
    r = client.get("/recipes/r/plan")
    assert r.status_code == 404
    assert r.json()["error"] == "plan_not_found"
    assert r.json()["detail"] == "no inspection plan stored for recipe 'r'"
    version = client.put("/recipes/r/plan", json=PLAN).json()["version"]
    for unknown in ("0" * 16, "../../recipe.json", version.upper()):
        r = client.get("/recipes/r/plan", params={"version": unknown})
        assert r.status_code == 404 and r.json()["error"] == "plan_not_found", unknown
    assert client.get("/recipes/other/plan", params={"version": version}).status_code == 404


def test_the_api_key_guards_both(make_client):
    client = make_client(api_key=KEY)
    for method, kwargs in [("put", {"json": PLAN}), ("get", {})]:
        for headers in ({}, {"X-API-Key": "wrong"}):
            r = client.request(method, "/recipes/r/plan", headers=headers, **kwargs)
            assert r.status_code == 401 and r.json()["error"] == "unauthorized"
    ok = client.put("/recipes/r/plan", json=PLAN, headers={"X-API-Key": KEY})
    assert ok.status_code == 200
    assert client.get("/recipes/r/plan", headers={"X-API-Key": KEY}).status_code == 200


def test_cors_lets_a_listed_origin_put(make_client):
    client = make_client(cors_origins="https://hmi.plant.example")
    r = client.options(
        "/recipes/r/plan",
        headers={"Origin": "https://hmi.plant.example", "Access-Control-Request-Method": "PUT"},
    )
    assert r.status_code == 200
    assert "PUT" in r.headers["access-control-allow-methods"]


def test_over_real_http(live_server):
    server = live_server(api_key=KEY)
    with httpx.Client(base_url=server.url, headers={"X-API-Key": KEY}, timeout=10) as http:
        put = http.put("/recipes/disc-b/plan", json=PLAN)
        assert put.status_code == 200, put.text
        assert put.headers["x-request-id"]
        got = http.get("/recipes/disc-b/plan", params={"version": put.json()["version"]})
        assert got.json() == put.json()
        bad = http.put("/recipes/disc-b/plan", json={"rois": []})
        assert bad.status_code == 400 and bad.json()["request_id"] == bad.headers["x-request-id"]
