"""Stand-ins for collaborators: a Kafka record with good contract headers, a model and a
store that counts its loads."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

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
