"""The main flow through a real uvicorn server on a free port, over real HTTP."""

from __future__ import annotations

import base64
import io
import select
import socket
import threading
import time
import zipfile
from urllib.parse import urlparse

import httpx
import pytest

from engine.images import PNG_MAGIC
from tests.helpers.api import IDS, files, id_parts, multipart, post_head, read_until_closed
from tests.helpers.images import ng_png, ok_png

pytestmark = pytest.mark.slow


def test_main_flow(live_server):
    server = live_server(api_key="k")
    with httpx.Client(base_url=server.url, headers={"X-API-Key": "k"}, timeout=60) as http:
        health = http.get("/health").json()
        assert health["status"] == "ok"

        fit = http.post(
            "/fit_ok", data={**IDS, "mm_per_px": "0.1"},
            files=files("images", [ok_png(s) for s in range(10)]),
        )  # fmt: skip
        assert fit.status_code == 200, fit.text
        version = fit.json()["model_version"]

        # calibrate from scores measured on held-out OK and NG images
        ok_scores, ng_scores = [], []
        for seed in range(40, 44):
            for blob, out in ((ok_png(seed), ok_scores), (ng_png(seed), ng_scores)):
                r = http.post("/infer", data=IDS, files={"image": ("f.png", blob)})
                out.append(r.json()["score"])
        cal = http.post(
            "/calibrate_ng", json={**IDS, "ok_scores": ok_scores, "ng_scores": ng_scores}
        )
        assert cal.status_code == 200, cal.text
        threshold = cal.json()["threshold"]
        assert max(ok_scores) < threshold <= min(ng_scores)

        ng = http.post(
            "/infer", data={**IDS, "heatmap": "true"}, files={"image": ("f.png", ng_png(77))}
        ).json()
        assert ng["verdict"] == "NG" and ng["threshold"] == threshold
        assert ng["model_version"] == version and ng["regions"]
        assert base64.b64decode(ng["heatmap_png_base64"]).startswith(PNG_MAGIC)
        ok = http.post("/infer", data=IDS, files={"image": ("f.png", ok_png(78))}).json()
        assert ok["verdict"] == "OK"

        manifest = http.get("/manifest").json()
        (model,) = manifest["recipes"][0]["models"]
        assert model["ready"] and model["threshold"] == threshold

        up = http.post("/datasets/upload", data={**IDS, "label": "ng"},
                       files=files("images", [ng_png(1), ng_png(2)]))  # fmt: skip
        assert up.status_code == 200
        names = [i["name"] for i in up.json()["stored"]]
        listed = http.get("/datasets/list", params=IDS).json()
        assert [i["name"] for i in listed["ng"]] == names
        z = http.get("/datasets/download", params=IDS)
        with zipfile.ZipFile(io.BytesIO(z.content)) as zf:
            assert {f"ng/{n}" for n in names} <= set(zf.namelist())
        one = http.get("/datasets/file", params={**IDS, "label": "ng", "name": names[0]})
        assert one.content.startswith(PNG_MAGIC)
        assert (
            http.delete(
                "/datasets/file", params={**IDS, "label": "ng", "name": names[0]}
            ).status_code
            == 200
        )
        cleared = http.delete("/datasets/clear", params=IDS).json()
        assert cleared == {"deleted": 1, "counts": {"ok": 0, "ng": 0}}

        assert httpx.get(f"{server.url}/manifest").status_code == 401  # no key


