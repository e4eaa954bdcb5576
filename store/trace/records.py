"""What the trace store is fed, and the table rows made of it.

Three kinds of input, already taken off their transport (no Kafka here): a frame's image
bytes with its ids (:class:`FrameImage`), a frame verdict (``bdi.verdict/1``) and a part
record (``bdi.part/1``, or its ``late`` kind for a frame that came after the decision). The
parsed documents are kept whole in the rows' ``json`` column, so fields added to a schema
later are stored too. A document without what the tables need is refused with
:class:`BadRecord` (the caller logs it and moves on).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from store import naming
from store.errors import InvalidIdError

FRAME_VERDICTS = frozenset({"OK", "NG", "ERROR", "NO_MODEL"})
PART_VERDICTS = frozenset({"OK", "NG", "ERROR", "NO_MODEL", "INCOMPLETE"})


class BadRecord(ValueError):
    """A document that is not a usable verdict / part record."""


@dataclass(frozen=True)
class FrameImage:
    """A frame's bytes as a camera published them, and where they were read."""

    frame_id: str
    data: bytes
    part_id: str | None
    recipe_id: str | None
    role_id: str | None
    roi_id: str | None
    topic: str
    partition: int
    offset: int


@dataclass
class Batch:
    """Everything one poll brought; ``received_ms`` is when (the records' own times are in
    them). Ingested in one transaction."""

    received_ms: int
    frames: list[FrameImage] = field(default_factory=list)
    verdicts: list[dict[str, Any]] = field(default_factory=list)
    parts: list[dict[str, Any]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.frames) + len(self.verdicts) + len(self.parts)


def to_ms(text: Any) -> int | None:
    """An ISO 8601 time as epoch milliseconds (naive means UTC); None when unreadable."""
    if not isinstance(text, str) or not text:
        return None
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def _recipe(doc: dict[str, Any]) -> str | None:
    """The record's recipe id as the store names it (case-insensitive: lower-case); a
    malformed one is kept as it came, so that it can still be read back."""
    raw = _text(doc, "recipe_id")
    if raw is None:
        return None
    try:
        return naming.recipe_id(raw)
    except InvalidIdError:
        return raw


def _text(doc: dict[str, Any], name: str) -> str | None:
    value = doc.get(name)
    return value if isinstance(value, str) and value else None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _json(doc: dict[str, Any]) -> str:
    return orjson.dumps(doc).decode()


def image_sha256(doc: dict[str, Any]) -> str | None:
    """The image's SHA-256 a verdict names (its provenance), if it names one."""
    for holder in (doc, doc.get("provenance")):
        if isinstance(holder, dict):
            for name in ("image_sha256", "content_sha256"):
                value = holder.get(name)
                if isinstance(value, str) and len(value) == 64:
                    return value.lower()
    return None


def verdict_row(doc: dict[str, Any], received_ms: int) -> tuple[Any, ...]:
    """A ``verdicts`` row (column order of :data:`VERDICT_COLUMNS`)."""
    frame_id, verdict = _text(doc, "frame_id"), _text(doc, "verdict")
    if frame_id is None or verdict not in FRAME_VERDICTS:
        raise BadRecord(f"not a frame verdict (frame_id {frame_id!r}, verdict {verdict!r})")
    source = doc.get("source") if isinstance(doc.get("source"), dict) else {}
    assert isinstance(source, dict)
    partition, offset = source.get("partition"), source.get("offset")
    return (
        frame_id,
        _text(doc, "part_id"),
        _recipe(doc),
        _text(doc, "role_id"),
        _text(doc, "roi_id"),
        verdict,
        _number(doc.get("score")),
        _number(doc.get("threshold")),
        _text(doc, "model_version"),
        _text(doc, "calibration_version"),
        to_ms(doc.get("produced_at")) or received_ms,
        _text(source, "topic"),
        partition if isinstance(partition, int) else None,
        offset if isinstance(offset, int) else None,
        image_sha256(doc),
        received_ms,
        _json(doc),
    )


VERDICT_COLUMNS = (
    "frame_id, part_id, recipe_id, role_id, roi_id, verdict, score, threshold, "
    "model_version, calibration_version, produced_ms, source_topic, source_partition, "
    "source_offset, image_sha256, received_ms, json"
)


def is_late(doc: dict[str, Any]) -> bool:
    """A ``bdi.part_late/1`` record on the parts topic: a frame that came after its part was
    decided (the frame in its ``frame`` object)."""
    schema = doc.get("schema")
    return isinstance(schema, str) and schema.startswith("bdi.part_late/")


def part_row(doc: dict[str, Any], received_ms: int) -> tuple[Any, ...]:
    """A ``parts`` row (:data:`PART_COLUMNS`)."""
    part_id, verdict = _text(doc, "part_id"), _text(doc, "verdict")
    if part_id is None or verdict not in PART_VERDICTS:
        raise BadRecord(f"not a part record (part_id {part_id!r}, verdict {verdict!r})")
    return (
        part_id,
        _recipe(doc),
        verdict,
        None if doc.get("plan_version") is None else str(doc.get("plan_version")),
        _text(doc, "first_frame_at"),
        _text(doc, "last_frame_at"),
        to_ms(doc.get("decided_at")) or received_ms,
        _text(doc, "reason"),
        orjson.dumps(doc.get("missing") or []).decode(),
        orjson.dumps(doc.get("unexpected") or []).decode(),
        received_ms,
        _json(doc),
    )


PART_COLUMNS = (
    "part_id, recipe_id, verdict, plan_version, first_frame_at, last_frame_at, decided_ms, "
    "reason, missing, unexpected, received_ms, json"
)


def part_frame_rows(doc: dict[str, Any]) -> list[tuple[Any, ...]]:
    """The ``part_frames`` rows of a part record: the frame verdicts it is made of, and
    those it names ``unexpected`` (not in the plan)."""
    part_id = doc["part_id"]
    rows = []
    for frame in [*(doc.get("frames") or ()), *(doc.get("unexpected") or ())]:
        if not isinstance(frame, dict) or _text(frame, "frame_id") is None:
            continue
        rows.append(
            (
                part_id,
                frame["frame_id"],
                _text(frame, "role_id") or _text(frame, "role"),
                _text(frame, "roi_id") or _text(frame, "roi"),
                _text(frame, "verdict"),
                _number(frame.get("score")),
                _number(frame.get("threshold")),
                _text(frame, "model_version"),
            )
        )
    return rows


PART_FRAME_COLUMNS = "part_id, frame_id, role_id, roi_id, verdict, score, threshold, model_version"


def late_row(doc: dict[str, Any], received_ms: int) -> tuple[Any, ...]:
    """A ``late_frames`` row: the frame is the record itself or its ``frame`` object."""
    frame = doc.get("frame") if isinstance(doc.get("frame"), dict) else doc
    assert isinstance(frame, dict)
    part_id, frame_id = _text(doc, "part_id"), _text(frame, "frame_id")
    if part_id is None or frame_id is None:
        raise BadRecord(f"not a late record (part_id {part_id!r}, frame_id {frame_id!r})")
    return (
        part_id,
        frame_id,
        _text(frame, "role_id") or _text(frame, "role"),
        _text(frame, "roi_id") or _text(frame, "roi"),
        _text(frame, "verdict"),
        received_ms,
        _json(doc),
    )


LATE_COLUMNS = "part_id, frame_id, role_id, roi_id, verdict, received_ms, json"
