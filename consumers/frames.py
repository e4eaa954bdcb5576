"""Input frames: read the Kafka record's headers, bound its size, decode its image.

Nothing here raises for a bad frame: every problem becomes a :class:`Failure` carried with
the frame, so one poison record can never stop a batch or a partition. Headers are read
best-effort even when some are broken, so the ``ERROR`` verdict still names what it can.
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

from consumers.errors import (
    ChecksumMismatchError,
    FrameTooLargeError,
    InvalidHeaderError,
    MissingHeaderError,
)
from engine.errors import ImageDecodeError
from engine.images import decode_image

FRAME_ID = "frame_id"
ROUTING = ("recipe_id", "role_id", "roi_id")  # which model scores the frame
CHECKSUM = "content_sha256"  # hex SHA-256 of the value, as the camera sent it
OPTIONAL = ("part_id", "mm_per_px", CHECKSUM)
_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")
CONTRACT = (FRAME_ID, *ROUTING, *OPTIONAL)

FailureVerdict = Literal["ERROR", "NO_MODEL"]
Headers = tuple[tuple[str, bytes], ...]


class KafkaRecord(Protocol):
    """The fields of ``aiokafka.ConsumerRecord`` a frame is built from."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]


@dataclass(frozen=True)
class Failure:
    """Why a frame gets no OK/NG: the error's class name (a DLQ header), a message, and the
    verdict it turns into (``NO_MODEL`` only when no model exists for the frame)."""

    error_class: str
    message: str
    verdict: FailureVerdict = "ERROR"

    @classmethod
    def of(cls, exc: BaseException, verdict: FailureVerdict = "ERROR") -> Failure:
        return cls(type(exc).__name__, str(exc) or type(exc).__name__, verdict)


@dataclass(frozen=True)
class Source:
    topic: str
    partition: int
    offset: int

    def derived_frame_id(self) -> str:
        """Deterministic stand-in for a missing ``frame_id``: redeliveries get the same one."""
        return f"{self.topic}:{self.partition}:{self.offset}"


@dataclass(frozen=True)
class FrameMeta:
    """The contract headers, as far as they could be read."""

    frame_id: str
    frame_id_derived: bool
    recipe_id: str | None = None
    role_id: str | None = None
    roi_id: str | None = None
    part_id: str | None = None
    mm_per_px: float | None = None
    content_sha256: str | None = None  # lower-case hex, when the frame carries one

    @property
    def model_key(self) -> tuple[str, str, str] | None:
        if self.recipe_id is None or self.role_id is None or self.roi_id is None:
            return None
        return (self.recipe_id, self.role_id, self.roi_id)


@dataclass(frozen=True)
class Frame:
    """One consumed record. ``epoch`` is the partition's assignment epoch when it was fetched
    (see :mod:`consumers.offsets`); ``fetched_at`` is ``time.monotonic()``."""

    source: Source
    epoch: int
    key: bytes | None
    value: bytes | None  # None: a tombstone (kept as such in its dead letter)
    headers: Headers
    timestamp_ms: int
    fetched_at: float
    meta: FrameMeta
    failure: Failure | None  # a header problem found while reading the record


@dataclass(frozen=True)
class Decoded:
    """A frame after decoding: ``image`` (H, W, 3) uint8 RGB, or the reason there is none.
    ``image_sha256``: hex SHA-256 of the record's value as received (``None``: a tombstone),
    whatever became of the frame."""

    frame: Frame
    image: np.ndarray | None
    failure: Failure | None
    decode_ms: float = 0.0
    image_sha256: str | None = None


def _text_headers(headers: Headers) -> tuple[dict[str, str], list[str]]:
    """Contract headers as text (``errors="replace"`` so a verdict can still show them) and
    the problems found: invalid UTF-8, contradictory duplicates."""
    values: dict[str, str] = {}
    problems: list[str] = []
    for name, raw in headers:
        if name not in CONTRACT:
            continue
        data = raw or b""
        try:
            text = data.decode("utf-8").strip()
        except UnicodeDecodeError:
            text = data.decode("utf-8", errors="replace").strip()
            problems.append(f"header {name!r} is not valid UTF-8")
        if name in values and values[name] != text:
            problems.append(f"header {name!r} appears twice with different values")
        values.setdefault(name, text)
    return values, problems


