"""Talking to the REST API: the ids of the test model, multipart uploads, a training
call, raw HTTP/1.1 over a socket (limits and slow bodies), a live server's handle."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass

import httpx
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests.helpers.images import ok_png

IDS = {"recipe_id": "Disc-A", "role_id": "Master1", "roi_id": "inspection-1"}


def files(field: str, blobs: list[bytes], ext: str = "png") -> list[tuple[str, tuple]]:
    media = "image/png" if ext == "png" else "image/jpeg"
    return [(field, (f"img{i}.{ext}", b, media)) for i, b in enumerate(blobs)]


def fit(client: TestClient, n: int = 8, **form: str) -> httpx.Response:
    data = {**IDS, "mm_per_px": "0.1", **form}
    return client.post("/fit_ok", data=data, files=files("images", [ok_png(s) for s in range(n)]))


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


# --- a live server --------------------------------------------------------------------
@dataclass
class LiveServer:
    url: str
    app: FastAPI
    server: uvicorn.Server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
