"""The JSONL diagnostics log: one object per line, request ids, ids, durations, rotation."""

from __future__ import annotations

import json

import pytest

from edge.api.diagnostics import Diagnostics
from tests.helpers.api import IDS, fit
from tests.helpers.settings import tiny_settings


def read_log(client) -> list[dict]:
    path = client.app.state.bdi.diagnostics.path
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_training_and_requests_are_logged_with_ids(trained):
    r = trained.post("/calibrate_ng", json={**IDS, "ok_scores": [1.0], "ng_scores": [3.0]})
    rid = r.headers["x-request-id"]
    trained.post("/infer", data=IDS, files={"image": ("a.png", b"nope")})
    events = read_log(trained)
    training = [e for e in events if e["event"] == "training"]
    assert training and training[0]["result"] == "ok" and training[0]["n_images"] == 8
    assert training[0]["recipe_id"] == "disc-a" and training[0]["duration_ms"] > 0
    calibration = [e for e in events if e["event"] == "calibration"]
    assert calibration[0]["request_id"] == rid and calibration[0]["threshold"] == 2.0
    requests = [e for e in events if e["event"] == "request"]
    fit_line = next(e for e in requests if e["route"] == "/fit_ok")
    assert fit_line["status"] == 200 and fit_line["role_id"] == "Master1"
    assert fit_line["roi_id"] == "inspection-1" and fit_line["duration_ms"] > 0
    errors = [e for e in events if e["event"] == "error"]
    assert errors[-1]["status"] == 415 and errors[-1]["error"] == "unsupported_media_type"
    for e in events:
        assert {"ts", "level", "event", "pid"} <= set(e)


def test_log_goes_to_gui_log_dir_when_set(make_client, tmp_path):
    client = make_client(gui_log_dir=tmp_path / "guilogs")
    client.get("/health")
    assert client.app.state.bdi.diagnostics.path == tmp_path / "guilogs" / "api.jsonl"
    assert '"route":"/health"' in (tmp_path / "guilogs" / "api.jsonl").read_text()


def test_failed_training_is_logged(client):
    fit(client, n=2, mm_per_px="0.1")
    r = fit(client, n=2, mm_per_px="0.3", roi_id="other")
    assert r.status_code == 409
    errors = [e for e in read_log(client) if e["event"] == "error"]
    assert errors[-1]["status"] == 409 and errors[-1]["request_id"] == r.headers["x-request-id"]


def test_rotation(tmp_path):
    settings = tiny_settings(models_dir=tmp_path, log_max_mb=0.001, log_backups=2)
    diag = Diagnostics(settings)
    for i in range(200):
        diag.log("request", n=i, padding="x" * 50)
    diag.close()
    files = sorted(p.name for p in (tmp_path / "logs").iterdir())
    assert files == ["api.jsonl", "api.jsonl.1", "api.jsonl.2"]
    for name in files:
        for line in (tmp_path / "logs" / name).read_text().splitlines():
            json.loads(line)  # whole lines only
