"""Stand-ins for collaborators: a Kafka record with good contract headers, a model and a
store that counts its loads; a consumer batch of decoded frames made from record values."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from consumers.frames import Decoded

GOOD = [
    ("frame_id", b"f-1"),
    ("recipe_id", b"Disc-A"),
    ("role_id", b"Master1"),
    ("roi_id", b"inspection-1"),
    ("part_id", b"SN-42"),
    ("mm_per_px", b"0.05"),
]


@dataclass
class Record:
    """Stands in for ``aiokafka.ConsumerRecord``."""

    value: bytes | None = b""
    headers: list[tuple[str, bytes]] = field(default_factory=lambda: list(GOOD))
    topic: str = "bdi.frames"
    partition: int = 3
    offset: int = 17
    timestamp: int = 1_700_000_000_000
    key: bytes | None = b"key"


@dataclass
class FakeModel:
    version: str


class FakeStore:
    """Counts ``load_model`` calls; ``current`` is what the disk holds."""

    def __init__(self, current: object) -> None:
        self.current = current
        self.calls = 0

    def ref(self, recipe, role, roi):
        from store.naming import model_ref

        return model_ref(Path("/fake-store"), recipe, role, roi)  # validates, as the store does

    def load_model(self, ref):
        self.calls += 1
        if isinstance(self.current, Exception):
            raise self.current
        return self.current


def batch(*values: bytes | None, headers: list[tuple[str, bytes]] = GOOD) -> list[Decoded]:
    """Decoded frames of record ``values`` (frame ids ``f-0``, ``f-1``, …), as a consumer
    batch holds them."""
    from consumers.frames import decode_frame, frame_from_record

    out = []
    for i, value in enumerate(values):
        hdrs = [(k, f"f-{i}".encode() if k == "frame_id" else v) for k, v in headers]
        frame = frame_from_record(Record(value=value, headers=hdrs, offset=i), epoch=1)  # type: ignore[arg-type]
        out.append(decode_frame(frame, 1 << 20, 1 << 20))
    return out
