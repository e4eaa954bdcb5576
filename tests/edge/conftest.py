"""Factories for the REST API tests: an app over a temp store, synthetic disc images,
a trained model, and a real uvicorn server on a free port."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from edge.api.app import create_app
from edge.simulator.discs import encode_jpeg, encode_png, make_ng, make_ok
from tests.conftest import tiny_settings

SIZE = 96  # synthetic ROI size: small enough for seconds-long tests
IDS = {"recipe_id": "Disc-A", "role_id": "Master1", "roi_id": "inspection-1"}


def ok_png(seed: int) -> bytes:
    return encode_png(make_ok(seed, SIZE).image)


def ng_png(seed: int, kind: str | None = None) -> bytes:
    return encode_png(make_ng(seed, SIZE, kind).image)


def ok_jpeg(seed: int) -> bytes:
    return encode_jpeg(make_ok(seed, SIZE).image)


def files(field: str, blobs: list[bytes], ext: str = "png") -> list[tuple[str, tuple]]:
    media = "image/png" if ext == "png" else "image/jpeg"
    return [(field, (f"img{i}.{ext}", b, media)) for i, b in enumerate(blobs)]


# --- raw HTTP/1.1 over a socket (limits and slow bodies) ------------------------------
def id_parts() -> list[tuple[bytes, bytes]]:
    return [(f'Content-Disposition: form-data; name="{k}"'.encode(), v.encode())
            for k, v in IDS.items()]  # fmt: skip


def multipart(parts: list[tuple[bytes, bytes]], boundary: bytes = b"BDIBOUNDARY") -> bytes:
    """``parts``: (part headers, content) -> body."""
    out = b"".join(b"--" + boundary + b"\r\n" + h + b"\r\n\r\n" + c + b"\r\n" for h, c in parts)
    return out + b"--" + boundary + b"--\r\n"


def post_head(path: str, length: int | None, boundary: bytes = b"BDIBOUNDARY") -> bytes:
    size = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return (
        f"POST {path} HTTP/1.1\r\nHost: bdi\r\nContent-Type: multipart/form-data; "
        f"boundary={boundary.decode()}\r\n{size}\r\n\r\n"
    ).encode()


def read_until_closed(sock: socket.socket, deadline: float) -> tuple[str, bool]:
    """Everything the server sends until it closes, or until ``deadline`` (monotonic)."""
    reply = b""
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            data = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            return reply.decode("latin-1"), True
        if not data:
            return reply.decode("latin-1"), True
        reply += data
    return reply.decode("latin-1"), False


@pytest.fixture
def make_client(tmp_path: Path) -> Iterator[Callable[..., TestClient]]:
    """``make_client(**settings)`` -> a started TestClient over a fresh store."""
    opened: list[TestClient] = []

    def make(**overrides: object) -> TestClient:
        settings = tiny_settings(models_dir=tmp_path / "models", **overrides)
        client = TestClient(create_app(settings), raise_server_exceptions=False)
        client.__enter__()
        opened.append(client)
        return client

    yield make
    for client in opened:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client()


def fit(client: TestClient, n: int = 8, **form: str) -> httpx.Response:
    data = {**IDS, "mm_per_px": "0.1", **form}
    return client.post("/fit_ok", data=data, files=files("images", [ok_png(s) for s in range(n)]))


@pytest.fixture
def trained(client: TestClient) -> TestClient:
    """A client whose store holds a model for ``IDS`` (OK-only threshold)."""
    response = fit(client)
    assert response.status_code == 200, response.text
    return client


@dataclass
class LiveServer:
    url: str
    app: FastAPI
    server: uvicorn.Server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def live_server(tmp_path: Path) -> Iterator[Callable[..., LiveServer]]:
    """``live_server(**settings)`` -> a real uvicorn server (own thread) on a free port."""
    started: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start(**overrides: object) -> LiveServer:
        settings = tiny_settings(models_dir=tmp_path / "models", **overrides)
        app = create_app(settings)
        port = free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 20
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        started.append((server, thread))
        return LiveServer(f"http://127.0.0.1:{port}", app, server)

    yield start
    for server, thread in started:
        server.should_exit = True
        thread.join(timeout=10)
