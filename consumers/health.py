"""The consumer's own health: ``GET /health`` (JSON; 503 until the group is joined) and
``GET /metrics`` (Prometheus text) on ``BDI_CONSUMER_HEALTH_PORT`` (0: off).

A few lines of HTTP/1.1 on asyncio rather than a web framework: the endpoint must answer
from the consumer's own event loop, so that a wedged loop shows as a failing probe.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import orjson

log = logging.getLogger(__name__)

MAX_REQUEST_LINE = 8192


def metrics_text(h: dict[str, Any]) -> str:
    lines = [
        "# HELP bdi_consumer_ready 1 when the consumer has joined its group",
        "# TYPE bdi_consumer_ready gauge",
        f"bdi_consumer_ready {int(bool(h['ready']))}",
        "# HELP bdi_consumer_verdicts_total Verdicts delivered, by verdict",
        "# TYPE bdi_consumer_verdicts_total counter",
    ]
    lines += [f'bdi_consumer_verdicts_total{{verdict="{k}"}} {v}' for k, v in
              sorted(h["verdicts"].items())]  # fmt: skip
    lines += [
        "# HELP bdi_consumer_batches_total Batches scored",
        "# TYPE bdi_consumer_batches_total counter",
        f"bdi_consumer_batches_total {h['batches']}",
        "# HELP bdi_consumer_lag Frames not yet committed, per assigned partition",
        "# TYPE bdi_consumer_lag gauge",
    ]
    lines += [f'bdi_consumer_lag{{partition="{k}"}} {v}' for k, v in sorted(h["lag"].items())]
    if h["last_commit_at"] is not None:
        lines += [
            "# HELP bdi_consumer_last_commit_timestamp_seconds Time of the last commit",
            "# TYPE bdi_consumer_last_commit_timestamp_seconds gauge",
            f"bdi_consumer_last_commit_timestamp_seconds {h['last_commit_at']:.3f}",
        ]
    return "\n".join(lines) + "\n"


class HealthServer:
    def __init__(self, health: Callable[[], dict[str, Any]], host: str, port: int) -> None:
        self.health = health
        self.host, self.port = host, port
        self._server: asyncio.Server | None = None

    async def start(self) -> HealthServer:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        sock = self._server.sockets[0].getsockname()
        self.port = int(sock[1])
        log.info("health endpoint", extra={"url": f"http://{self.host}:{self.port}/health"})
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5.0)
            while (await asyncio.wait_for(reader.readline(), 5.0)) not in (b"\r\n", b"\n", b""):
                pass  # headers: nothing in them matters here
            parts = line[:MAX_REQUEST_LINE].decode("latin-1").split()
            method, path = (parts[0], parts[1].split("?")[0]) if len(parts) >= 2 else ("", "")
            status, ctype, body = self._answer(method, path)
            head = (f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")  # fmt: skip
            writer.write(head.encode() + body)
            await writer.drain()
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _answer(self, method: str, path: str) -> tuple[str, str, bytes]:
        if method != "GET":
            return "405 Method Not Allowed", "text/plain", b"GET only\n"
        if path == "/health":
            h = self.health()
            status = "200 OK" if h["ready"] else "503 Service Unavailable"
            return status, "application/json", orjson.dumps(h)
        if path == "/metrics":
            text = metrics_text(self.health()).encode()
            return "200 OK", "text/plain; version=0.0.4; charset=utf-8", text
        return "404 Not Found", "text/plain", b"/health or /metrics\n"