def test_training_runs_off_the_event_loop_and_is_bounded(live_server):
    server = live_server(max_concurrent_fits=1)
    engine = server.app.state.bdi.engine
    real_fit, release, entered = engine.fit, threading.Event(), threading.Event()

    def slow_fit(*args, **kwargs):
        entered.set()
        release.wait(30)
        return real_fit(*args, **kwargs)

    engine.fit = slow_fit
    result: dict[str, httpx.Response] = {}

    def first() -> None:
        result["fit"] = httpx.post(
            f"{server.url}/fit_ok", data=IDS,
            files=files("images", [ok_png(s) for s in range(3)]), timeout=60,
        )  # fmt: skip

    thread = threading.Thread(target=first)
    thread.start()
    try:
        assert entered.wait(30)
        # the loop still answers while a training is running ...
        assert httpx.get(f"{server.url}/health", timeout=5).status_code == 200
        # ... and a second training is refused, not queued
        busy = httpx.post(f"{server.url}/fit_ok", data=IDS,
                          files=files("images", [ok_png(9)]), timeout=10)  # fmt: skip
        assert busy.status_code == 429 and busy.headers["retry-after"]
    finally:
        release.set()
        thread.join(60)
    assert result["fit"].status_code == 200


def test_oversized_upload_is_refused_before_it_is_sent(live_server):
    server = live_server(max_upload_mb=1)
    host, port = urlparse(server.url).hostname, urlparse(server.url).port
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(
            b"POST /infer HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            b"Content-Length: 10000000000\r\n\r\n"
        )
        start = time.monotonic()
        reply = ""
        while "payload_too_large" not in reply and time.monotonic() - start < 10:
            chunk = sock.recv(65536).decode("latin-1")
            if not chunk:
                break
            reply += chunk
    # answered at once, with none of the announced 10 GB sent
    assert reply.startswith("HTTP/1.1 413"), reply[:100]
    # (the loop above gives up after 10 s: an answer means it came without the body)
    assert "payload_too_large" in reply and "x-request-id" in reply.lower()


def test_slow_bodies_are_cut_and_timely_ones_are_read(live_server):
    """A body that stalls, or trickles below the minimum rate, gets 408 and a closed
    connection once its allowance is spent; one that keeps the rate is read whole."""
    server = live_server(body_timeout_s=1.0, body_min_rate_kb_s=1.0)
    port = urlparse(server.url).port
    image = b'Content-Disposition: form-data; name="image"; filename="f.png"'
    body = multipart([*id_parts(), (image + b"\r\nContent-Type: image/png", ok_png(5))])
    head = post_head("/infer", len(body))
    assert len(body) > 2048

    with socket.create_connection(("127.0.0.1", port), timeout=10) as stalled:
        stalled.sendall(head + body[:100])  # then nothing
        start = time.monotonic()
        reply, closed = read_until_closed(stalled, start + 10)
        seconds = time.monotonic() - start
    assert reply.startswith("HTTP/1.1 408"), reply[:200]
    assert '"error":"request_timeout"' in reply and "x-request-id" in reply.lower()
    assert closed and 0.9 < seconds < 5, (closed, seconds)

    # 10 bytes every 50 ms (200 B/s) against 1 s + 1 s per KiB: cut after about 1.2 s
    with socket.create_connection(("127.0.0.1", port), timeout=10) as trickle:
        trickle.sendall(head)
        start, sent = time.monotonic(), 0
        while sent < len(body) and not select.select([trickle], [], [], 0)[0]:
            trickle.sendall(body[sent : sent + 10])
            sent += 10
            time.sleep(0.05)
        reply, closed = read_until_closed(trickle, time.monotonic() + 10)
    assert reply.startswith("HTTP/1.1 408"), reply[:200]
    assert closed and sent < len(body) and time.monotonic() - start < 6

    # the whole body in three pieces, 0.3 s apart: within the allowance, read and answered
    # (no model was trained here: the answer names the missing model, so the form was read)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as timely:
        timely.sendall(head)
        third = len(body) // 3
        for piece in (body[:third], body[third : 2 * third], body[2 * third :]):
            time.sleep(0.3)
            timely.sendall(piece)
        reply, _ = read_until_closed(timely, time.monotonic() + 3)
    assert reply.startswith("HTTP/1.1 400"), reply[:300]
    assert '"error":"missing_memory"' in reply, reply
    # the server still answers everyone else
    assert httpx.get(f"{server.url}/health", timeout=5).status_code == 200
