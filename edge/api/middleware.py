"""The API's outer ASGI layer: request ids, the request-body bound and deadline, metrics,
the access log, and the last line of defence against unexpected exceptions.

Pure ASGI rather than ``BaseHTTPMiddleware``: the body bound has to sit between the
socket and the form parser, so that a too-large upload is refused after at most
``limit`` bytes were read, never after all of them.
"""

from __future__ import annotations

import asyncio
import re
import time
import traceback
import uuid
from collections.abc import Mapping
from typing import Any, NamedTuple

import orjson
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edge.api.diagnostics import Diagnostics, request_id_var
from edge.api.errors import error_body
from edge.api.metrics import ApiMetrics

REQUEST_ID_HEADER = "x-request-id"
# a caller's own id is kept when it is short and harmless in logs and headers
_CLIENT_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


class BodyError(HTTPException):
    """Raised from ``receive`` when a request body breaks a bound: an ``HTTPException`` so
    that FastAPI's body parsing re-raises it as it is instead of answering 400. ``code``:
    the error code of the answer."""

    code = "bad_request"


class BodyTooLarge(BodyError):
    """The body passed ``BDI_MAX_UPLOAD_MB``."""

    code = "payload_too_large"

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body exceeds {limit} bytes (BDI_MAX_UPLOAD_MB)")


class BodyTimeout(BodyError):
    """The body arrives too slowly (see :class:`BodyDeadline`). The connection is closed
    with the answer: the rest of the body is never read."""

    code = "request_timeout"

    def __init__(self, received: int, seconds: float) -> None:
        super().__init__(
            408,
            f"request body too slow: {received} bytes in {seconds:.1f} s "
            "(BDI_BODY_TIMEOUT_S, BDI_BODY_MIN_RATE_KB_S)",
            headers={"Connection": "close"},
        )


class BodyDeadline(NamedTuple):
    """How long a request body may take: ``timeout_s`` to start with, plus a second for
    every ``min_rate_kb_s`` KiB received (a large upload on a slow link keeps going; a body
    trickled a few bytes at a time is cut). ``timeout_s`` 0: no deadline."""

    timeout_s: float = 30.0
    min_rate_kb_s: float = 64.0

    def allowance(self, received: int) -> float:
        """Seconds a body may have taken by the time ``received`` bytes have arrived."""
        rate = self.min_rate_kb_s * 1024.0
        return self.timeout_s + (received / rate if rate > 0 else 0.0)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _route_of(scope: Scope) -> str:
    """The route template (``/datasets/file``), never the raw path: bounded label values."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return str(path) if path else "unmatched"


class ApiMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        max_body: int,
        metrics: ApiMetrics,
        diagnostics: Diagnostics,
        deadline: BodyDeadline | None = None,
    ) -> None:
        self.app = app
        self.max_body = max_body
        self.deadline = deadline or BodyDeadline()
        self.metrics = metrics
        self.diag = diagnostics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = _header(scope, REQUEST_ID_HEADER.encode())
        rid = incoming if incoming and _CLIENT_ID.fullmatch(incoming) else uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = rid
        token = request_id_var.set(rid)
        started = time.perf_counter()
        status = {"code": 500, "sent": False}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"], status["sent"] = message["status"], True
                headers = [(k, v) for k, v in message.get("headers", []) if k != b"x-request-id"]
                headers.append((b"x-request-id", rid.encode()))
                message = {**message, "headers": headers}
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self._guarded(scope, receive, send_with_id, status, rid)
        finally:
            self.metrics.in_flight.dec()
            request_id_var.reset(token)
            self._account(scope, status["code"], time.perf_counter() - started, rid)

    async def _guarded(
        self, scope: Scope, receive: Receive, send: Send, status: dict[str, Any], rid: str
    ) -> None:
        length = _header(scope, b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            detail = BodyTooLarge(self.max_body).detail
            self.diag.log(
                "error", level="warning", status=413, error="payload_too_large", message=detail,
                method=scope.get("method"), path=scope.get("path"), content_length=int(length),
            )  # fmt: skip
            await _send_json(send, 413, error_body("payload_too_large", detail, rid))
            return
        try:
            await self.app(scope, self._bounded(receive), send)
        except BodyError as exc:  # raised outside FastAPI's body parsing
            self.diag.log(
                "error", level="warning", status=exc.status_code, error=exc.code,
                message=exc.detail, method=scope.get("method"), path=scope.get("path"),
            )  # fmt: skip
            if not status["sent"]:
                body = error_body(exc.code, exc.detail, rid)
                await _send_json(send, exc.status_code, body, exc.headers)
        except Exception as exc:  # noqa: BLE001 - no traceback ever reaches a client
            self.diag.log(
                "error", level="error", status=500, error="internal_error",
                exception=type(exc).__name__, message=str(exc), traceback=traceback.format_exc(),
                method=scope.get("method"), path=scope.get("path"),
            )  # fmt: skip
            if not status["sent"]:
                await _send_json(
                    send, 500, error_body("internal_error", "unexpected server error", rid)
                )

    def _bounded(self, receive: Receive) -> Receive:
        """``receive`` with the body's size bound and deadline (until its last chunk)."""
        seen = 0
        complete = self.deadline.timeout_s <= 0
        started = time.monotonic()

        async def bounded() -> Message:
            nonlocal seen, complete
            if complete:
                message = await receive()
            else:
                left = started + self.deadline.allowance(seen) - time.monotonic()
                try:
                    message = await asyncio.wait_for(receive(), max(left, 0.0))
                except TimeoutError:
                    raise BodyTimeout(seen, time.monotonic() - started) from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise BodyTooLarge(self.max_body)
                complete = complete or not message.get("more_body", False)
            else:  # the client went away: nothing more to wait for
                complete = True
            return message

        return bounded

    def _account(self, scope: Scope, status: int, seconds: float, rid: str) -> None:
        route, method = _route_of(scope), scope.get("method", "")
        self.metrics.requests.labels(method, route, str(status)).inc()
        self.metrics.latency.labels(method, route).observe(seconds)
        ids = scope.get("state", {}).get("ids", {})
        client = scope.get("client")
        self.diag.log(
            "request",
            request_id=rid,
            method=method,
            path=scope.get("path"),
            route=route,
            status=status,
            duration_ms=round(seconds * 1e3, 3),
            client=client[0] if client else None,
            **ids,
        )


async def _send_json(
    send: Send, status: int, body: dict[str, Any], headers: Mapping[str, str] | None = None
) -> None:
    payload = orjson.dumps(body)
    raw = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
        *((k.lower().encode(), v.encode()) for k, v in (headers or {}).items()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})
