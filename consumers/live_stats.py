"""What the live feed (``consumers/live.py``) keeps of the line, bounded, and how it hands
it out: compact verdicts and part records, the last verdict per ROI, counts, a rate and
NG %, and one bounded queue per subscriber.

No Kafka here and no clock of its own: the feed passes the times in, so the tests can
drive it record by record.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import Counter, OrderedDict, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

VERDICT_SCHEMA = "bdi.verdict/1"
PART_SCHEMA = "bdi.part/1"
VERDICTS = ("OK", "NG", "ERROR", "NO_MODEL")
KEEP_VERDICTS = 200
KEEP_PARTS = 50
KEEP_ROIS = 1000  # distinct (recipe, role, roi); the least recently judged go first
RATE_WINDOW_S = 10
IDLE_AFTER_S = 5.0  # no verdict for this long: the feed is "idle"
QUEUE_BATCHES = 64  # per subscriber; a slower one loses its oldest batches
MAX_TEXT = 256  # ids and reasons are cut to this many characters

Feed = Literal["live", "idle", "unreachable", "off"]
Kind = Literal["verdicts", "parts"]
Compact = dict[str, Any]


def _text(value: Any) -> str | None:
    return value[:MAX_TEXT] if isinstance(value, str) else None


def _number(value: Any) -> float | None:
    """A finite number, else None (bools are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _ms(iso: Any, fallback: int | None) -> int | None:
    """An ISO 8601 time as epoch milliseconds; ``fallback`` (the record's timestamp) when
    absent or unreadable."""
    if isinstance(iso, str):
        try:
            return int(datetime.fromisoformat(iso).timestamp() * 1000)
        except ValueError:
            pass
    return fallback


def compact_verdict(doc: Mapping[str, Any], record_ms: int | None = None) -> Compact | None:
    """A ``bdi.verdict/1`` record as the Line page shows it; None for anything else."""
    if doc.get("schema") != VERDICT_SCHEMA or doc.get("verdict") not in VERDICTS:
        return None
    given = doc.get("regions")
    regions: list[Any] = given if isinstance(given, list) else []
    areas = [_number(r.get("area_mm2")) for r in regions if isinstance(r, dict)]
    known = [a for a in areas if a is not None]
    total = doc.get("regions_total")
    count = total if isinstance(total, int) and not isinstance(total, bool) else len(regions)
    return {
        "frame_id": _text(doc.get("frame_id")),
        "part_id": _text(doc.get("part_id")),
        "recipe_id": _text(doc.get("recipe_id")),
        "role_id": _text(doc.get("role_id")),
        "roi_id": _text(doc.get("roi_id")),
        "verdict": doc["verdict"],
        "score": _number(doc.get("score")),
        "threshold": _number(doc.get("threshold")),
        "p_value": _number(doc.get("p_value")),
        "regions": count,
        # of the regions the record carries (at most 32); null when none has a scale
        "area_mm2": round(sum(known), 6) if known or not regions else None,
        "model_version": _text(doc.get("model_version")),
        "drift": doc.get("drift") is True,
        "ts_ms": _ms(doc.get("produced_at"), record_ms),
    }


def compact_part(doc: Mapping[str, Any], record_ms: int | None = None) -> Compact | None:
    """A ``bdi.part/1`` record, short; None for anything else (late frames included)."""
    if doc.get("schema") != PART_SCHEMA or not isinstance(doc.get("verdict"), str):
        return None
    frames, missing = doc.get("frames"), doc.get("missing")
    return {
        "part_id": _text(doc.get("part_id")),
        "recipe_id": _text(doc.get("recipe_id")),
        "verdict": doc["verdict"][:32],
        "reason": _text(doc.get("reason")),
        "plan_version": _text(doc.get("plan_version")),
        "frames": len(frames) if isinstance(frames, list) else 0,
        "missing": len(missing) if isinstance(missing, list) else 0,
        "ts_ms": _ms(doc.get("decided_at"), record_ms),
    }


@dataclass
class LineState:
    """The line as the feed has read it since it started, every part of it bounded."""

    verdicts: deque[Compact] = field(default_factory=lambda: deque(maxlen=KEEP_VERDICTS))
    parts: deque[Compact] = field(default_factory=lambda: deque(maxlen=KEEP_PARTS))
    rois: OrderedDict[tuple[str, str, str], Compact] = field(default_factory=OrderedDict)
    counts: Counter[str] = field(default_factory=Counter)
    # verdicts that arrived live (not the backlog read at start), per whole second
    arrivals: deque[list[float]] = field(default_factory=deque)
    live_since: float | None = None  # monotonic: when the feed reached the end of the logs
    last_verdict_ms: int | None = None  # the newest verdict's own time
    last_arrival: float | None = None  # monotonic: when the last verdict arrived

    def add_verdict(self, item: Compact, now: float, live: bool) -> None:
        """``live``: the record was produced after the feed started (not the backlog)."""
        self.verdicts.append(item)
        self.counts[item["verdict"]] += 1
        key = (item["recipe_id"] or "", item["role_id"] or "", item["roi_id"] or "")
        self.rois[key] = item
        self.rois.move_to_end(key)
        while len(self.rois) > KEEP_ROIS:
            self.rois.popitem(last=False)
        if item["ts_ms"] is not None:
            self.last_verdict_ms = max(self.last_verdict_ms or 0, item["ts_ms"])
        if live:
            self.last_arrival = now
            second = math.floor(now)
            if self.arrivals and self.arrivals[-1][0] == second:
                self.arrivals[-1][1] += 1
            else:
                self.arrivals.append([second, 1])
        self._expire(now)

    def add_part(self, item: Compact) -> None:
        self.parts.append(item)

    def _expire(self, now: float) -> None:
        while self.arrivals and self.arrivals[0][0] <= now - RATE_WINDOW_S:
            self.arrivals.popleft()

    def rate(self, now: float) -> float:
        """Verdicts per second that arrived over the last 10 s (or since the feed went
        live, when that is shorter)."""
        self._expire(now)
        if self.live_since is None:
            return 0.0
        span = min(float(RATE_WINDOW_S), max(1.0, now - self.live_since))
        return round(sum(n for _, n in self.arrivals) / span, 2)

    def ng_pct(self) -> float | None:
        total = sum(self.counts[v] for v in VERDICTS)
        return round(100.0 * self.counts["NG"] / total, 2) if total else None

    def snapshot(self) -> dict[str, list[Compact]]:
        """Verdicts oldest first by their own time (the backlog comes partition by
        partition), parts in arrival order, the ROIs sorted by id."""
        verdicts = sorted(self.verdicts, key=lambda v: v["ts_ms"] or 0)
        rois = [self.rois[k] for k in sorted(self.rois)]
        return {"verdicts": verdicts, "parts": list(self.parts), "rois": rois}

    def stats(self, now: float, feed: Feed, lag: int | None, message: str | None) -> Compact:
        if feed == "live" and (self.last_arrival is None or now - self.last_arrival > IDLE_AFTER_S):
            feed = "idle"
        return {
            "rate_per_s": self.rate(now),
            "ng_pct": self.ng_pct(),
            "counts": {v: self.counts[v] for v in VERDICTS},
            "lag": lag,
            "feed": feed,
            "message": message,
            "last_verdict_ms": self.last_verdict_ms,
        }


class Subscription:
    """One reader's queue of batches, bounded: when it is full the oldest batch goes, and
    its items are counted in ``dropped``. Offering never waits."""

    def __init__(self, max_batches: int = QUEUE_BATCHES) -> None:
        self._batches: deque[tuple[Kind, list[Compact]]] = deque()
        self._max = max_batches
        self._wake = asyncio.Event()
        self.dropped = 0
        self.closed = False

    def offer(self, kind: Kind, items: list[Compact]) -> None:
        if len(self._batches) >= self._max:
            self.dropped += len(self._batches.popleft()[1])
        self._batches.append((kind, items))
        self._wake.set()

    def take(self) -> list[tuple[Kind, list[Compact]]]:
        """Every batch waiting, oldest first."""
        out = list(self._batches)
        self._batches.clear()
        self._wake.clear()
        return out

    def close(self) -> None:
        self.closed = True
        self._wake.set()

    async def wait(self, timeout_s: float) -> None:
        """Until a batch comes, the feed closes, or ``timeout_s`` passes."""
        if self._batches or self.closed:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout_s)


class Fanout:
    """Hands each batch to every subscriber's queue."""

    def __init__(self, max_batches: int = QUEUE_BATCHES) -> None:
        self.max_batches = max_batches
        self._subscribers: set[Subscription] = set()
        self.closed = False

    def subscribe(self) -> Subscription:
        sub = Subscription(self.max_batches)
        if self.closed:
            sub.close()
        else:
            self._subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subscribers.discard(sub)

    def publish(self, kind: Kind, items: Iterable[Compact]) -> None:
        batch = list(items)
        if batch:
            for sub in self._subscribers:
                sub.offer(kind, batch)

    def close(self) -> None:
        """Every subscriber's stream ends; later subscribers get a closed queue."""
        self.closed = True
        for sub in self._subscribers:
            sub.close()
        self._subscribers.clear()

    def __len__(self) -> int:
        return len(self._subscribers)
