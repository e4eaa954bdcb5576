"""API key, CORS, upload and pixel bounds, media types."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from tests.helpers.api import IDS, files
from tests.helpers.images import ok_png

KEY = "s3cret-key-for-tests"


def test_api_key_guards_everything_but_health_and_metrics(make_client):
    client = make_client(api_key=KEY)
    assert client.get("/health").status_code == 200
    assert client.get("/metrics").status_code == 200
    for method, path, kwargs in [
        ("get", "/manifest", {}),
        ("get", "/state", {"params": IDS}),
        ("get", "/datasets/list", {"params": IDS}),
        ("post", "/fit_ok", {"data": IDS}),
        ("post", "/infer", {"data": IDS}),
        ("delete", "/datasets/clear", {"params": IDS}),
    ]:
        for headers in ({}, {"X-API-Key": "wrong"}, {"X-API-Key": KEY[:-1]}):
            r = getattr(client, method)(path, headers=headers, **kwargs)
            assert r.status_code == 401, (path, headers, r.status_code)
            assert r.json()["error"] == "unauthorized"
    ok = client.get("/manifest", headers={"X-API-Key": KEY})
    assert ok.status_code == 200


def test_no_api_key_configured_means_open(client):
    assert client.get("/manifest").status_code == 200


def test_cors_is_off_by_default(client):
    r = client.options(
        "/manifest",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"},
    )
    assert "access-control-allow-origin" not in r.headers
    r = client.get("/health", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in r.headers


def test_cors_allows_only_listed_origins(make_client):
    client = make_client(cors_origins="https://hmi.plant.example")
    good = client.get("/health", headers={"Origin": "https://hmi.plant.example"})
    assert good.headers["access-control-allow-origin"] == "https://hmi.plant.example"
    assert good.headers["access-control-allow-credentials"] == "true"
    bad = client.get("/health", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in bad.headers


def test_cors_wildcard_never_with_credentials(make_client):
    client = make_client(cors_origins="*")
    r = client.get("/health", headers={"Origin": "https://any.example"})
    assert r.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in r.headers


def test_body_over_the_bound_is_413(make_client):
    client = make_client(max_upload_mb=0.05)  # ~52 KB
    big = np.random.default_rng(0).integers(0, 255, (200, 200, 3), np.uint8)
    blob = cv2.imencode(".png", big)[1].tobytes()
    assert len(blob) > 60_000
    r = client.post("/infer", data=IDS, files={"image": ("big.png", blob)})
    assert r.status_code == 413
    assert r.json()["error"] == "payload_too_large"
    assert r.headers["x-request-id"] == r.json()["request_id"]


def test_streamed_body_without_length_is_cut_at_the_bound(make_client):
    client = make_client(max_upload_mb=0.01)  # ~10 KB
    sent = {"bytes": 0}

    def body():
        for _ in range(1000):  # would be 1 MB
            sent["bytes"] += 1024
            yield b"x" * 1024

    r = client.post("/calibrate_ng", content=body(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert r.json()["error"] == "payload_too_large"


def test_pixel_bound_is_checked_from_the_header(trained, make_client):
    client = make_client(max_image_pixels=64 * 64)
    r = client.post("/infer", data=IDS, files={"image": ("x.png", ok_png(1))})  # 96 x 96
    assert r.status_code == 413
    assert r.json()["error"] == "image_too_large"


@pytest.mark.parametrize(
    "blob",
    [
        b"BM\x00\x00 a bitmap",
        b"GIF89a",
        b"<svg xmlns='http://www.w3.org/2000/svg'/>",
        b"\x00\x00\x00\x0cjP  \r\n\x87\n",
    ],  # fmt: skip
)
def test_only_png_and_jpeg(client, blob):
    r = client.post("/fit_ok", data=IDS, files=files("images", [blob]))
    assert r.status_code == 415
    assert r.json()["error"] == "unsupported_media_type"
