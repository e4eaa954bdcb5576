"""The consumer's own health: what it answered (:class:`Stats`), the report built from it
(:func:`health_report`), and the port that serves it: ``GET /health`` (JSON; 503 until the
group is joined) and ``GET /metrics`` (Prometheus text) on ``BDI_CONSUMER_HEALTH_PORT``
(0: off).

A few lines of HTTP/1.1 on asyncio rather than a web framework: the endpoint must answer
from the consumer's own event loop, so that a wedged loop shows as a failing probe.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from consumers.drift import metrics_lines
from consumers.errors import ConsumerError
from consumers.topics import names, names_offsets

log = logging.getLogger(__name__)

MAX_REQUEST_LINE = 8192


@dataclass
class Stats:
    """What this consumer answered (tests and the final log line)."""

    verdicts: Counter[str] = field(default_factory=Counter)
    parts: Counter[str] = field(default_factory=Counter)  # part records, per verdict and "late"
    partitions: set[int] = field(default_factory=set)
    batches: int = 0
    dropped_revoked: int = 0
    started_at: float | None = None  # wall clock, once the group was joined
    last_commit_at: float | None = None  # wall clock of the last successful commit
    committed: dict[str, int] = field(default_factory=dict)  # "topic:partition" -> offset

    def note_commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        self.last_commit_at = time.time()
        self.committed.update(names_offsets(offsets))


def health_report(
    *,
    client: AIOKafkaConsumer | None,
    running: bool,
    stats: Stats,
    group: str,
    client_id: str,
    models: dict[str, Any],
    drift: dict[str, Any] | None = None,
    model_cache: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What ``/health`` reports (``docs/KAFKA.md``); ``client`` is the group member, None
    before the start and after the stop."""
    assigned = list(client.assignment()) if client is not None else []
    lag: dict[str, int] = {}
    for tp in sorted(assigned, key=lambda tp: (tp.topic, tp.partition)):
        assert client is not None
        high = client.highwater(tp)
        done = stats.committed.get(f"{tp.topic}:{tp.partition}")
        if high is not None:
            lag[f"{tp.topic}:{tp.partition}"] = max(0, high - (done or 0))
    running = running and client is not None
    return {
        "status": "ok" if running else "stopped",
        "ready": running and stats.started_at is not None,
        "group": group,
        "client_id": client_id,
        "partitions": names(assigned),
        "lag": lag,
        "lag_total": sum(lag.values()),
        "verdicts": dict(stats.verdicts),
        "batches": stats.batches,
        "last_commit_at": stats.last_commit_at,
        "committed": dict(stats.committed),
        "models": models,
        "drift": drift or {},  # per model (consumers.drift.DriftMonitor.snapshot)
        # loaded models' resident sizes against the budget (store.cache.ModelCache.report)
        "model_cache": model_cache,
    }


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
    lines += metrics_lines(h.get("drift") or {})
    lines += cache_lines(h.get("model_cache"))
    return "\n".join(lines) + "\n"


def cache_lines(cache: dict[str, Any] | None) -> list[str]:
    """The model cache's gauges and counters (``cache``: its report, in MB)."""
    if not cache:
        return []
    mib = 1024 * 1024
    lines = [
        "# HELP bdi_consumer_model_bytes Resident size of each loaded model",
        "# TYPE bdi_consumer_model_bytes gauge",
    ]
    sizes = sorted(cache["models_mb"].items())
    lines += [f'bdi_consumer_model_bytes{{model="{k}"}} {round(v * mib)}' for k, v in sizes]
    lines += [
        "# HELP bdi_consumer_model_cache_bytes Resident size of every loaded model",
        "# TYPE bdi_consumer_model_cache_bytes gauge",
        f"bdi_consumer_model_cache_bytes {round(cache['resident_mb'] * mib)}",
    ]
    if cache["budget_mb"] is not None:
        lines += [
            "# HELP bdi_consumer_model_cache_budget_bytes The cache's budget (BDI_CACHE_MAX_MB)",
            "# TYPE bdi_consumer_model_cache_budget_bytes gauge",
            f"bdi_consumer_model_cache_budget_bytes {round(cache['budget_mb'] * mib)}",
        ]
    for name, what in (("loads", "Models loaded from disk"),
                       ("reloads", "Evicted models loaded again"),
                       ("evictions", "Models evicted for room")):  # fmt: skip
        lines += [
            f"# HELP bdi_consumer_model_cache_{name}_total {what}",
            f"# TYPE bdi_consumer_model_cache_{name}_total counter",
            f"bdi_consumer_model_cache_{name}_total {cache[name]}",
        ]
    return lines


class HealthServer:
    """``health`` answered on ``host:port`` (0: any free port). :meth:`bind` takes the port
    at once, so that a taken one stops a consumer before it joins its group."""

    def __init__(self, health: Callable[[], dict[str, Any]], host: str, port: int) -> None:
        self.health = health
        self.host, self.port = host, port
        self._sock: socket.socket | None = None
        self._server: asyncio.Server | None = None

    def bind(self) -> HealthServer:
        """Bind and listen (no event loop needed); :class:`ConsumerError` when that fails."""
        where = f"{self.host}:{self.port}"
        try:
            family = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)[0][0]
            self._sock = socket.create_server((self.host, self.port), family=family)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConsumerError(
                    f"consumer health port {where} is in use (BDI_CONSUMER_HEALTH_PORT): "
                    "give each consumer its own port, or 0 for none"
                ) from None
            raise ConsumerError(f"cannot open consumer health port {where}: {exc}") from None
        self.port = int(self._sock.getsockname()[1])
        return self

    async def start(self) -> HealthServer:
        if self._sock is None:
            self.bind()
        self._server = await asyncio.start_server(self._serve, sock=self._sock)
        self._sock = None  # the server owns it now
        log.info("health endpoint", extra={"url": f"http://{self.host}:{self.port}/health"})
        return self

    def close(self) -> None:
        """Release a port bound but never served."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def stop(self) -> None:
        self.close()
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
