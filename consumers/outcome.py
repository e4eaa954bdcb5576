"""What processing a frame produces: its verdict and the records to publish for it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from consumers.frames import Frame, Headers
from consumers.verdicts import VerdictMessage

# What to do when the broker (or the client's max request size) refuses a record as too
# large: fail the frame (verdicts), resend it without its value (dead letters keep their
# headers, so the error is still on record), or skip it (optional heatmaps).
TooLarge = Literal["fail", "drop_value", "skip"]


@dataclass(frozen=True)
class OutRecord:
    """One record to produce. ``partition``: an explicit partition (``None``: by key).
    ``state``: a state record (the part-state changelog): sent only once every other record
    of its batch is acknowledged, in the batch's order, so the state never runs ahead of
    the records it stands for (``consumers.part_state``)."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers = ()
    too_large: TooLarge = "fail"
    partition: int | None = None
    state: bool = False


@dataclass(frozen=True)
class Outcome:
    """One frame's verdict and every record that must be acknowledged before its offset
    may be committed (verdict, dead letter, heatmap, part records and part state)."""

    frame: Frame
    verdict: VerdictMessage
    records: list[OutRecord] = field(default_factory=list)
