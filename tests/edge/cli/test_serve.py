"""``bdi serve`` as a real process: binds the configured port, answers, stops on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from tests.edge.conftest import free_port

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
    # uvicorn shuts down gracefully, then re-raises the signal it caught
    assert proc.returncode in (0, -signal.SIGTERM), out
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
    }
    done = subprocess.run(
        [sys.executable, "-m", "edge.cli", "serve"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert "CUDA is required" in done.stderr and "Traceback" not in done.stderr
