"""``bdi serve`` as a real process: binds the configured port, answers, stops on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from tests.helpers.api import free_port

pytestmark = pytest.mark.slow


def test_bdi_serve_runs_the_api(tmp_path):
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("BDI_", "BRAKEDISC_"))},
        "BDI_REQUIRE_CUDA": "0",
        "BDI_BACKBONE": "efficientnet_lite0",
        "BDI_MODELS_DIR": str(tmp_path / "models"),
        "BDI_BACKEND_PORT": str(port),
        "BDI_API_KEY": "k",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge.cli", "serve"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
                assert time.monotonic() < deadline, "bdi serve did not answer"
                time.sleep(0.2)
        assert r.status_code == 200 and r.json()["model"] == "efficientnet_lite0@224"
        assert httpx.get(f"http://127.0.0.1:{port}/manifest").status_code == 401
        assert httpx.get(f"http://127.0.0.1:{port}/docs").status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    # uvicorn shuts down gracefully, then re-raises the signal it caught: a requested stop
    assert proc.returncode in (0, -signal.SIGTERM), out
    assert proc.returncode == 0, "a SIGTERM is a clean stop (bdi up's summary shows exit 0)"
    assert f"http://127.0.0.1:{port}" in out and "X-API-Key required" in out
    log = (tmp_path / "models" / "logs" / "api.jsonl").read_text()
    assert '"event":"shutdown"' in log  # the lifespan ran to its end


def test_bdi_serve_refuses_to_start_without_cuda_by_default(tmp_path):
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("BDI_", "BRAKEDISC_"))},
        "BDI_MODELS_DIR": str(tmp_path / "models"),
        "BDI_BACKEND_PORT": str(free_port()),
        "BDI_ENV_FILE": os.devnull,  # not the checkout's own bdi.env
    }
    done = subprocess.run(
        [sys.executable, "-m", "edge.cli", "serve"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert "CUDA is required" in done.stderr and "Traceback" not in done.stderr


def test_bdi_serve_on_a_taken_port_says_so_before_any_banner(tmp_path):
    """The port is bound before the banner: a second instance fails with one line."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("BDI_", "BRAKEDISC_"))},
        "BDI_REQUIRE_CUDA": "0",
        "BDI_BACKBONE": "efficientnet_lite0",
        "BDI_MODELS_DIR": str(tmp_path / "models"),
    }
    with socket.socket() as first:  # the first instance, as far as the port is concerned
        first.bind(("127.0.0.1", 0))
        first.listen()
        port = first.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "edge.cli", "serve", "--port", str(port)],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    assert "BDI Edge API on" not in done.stdout
    assert done.stderr.splitlines() == [
        f"bdi: error: port {port} on 127.0.0.1 is in use (another bdi serve?); "
        "choose another with --port or BDI_BACKEND_PORT"
    ]


def test_every_stderr_line_of_bdi_serve_is_json_native_ones_included(tmp_path):
    """A corrupt PNG upload makes libpng write to file descriptor 2, past Python's logging:
    ``bdi serve`` turns that line into a JSON record like every other on its stderr."""
    import cv2
    import numpy as np

    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("BDI_", "BRAKEDISC_"))},
        "BDI_REQUIRE_CUDA": "0",
        "BDI_BACKBONE": "efficientnet_lite0",
        "BDI_MODELS_DIR": str(tmp_path / "models"),
        "BDI_BACKEND_PORT": str(port),
        "BDI_ENV_FILE": os.devnull,
    }
    rng = np.random.default_rng(0)
    png = cv2.imencode(".png", rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))[1].tobytes()
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge.cli", "serve", "--no-warmup"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, "no answer"
                time.sleep(0.2)
        r = httpx.post(
            f"http://127.0.0.1:{port}/datasets/upload",
            data={"role_id": "r", "roi_id": "i", "label": "ok"},
            files=[("images", ("cut.png", png[:-20], "image/png"))],
            timeout=30,
        )
        assert r.status_code == 400, r.text  # refused as an image that does not decode
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "BDI Edge API on" in out
    records = [json.loads(line) for line in err.splitlines()]  # each line parses, or this fails
    native = [r for r in records if r["logger"] == "native"]
    assert [r["stderr"] for r in native] == ["libpng error: PNG input buffer is incomplete"]


def test_connections_accepted_on_the_listening_socket_get_tcp_nodelay():
    """asyncio sets TCP_NODELAY only on sockets made with IPPROTO_TCP: without it, Nagle
    held each keep-alive response's body for the client's delayed ACK (~40 ms a request)."""
    import asyncio

    from edge.cli.serve import listen_socket

    async def accepted_nodelay() -> int:
        loop = asyncio.get_running_loop()
        got: asyncio.Future[int] = loop.create_future()

        class Probe(asyncio.Protocol):
            def connection_made(self, transport):  # type: ignore[override]
                sock = transport.get_extra_info("socket")
                got.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

        server = await loop.create_server(Probe, sock=listen_socket("127.0.0.1", 0))
        try:
            port = server.sockets[0].getsockname()[1]
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return await asyncio.wait_for(got, 10)
        finally:
            server.close()

    assert asyncio.run(accepted_nodelay()) != 0