def _mm_per_px(text: str | None, problems: list[str]) -> float | None:
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        problems.append(f"header 'mm_per_px' must be a positive number, got {text!r}")
        return None
    return value


def _checksum(text: str | None, problems: list[str]) -> str | None:
    if text is None or text == "":
        return None
    if not _SHA256_HEX.fullmatch(text):
        problems.append(f"header {CHECKSUM!r} must be 64 hex digits (SHA-256), got {text!r}")
        return None
    return text.lower()


def read_meta(headers: Headers, source: Source) -> tuple[FrameMeta, Failure | None]:
    """Parse the contract headers; the first problem (if any) as a :class:`Failure`."""
    values, problems = _text_headers(headers)
    mm = _mm_per_px(values.get("mm_per_px"), problems)
    checksum = _checksum(values.get(CHECKSUM), problems)
    frame_id = values.get(FRAME_ID) or None
    meta = FrameMeta(
        frame_id=frame_id or source.derived_frame_id(),
        frame_id_derived=frame_id is None,
        recipe_id=values.get("recipe_id") or None,
        role_id=values.get("role_id") or None,
        roi_id=values.get("roi_id") or None,
        part_id=values.get("part_id") or None,
        mm_per_px=mm,
        content_sha256=checksum,
    )
    missing = [n for n in (FRAME_ID, *ROUTING) if not values.get(n)]
    if missing:
        note = " (verdict keyed by topic:partition:offset)" if frame_id is None else ""
        error = MissingHeaderError(f"missing header(s): {', '.join(missing)}{note}")
        return meta, Failure.of(error)
    if problems:
        return meta, Failure.of(InvalidHeaderError("; ".join(problems)))
    return meta, None


def frame_from_record(record: KafkaRecord, epoch: int, fetched_at: float | None = None) -> Frame:
    source = Source(record.topic, record.partition, record.offset)
    headers: Headers = tuple((str(k), bytes(v or b"")) for k, v in record.headers or ())
    meta, failure = read_meta(headers, source)
    return Frame(
        source=source,
        epoch=epoch,
        key=record.key,
        value=record.value,
        headers=headers,
        timestamp_ms=record.timestamp,
        fetched_at=time.monotonic() if fetched_at is None else fetched_at,
        meta=meta,
        failure=failure,
    )


def decode_frame(
    frame: Frame, max_bytes: int, max_pixels: int, require_checksum: bool = False
) -> Decoded:
    """Bound and decode one frame; runs in a worker thread (OpenCV releases the GIL).

    A frame that already failed on its headers is not decoded: its verdict is ``ERROR``
    whatever the pixels say. ``require_checksum`` (``BDI_REQUIRE_CHECKSUM``): a frame
    without a ``content_sha256`` header is refused, so no damaged transfer that still
    decodes can be scored.
    """
    t0 = time.perf_counter()
    # every verdict names its image, a refused one too; the content_sha256 check reuses it
    sha = None if frame.value is None else hashlib.sha256(frame.value).hexdigest()

    def decoded(image: np.ndarray | None, failure: Failure | None) -> Decoded:
        return Decoded(frame, image, failure, (time.perf_counter() - t0) * 1e3, sha)

    if frame.failure is not None:
        return decoded(None, frame.failure)
    if require_checksum and frame.meta.content_sha256 is None:
        missing = MissingHeaderError(
            f"missing header(s): {CHECKSUM} (required: BDI_REQUIRE_CHECKSUM=1)"
        )
        return decoded(None, Failure.of(missing))
    data = frame.value or b""
    if len(data) > max_bytes:
        too_large = FrameTooLargeError(f"frame of {len(data)} bytes exceeds {max_bytes} bytes")
        return decoded(None, Failure.of(too_large))
    want = frame.meta.content_sha256
    if want is not None and (sha or hashlib.sha256(b"").hexdigest()) != want:
        # a damaged transfer that still decodes (a JPEG has no checksum of its own)
        damaged = ChecksumMismatchError(f"frame bytes do not match their {CHECKSUM} header")
        return decoded(None, Failure.of(damaged))
    try:
        image = decode_image(data, max_pixels)
    except ImageDecodeError as exc:
        return decoded(None, Failure.of(exc))
    except Exception as exc:  # any decoder crash is this frame's problem only
        return decoded(None, Failure("ImageDecodeError", f"{type(exc).__name__}: {exc}"))
    return decoded(image, None)
