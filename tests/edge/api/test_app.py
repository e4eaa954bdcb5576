"""App-wide behaviour: health, request ids, one error body for every failure."""

from __future__ import annotations

import pytest

from tests.helpers.api import IDS


def test_health_is_cheap_and_complete(client):
    r = client.get("/health", params={"recipe_id": "Disc-A"})
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok"
    assert body["device"].startswith("cpu")
    assert body["model"] == "efficientnet_lite0@64"
    assert body["version"]
    assert body["recipe_id"] == "disc-a"
    assert body["request_id"] == r.headers["x-request-id"]


def test_health_refuses_reserved_recipe(client):
    r = client.get("/health", params={"recipe_id": "last"})
    assert r.status_code == 400
    assert r.json()["error"] == "invalid_id"


def test_request_id_is_generated_or_kept(client):
    r1, r2 = client.get("/health"), client.get("/health")
    assert r1.headers["x-request-id"] != r2.headers["x-request-id"]
    r = client.get("/health", headers={"X-Request-Id": "line7-cam2.0001"})
    assert r.headers["x-request-id"] == "line7-cam2.0001"
    # an id that would be unsafe in logs/headers is replaced, not echoed
    r = client.get("/health", headers={"X-Request-Id": "a b;<x>" + "x" * 100})
    assert r.headers["x-request-id"] != "a b;<x>" + "x" * 100
    assert len(r.headers["x-request-id"]) == 32


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("get", "/no/such/route", 404, "not_found"),
        ("put", "/fit_ok", 405, "method_not_allowed"),
        ("post", "/calibrate_ng", 422, "validation_error"),
        ("get", "/state", 422, "validation_error"),
    ],
)
def test_every_error_has_the_same_body(client, method, path, status, code):
    r = getattr(client, method)(path)
    assert r.status_code == status
    body = r.json()
    assert body["error"] == code
    assert body["detail"]
    assert body["request_id"] == r.headers["x-request-id"]


def test_validation_errors_name_fields_without_echoing_input(client):
    r = client.post("/calibrate_ng", json={**IDS, "ok_scores": "secret-value"})
    assert r.status_code == 422
    body = r.json()
    assert any(e["loc"][-1] == "ok_scores" for e in body["errors"])
    assert "secret-value" not in r.text


def test_unexpected_error_is_a_500_without_traceback(client):
    state = client.app.state.bdi

    def boom(*args, **kwargs):
        raise RuntimeError("disk controller on fire at /srv/models")

    state.store.manifest = boom
    r = client.get("/manifest")
    assert r.status_code == 500
    body = r.json()
    assert body == {
        "error": "internal_error",
        "detail": "unexpected server error",
        "request_id": r.headers["x-request-id"],
    }
    assert "Traceback" not in r.text and "/srv/models" not in r.text
    # ... but the diagnostics log has the whole story, under the same request id
    lines = state.diagnostics.path.read_text().splitlines()
    errors = [line for line in lines if '"event":"error"' in line]
    assert any(r.headers["x-request-id"] in e and "Traceback" in e for e in errors)


def test_openapi_docs_are_served(client):
    assert client.get("/docs").status_code == 200
    schema = client.get("/openapi.json").json()
    for path in ("/fit_ok", "/infer", "/calibrate_ng", "/datasets/upload", "/manifest"):
        assert path in schema["paths"]


def test_ready_waits_for_the_engine(make_client, monkeypatch):
    import threading

    from fastapi.testclient import TestClient

    from edge.api.app import create_app
    from tests.helpers.settings import tiny_settings

    gate = threading.Event()
    settings = tiny_settings()
    app = create_app(settings, warmup=True)
    engine = app.state.bdi.engine
    real = engine.backbone

    def slow_backbone(*args, **kwargs):
        gate.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "backbone", slow_backbone)
    with TestClient(app) as client:
        loading = client.get("/ready")
        health = client.get("/health")
        gate.set()
        for _ in range(200):
            ready = client.get("/ready")
            if ready.status_code == 200:
                break
            threading.Event().wait(0.05)
    assert loading.status_code == 503 and loading.json()["checks"]["engine"] == "loading"
    assert health.status_code == 200 and health.json()["ready"] is False
    assert ready.status_code == 200 and ready.json()["checks"] == {
        "engine": "ready", "broker": "not configured"}  # fmt: skip


def test_ready_follows_the_broker(make_client):
    import socket
    import time

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    up_port = listener.getsockname()[1]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        down_port = s.getsockname()[1]  # nothing listens there once closed
    try:
        down = make_client(kafka_bootstrap=f"127.0.0.1:{down_port}")
        r = down.get("/ready")
        assert r.status_code == 503 and r.json()["checks"]["broker"] == "unreachable"
        up = make_client(kafka_bootstrap=f"127.0.0.1:{down_port},127.0.0.1:{up_port}")
        for _ in range(100):
            r = up.get("/ready")
            if r.status_code == 200:
                break
            time.sleep(0.05)
        assert r.status_code == 200 and r.json()["checks"]["broker"] == "ok"
    finally:
        listener.close()
