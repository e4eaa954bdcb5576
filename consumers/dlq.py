"""Dead letters: the original bytes and headers of a frame that got no OK/NG, plus why.

Replaying a dead letter onto the frames topic works as is: the consumer ignores ``bdi.*``
headers, and a dead letter of a dead letter replaces them instead of stacking them.
"""

from __future__ import annotations

from consumers.frames import Failure, Frame, Headers
from consumers.outcome import OutRecord
from consumers.verdicts import now_iso

PREFIX = "bdi."
MAX_MESSAGE = 2000  # characters of the error message kept in a header


def dlq_headers(frame: Frame, failure: Failure) -> Headers:
    extra = {
        "bdi.error.class": failure.error_class,
        "bdi.error.message": failure.message[:MAX_MESSAGE],
        "bdi.error.verdict": failure.verdict,
        "bdi.source.topic": frame.source.topic,
        "bdi.source.partition": str(frame.source.partition),
        "bdi.source.offset": str(frame.source.offset),
        "bdi.source.timestamp": str(frame.timestamp_ms),
        "bdi.frame_id": frame.meta.frame_id,
        "bdi.frame_id_derived": "1" if frame.meta.frame_id_derived else "0",
        "bdi.failed_at": now_iso(),
    }
    original = tuple((k, v) for k, v in frame.headers if not k.startswith(PREFIX))
    return original + tuple((k, v.encode("utf-8", errors="replace")) for k, v in extra.items())


def dead_letter(frame: Frame, failure: Failure, topic: str) -> OutRecord:
    """Same key and value as the frame; its headers plus the ``bdi.*`` error headers.

    A record needs a key or a value: a keyless tombstone is dead-lettered keyed by its
    ``frame_id``.
    """
    key = frame.key
    if key is None and frame.value is None:
        key = frame.meta.frame_id.encode("utf-8", errors="replace")
    return OutRecord(
        topic=topic,
        key=key,
        value=frame.value,
        headers=dlq_headers(frame, failure),
        too_large="drop_value",
    )
