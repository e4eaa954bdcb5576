"""``GET /state`` shows what the consumers report of a model's drift (the files they write
under the store, ``consumers.drift_state``)."""

from __future__ import annotations

from consumers.drift_state import DriftStateFile

QUERY = {"recipe_id": "Disc-A", "role_id": "master1", "roi_id": "inspection-1"}
KEY = "disc-a/master1/inspection-1"


def report(drift: bool, version: str | None) -> dict:
    return {"drift": drift, "since": "2026-11-27T16:57:14.145+00:00" if drift else None,
            "model_version": version, "frames": 900, "detector": "adwin",
            "statistic": 0.12}  # fmt: skip


def test_state_has_no_drift_without_a_consumer_report(make_client, tmp_path):
    body = make_client().get("/state", params=QUERY).json()
    assert body["drift"] is None and body["drift_reports"] == []


def test_state_shows_the_consumers_reports_on_the_current_version(make_client, tmp_path):
    client = make_client()
    root = tmp_path / "models"
    DriftStateFile(root, "bdi-a-1").write({KEY: report(True, None), "x/y/z": report(True, None)})
    DriftStateFile(root, "bdi-b-2").write({KEY: report(False, None)})
    body = client.get("/state", params=QUERY).json()
    assert body["drift"] is True  # any consumer in drift on the version in use
    assert sorted(r["consumer"] for r in body["drift_reports"]) == ["bdi-a-1", "bdi-b-2"]
    assert all(r["frames"] == 900 and r["updated_at"] for r in body["drift_reports"])


def test_a_report_on_another_version_is_listed_but_not_counted(make_client, tmp_path):
    client = make_client()
    DriftStateFile(tmp_path / "models", "bdi-a-1").write({KEY: report(True, "0ld")})
    body = client.get("/state", params=QUERY).json()
    assert body["drift"] is None and len(body["drift_reports"]) == 1
