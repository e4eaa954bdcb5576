"""The Line page's live feed over a real HTTP server (edge/ui/live.py): the event stream
(snapshot, then batched verdicts and parts, stats), ``GET /ui/live``, a login needed,
``feed: "off"`` without Kafka, a stream that ends when its client goes or the server
stops."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from consumers.live import LiveFeed
from edge.api.app import create_app
from edge.ui.live import server as live_server_of
from store.users import Users
from tests.helpers.api import LiveServer, free_port
from tests.helpers.kafka import Broker
from tests.helpers.live import (
    line_topics,
    part,
    publish,
    read_until,
    sse_events,
    verdict,
    verdicts_in,
)
from tests.helpers.settings import tiny_settings

PASSWORD = "olo-password-2"


@pytest.fixture
def operator(tmp_path: Path) -> str:
    """The users file of the ``live_server`` store holds one operator (the API is closed)."""
    Users(tmp_path / "models").add("olo", "operator", PASSWORD)
    return "olo"


@contextlib.contextmanager
def login(url: str, name: str) -> Iterator[httpx.Client]:
    """A client holding ``name``'s session cookie."""
    with httpx.Client(base_url=url, timeout=30) as http:
        r = http.post("/auth/login", json={"username": name, "password": PASSWORD})
        assert r.status_code == 200, r.text
        yield http


def feed_of(server: LiveServer) -> LiveFeed:
    feed = server.app.state.live_feed
    assert isinstance(feed, LiveFeed)
    return feed


def test_the_feed_needs_a_login(live_server: Callable[..., LiveServer], operator: str) -> None:
    server = live_server()
    for path in ("/ui/events", "/ui/live"):
        r = httpx.get(f"{server.url}{path}", timeout=30)
        assert r.status_code == 401, path
        assert r.json()["error"] == "unauthorized"
    with login(server.url, operator) as http:
        assert http.get("/ui/live").json()["stats"]["feed"] == "off"


def test_without_kafka_one_stats_event_says_what_to_do(live_server) -> None:
    server = live_server()
    with httpx.stream("GET", f"{server.url}/ui/events", timeout=30) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["cache-control"] == "no-cache"
        events = list(sse_events(r))  # the stream ends by itself
    assert [name for name, _ in events] == ["stats"]
    stats = events[0][1]
    assert stats["feed"] == "off" and "BDI_KAFKA_BOOTSTRAP" in stats["message"]
    assert stats["counts"] == {"OK": 0, "NG": 0, "ERROR": 0, "NO_MODEL": 0}
    snapshot = httpx.get(f"{server.url}/ui/live", timeout=30).json()
    assert snapshot == {"verdicts": [], "parts": [], "rois": [], "stats": stats}


@pytest.mark.kafka
def test_the_stream_gives_a_snapshot_then_batches_and_stats(
    live_server, operator: str, tansu_broker: Broker
) -> None:
    bootstrap = tansu_broker.bootstrap
    topics = line_topics(bootstrap)
    publish(bootstrap, topics.verdicts, [verdict(f"old-{i}") for i in range(5)])
    server = live_server(**topics.settings(bootstrap))
    with login(server.url, operator) as http, http.stream("GET", "/ui/events") as r:
        assert r.status_code == 200
        events = sse_events(r)
        first = next(events)
        assert first[0] == "snapshot" and set(first[1]) == {"verdicts", "parts", "rois", "stats"}
        # the feed starts with its first reader: the backlog follows the (empty) snapshot
        old = read_until(events, lambda got: len(verdicts_in([first, *got])) >= 5)
        assert {v["frame_id"] for v in verdicts_in([first, *old])} == {f"old-{i}" for i in range(5)}
        new = [verdict(f"new-{i}", "NG" if i % 4 == 0 else "OK") for i in range(20)]
        publish(bootstrap, topics.verdicts, new)
        publish(bootstrap, topics.parts, [part("SN-new-0")])
        got = read_until(
            events,
            lambda got: (
                len(verdicts_in(got)) >= 20
                and any(n == "parts" for n, _ in got)
                and any(n == "stats" and sum(d["counts"].values()) == 25 for n, d in got)
            ),
        )
    ids = [v["frame_id"] for v in verdicts_in(got)]
    assert sorted(ids) == sorted(d["frame_id"] for d in new)  # each once
    batches = [data for name, data in got if name == "verdicts"]
    assert len(batches) < 20  # gathered, not one event per verdict
    stats = [data for name, data in got if name == "stats"][-1]
    assert stats["counts"] == {"OK": 20, "NG": 5, "ERROR": 0, "NO_MODEL": 0}
    assert stats["ng_pct"] == 20.0 and stats["dropped"] == 0 and stats["feed"] == "live"
    assert [p["part_id"] for n, d in got if n == "parts" for p in d] == ["SN-new-0"]
    with login(server.url, operator) as http:
        snapshot = http.get("/ui/live").json()
    assert len(snapshot["verdicts"]) == 25 and snapshot["stats"]["counts"]["NG"] == 5
    assert [r["roi_id"] for r in snapshot["rois"]] == ["inspection-1"]
    # the client went: its queue is gone too
    deadline = time.monotonic() + 10
    while len(feed_of(server).fanout) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(feed_of(server).fanout) == 0


@pytest.mark.kafka
def test_open_streams_end_when_the_server_stops(tmp_path: Path, tansu_broker: Broker) -> None:
    """uvicorn waits for open answers before the app's shutdown: the streams end first."""
    topics = line_topics(tansu_broker.bootstrap)
    app = create_app(tiny_settings(models_dir=tmp_path, **topics.settings(tansu_broker.bootstrap)))
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    server = live_server_of(config, app)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    with httpx.stream("GET", f"http://127.0.0.1:{port}/ui/events", timeout=30) as r:
        events = sse_events(r)
        read_until(events, lambda got: any(n == "stats" for n, _ in got))
        server.should_exit = True
        stopping = time.monotonic()
        rest = []
        for event in events:  # ends without the client closing it
            rest.append(event)
            assert time.monotonic() - stopping < 10, "the stream goes on"
    thread.join(15)
    assert not thread.is_alive() and time.monotonic() - stopping < 10
    assert all(name in ("verdicts", "parts", "stats") for name, _ in rest)
    assert app.state.live_feed is None  # the lifespan's shutdown ran: the tailer stopped
