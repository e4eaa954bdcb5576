"""Which offsets may be committed: only those whose frames, and every frame fetched before
them on the same partition, have had their verdicts acknowledged by the broker.

Each assignment of a partition opens a new *epoch*. Frames carry the epoch they were
fetched in; an acknowledgement from an older epoch (work that was in flight when the
partition was revoked) is ignored, so a revoked partition's in-flight work can never move
a commit of whoever owns it now, nor of a later assignment of it back to us.

Offsets are tracked in fetch order rather than assumed contiguous: compacted topics and
transaction markers leave gaps, and the committed value is "last acknowledged + 1".
Not thread-safe: used from the event loop only.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

TP = TypeVar("TP", bound=Hashable)  # aiokafka's TopicPartition in production


@dataclass
class _Partition:
    epoch: int
    fetched: deque[int] = field(default_factory=deque)  # fetch order, not yet contiguous-acked
    acked: set[int] = field(default_factory=set)
    done: int | None = None  # highest offset with everything up to it acknowledged
    committed: int | None = None  # the last value committed (next offset to read)


class OffsetTracker(Generic[TP]):
    def __init__(self) -> None:
        self._parts: dict[TP, _Partition] = {}
        self._next_epoch = 1

    # --- assignment ------------------------------------------------------------------
    def assign(self, partitions: Iterable[TP]) -> int:
        """Start tracking ``partitions`` in a fresh epoch (returned)."""
        epoch = self._next_epoch
        self._next_epoch += 1
        for tp in partitions:
            self._parts[tp] = _Partition(epoch)
        return epoch

    def revoke(self, partitions: Iterable[TP]) -> dict[TP, int]:
        """Stop tracking ``partitions``; returns what may still be committed for them
        (acknowledged work only: in-flight frames are abandoned and will be redelivered)."""
        out: dict[TP, int] = {}
        for tp in partitions:
            part = self._parts.pop(tp, None)
            if part is not None:
                value = self._advance(part)
                if value is not None:
                    out[tp] = value
        return out

    def epoch(self, tp: TP) -> int | None:
        part = self._parts.get(tp)
        return None if part is None else part.epoch

    def is_current(self, tp: TP, epoch: int) -> bool:
        part = self._parts.get(tp)
        return part is not None and part.epoch == epoch

    @property
    def partitions(self) -> list[TP]:
        return list(self._parts)

    # --- frames ----------------------------------------------------------------------
    def track(self, tp: TP, epoch: int, offset: int) -> bool:
        """Record a fetched frame. ``False`` (not tracked) for a stale epoch or an offset
        not beyond the last one fetched in this epoch (a redelivery within the epoch)."""
        part = self._parts.get(tp)
        if part is None or part.epoch != epoch:
            return False
        last = part.fetched[-1] if part.fetched else part.done
        if last is not None and offset <= last:
            return False
        part.fetched.append(offset)
        return True

    def ack(self, tp: TP, epoch: int, offset: int) -> bool:
        """The broker acknowledged every record of this frame. Ignored when stale."""
        part = self._parts.get(tp)
        if part is None or part.epoch != epoch:
            return False
        part.acked.add(offset)
        return True

    def pending(self, tp: TP | None = None) -> int:
        """Frames fetched and not yet contiguously acknowledged."""
        parts = self._parts.values() if tp is None else [self._parts[tp]]
        return sum(len(p.fetched) for p in parts)

    # --- commits ---------------------------------------------------------------------
    def preview(self, tp: TP, epoch: int, offsets: Iterable[int]) -> int | None:
        """The commit value if ``offsets`` were acknowledged too (nothing is changed):
        what exactly-once mode sends inside the transaction that publishes them."""
        part = self._parts.get(tp)
        if part is None or part.epoch != epoch:
            return None
        acked = part.acked | set(offsets)
        done = part.done
        for offset in part.fetched:
            if offset not in acked:
                break
            done = offset
        return None if done is None else done + 1

    def committable(self) -> dict[TP, int]:
        """``{tp: next offset}`` for partitions whose safe commit point moved."""
        out: dict[TP, int] = {}
        for tp, part in self._parts.items():
            value = self._advance(part)
            if value is not None:
                out[tp] = value
        return out

    def committed(self, offsets: dict[TP, int]) -> None:
        """The broker accepted these commits."""
        for tp, value in offsets.items():
            part = self._parts.get(tp)
            if part is not None and (part.committed is None or value > part.committed):
                part.committed = value

    @staticmethod
    def _advance(part: _Partition) -> int | None:
        while part.fetched and part.fetched[0] in part.acked:
            offset = part.fetched.popleft()
            part.acked.discard(offset)
            part.done = offset
        if part.done is None:
            return None
        value = part.done + 1
        return None if part.committed is not None and value <= part.committed else value
