"""The Line page's live feed over HTTP (docs/UI.md, docs/API_CONTRACTS.md):
``GET /ui/events`` (Server-Sent Events) and ``GET /ui/live`` (the same snapshot as JSON).

The feed itself (``consumers/live.py``) belongs to the app: made by the lifespan when
``BDI_KAFKA_BOOTSTRAP`` is set, started by its first reader, stopped at shutdown. Each
event stream reads its own bounded queue, so a slow page loses old batches (counted in
``dropped``) and never holds up the feed or another page.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Annotated, Any

import orjson
import uvicorn
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import StreamingResponse

from consumers.live import LiveFeed
from consumers.live_stats import VERDICTS, Compact
from edge.api.routes.common import ERRORS

if TYPE_CHECKING:
    import socket

    from configs.settings import Settings
    from consumers.live_stats import Subscription

FLUSH_S = 0.2  # batches are gathered this long before they are sent
STATS_S = 1.0
HEARTBEAT_S = 15.0
MAX_EVENT_ITEMS = 200  # a page far behind gets the newest; the rest count as dropped
RETRY_MS = 3000  # how soon a browser reconnects
OFF_MESSAGE = (
    "no Kafka broker is configured (BDI_KAFKA_BOOTSTRAP is unset): set it to the line's "
    "bootstrap servers and restart bdi serve, or run bdi up, to see verdicts live"
)
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

router = APIRouter(prefix="/ui", tags=["ui"], responses={c: ERRORS[c] for c in (401, 403, 500)})


# --- the app's feed ------------------------------------------------------------------------
def open_feed(app: FastAPI, settings: Settings) -> None:
    """At start-up: the app's feed when Kafka is configured (started by its first reader)."""
    app.state.live_feed = LiveFeed(settings) if settings.kafka_bootstrap else None


async def close_feed(app: FastAPI) -> None:
    """At shutdown: open streams end, the tailer stops."""
    feed = getattr(app.state, "live_feed", None)
    app.state.live_feed = None
    if isinstance(feed, LiveFeed):
        await feed.stop()


def end_streams(app: FastAPI) -> None:
    """The event streams end now (the server is stopping and would wait for them)."""
    feed = getattr(app.state, "live_feed", None)
    if isinstance(feed, LiveFeed):
        feed.fanout.close()


def server(config: uvicorn.Config, app: FastAPI) -> uvicorn.Server:
    """A uvicorn server that ends the app's event streams when it starts to shut down:
    it waits for open responses to finish before the app's own shutdown runs, and an event
    stream never finishes on its own."""

    class _Server(uvicorn.Server):
        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            end_streams(app)
            await super().shutdown(sockets)

    return _Server(config)


def get_feed(request: Request) -> LiveFeed | None:
    feed = getattr(request.app.state, "live_feed", None)
    return feed if isinstance(feed, LiveFeed) else None


FeedDep = Annotated[LiveFeed | None, Depends(get_feed)]


def off_stats() -> Compact:
    return {
        "rate_per_s": 0.0, "ng_pct": None, "counts": dict.fromkeys(VERDICTS, 0), "lag": None,
        "feed": "off", "message": OFF_MESSAGE, "last_verdict_ms": None, "dropped": 0,
    }  # fmt: skip


# --- the endpoints -------------------------------------------------------------------------
@router.get("/live")
async def live_snapshot(feed: FeedDep) -> dict[str, Any]:
    """What the Line page starts from: the last verdicts and parts, the last verdict per
    ROI, and the stats (``feed: "off"`` without Kafka)."""
    if feed is None:
        return {"verdicts": [], "parts": [], "rois": [], "stats": off_stats()}
    feed.start()
    return feed.snapshot()


@router.get(
    "/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}},
                     "description": "snapshot, then verdicts, parts and stats events"}},
)  # fmt: skip
async def live_events(feed: FeedDep) -> StreamingResponse:
    """Server-Sent Events: ``snapshot`` on connect, then ``verdicts`` and ``parts`` batches
    (~200 ms), ``stats`` every second, a comment every 15 s."""
    stream = events(feed) if feed is not None else _off()
    return StreamingResponse(stream, media_type="text/event-stream", headers=SSE_HEADERS)


def sse(event: str, data: Any) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


async def _off() -> AsyncIterator[bytes]:
    yield f"retry: {RETRY_MS}\n\n".encode() + sse("stats", off_stats())


async def events(feed: LiveFeed) -> AsyncIterator[bytes]:
    """The stream of one reader, until the feed closes (the client leaving cancels it)."""
    sub = feed.subscribe()
    try:
        yield f"retry: {RETRY_MS}\n\n".encode() + sse("snapshot", feed.snapshot())
        trimmed = 0
        now = time.monotonic()
        next_stats, next_beat = now + STATS_S, now + HEARTBEAT_S
        while not sub.closed:
            await sub.wait(max(0.0, next_stats - time.monotonic()))
            if not sub.closed and time.monotonic() < next_stats:
                await asyncio.sleep(FLUSH_S)  # a batch came: gather what follows it
            out, cut = _batches(sub)
            trimmed += cut
            now = time.monotonic()
            if now >= next_stats:
                next_stats = now + STATS_S
                out += sse("stats", feed.stats(sub.dropped + trimmed))
            if now >= next_beat:
                next_beat = now + HEARTBEAT_S
                out += b": heartbeat\n\n"
            if out:
                yield out
    finally:
        feed.unsubscribe(sub)


def _batches(sub: Subscription) -> tuple[bytes, int]:
    """The waiting batches as one ``verdicts`` and one ``parts`` event (the newest
    ``MAX_EVENT_ITEMS`` of each), and how many were cut."""
    merged: dict[str, list[Compact]] = {"verdicts": [], "parts": []}
    for kind, items in sub.take():
        merged[kind] += items
    out, cut = b"", 0
    for name, items in merged.items():
        if items:
            cut += max(0, len(items) - MAX_EVENT_ITEMS)
            out += sse(name, items[-MAX_EVENT_ITEMS:])
    return out, cut
