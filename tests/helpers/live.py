"""The live feed's test side: fresh line topics, verdict and part records as the line's
services publish them, and a Server-Sent Events reader."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson

from consumers.topics import ensure_topics
from tests.helpers.kafka import FrameSpec, produce


@dataclass(frozen=True)
class LineTopics:
    frames: str
    verdicts: str
    parts: str
    group: str

    def settings(self, bootstrap: str) -> dict[str, object]:
        return dict(
            kafka_bootstrap=bootstrap, kafka_group=self.group, kafka_topic_frames=self.frames,
            kafka_topic_verdicts=self.verdicts, kafka_topic_parts=self.parts,
        )  # fmt: skip


def line_topics(bootstrap: str, partitions: int = 2) -> LineTopics:
    tag = uuid.uuid4().hex[:10]
    topics = LineTopics(f"t{tag}.frames", f"t{tag}.verdicts", f"t{tag}.parts", f"g{tag}")
    wanted = {topics.frames: partitions, topics.verdicts: partitions, topics.parts: 1}
    asyncio.run(ensure_topics(bootstrap, wanted))
    return topics


def verdict(frame_id: str, v: str = "OK", roi: str = "inspection-1", **fields: Any) -> dict:
    """A ``bdi.verdict/1`` record, with the fields the live feed reads."""
    ng = v == "NG"
    doc = {
        "schema": "bdi.verdict/1", "frame_id": frame_id, "frame_id_derived": False,
        "part_id": f"SN-{frame_id}", "recipe_id": "disc-a", "role_id": "Master1", "roi_id": roi,
        "verdict": v, "score": 31.5 if ng else 1.25, "threshold": 24.0,
        "p_value": 0.01 if ng else 0.5, "drift": False,
        "regions": [{"bbox": [1, 2, 3, 4], "area_px": 10, "area_mm2": 0.25},
                    {"bbox": [5, 6, 7, 8], "area_px": 20, "area_mm2": 0.5}] if ng else [],
        "regions_total": 2 if ng else 0, "model_version": "m1",
        "produced_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "error": None if v in ("OK", "NG") else "no model",
    }  # fmt: skip
    return {**doc, **fields}


def part(part_id: str, v: str = "NG") -> dict:
    return {
        "schema": "bdi.part/1", "part_id": part_id, "recipe_id": "disc-a", "verdict": v,
        "reason": f"{v} on Master1/inspection-1", "plan_version": "p1", "deadline_ms": 5000,
        "frames": [{"frame_id": "f"}], "missing": [], "unexpected": [],
        "decided_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
    }  # fmt: skip


def records(docs: list[dict] | list[bytes]) -> list[FrameSpec]:
    """Records keyed as the line keys them (verdicts by frame id, parts by part id)."""
    out = []
    for doc in docs:
        if isinstance(doc, bytes):
            out.append(FrameSpec("", doc, [], b"raw"))
        else:
            key = str(doc.get("frame_id") or doc["part_id"])
            out.append(FrameSpec(key, orjson.dumps(doc), [], key.encode()))
    return out


def publish(bootstrap: str, topic: str, docs: list[dict] | list[bytes]) -> None:
    asyncio.run(produce(bootstrap, topic, records(docs)))


# --- Server-Sent Events ---------------------------------------------------------------------
Event = tuple[str, Any]  # (event name, parsed data)


def sse_events(response: httpx.Response) -> Iterator[Event]:
    """The events of a streamed ``text/event-stream`` answer (comments and ``retry`` left
    out), as they come."""
    name, data = "message", ""
    for line in response.iter_lines():
        if not line:
            if data:
                yield name, orjson.loads(data)
            name, data = "message", ""
        elif line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data += line[5:].strip()


def read_until(
    events: Iterator[Event], done: Callable[[list[Event]], bool], timeout_s: float = 60.0
) -> list[Event]:
    """Events until ``done(events)``; AssertionError at the deadline (the stream sends
    stats every second, so a deadline is always looked at)."""
    got: list[Event] = []
    deadline = time.monotonic() + timeout_s
    for event in events:
        got.append(event)
        if done(got):
            return got
        assert time.monotonic() < deadline, f"not done after {timeout_s} s: {got[-3:]}"
    raise AssertionError(f"the stream ended first: {got[-3:]}")


def verdicts_in(events: list[Event]) -> list[dict]:
    return [v for name, data in events if name == "verdicts" for v in data]
