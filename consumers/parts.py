"""Part aggregation: frame verdicts in, one ``bdi.part/1`` record per part out. No Kafka here.

A :class:`PartTable` holds the state of one input partition: the parts still open and, for a
while, the parts already decided (to recognise late and redelivered frames). Every call
returns what to write, as :class:`Emit` values: part records, late records and changelog
updates, to be produced together (in one transaction where exactly-once is on). Its state
is nothing but the changelog: rebuilding a table with :meth:`PartTable.restore` from the
changelog's records gives the same table, so a crash or a rebalance neither loses a part nor
decides one twice.

Time is the partition's clock, passed in: the largest record timestamp (or ``now_ms`` given
to :meth:`PartTable.expire`) seen so far, never the wall clock, so the same inputs always
give the same outputs. A frame's time is the clock when it is added. A part opens with its
first frame; a frame counts when it comes before ``first + deadline_ms``; the part is
decided as soon as every plan ROI (required and optional) has a frame, else when the clock
reaches the deadline. The rules: :mod:`consumers.part_rules`; the contract: ``docs/KAFKA.md``.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from consumers.part_rules import (
    counts_for,
    frame_entry,
    frame_part,
    late_record,
    part_record,
    roi_of,
)
from store.plans import InspectionPlan, PlanRoi

STATE_SCHEMA = "bdi.part_state/1"
MIN_HORIZON_MS = 600_000  # a decided part is remembered max(10 x deadline, 10 min)
HORIZON_DEADLINES = 10
MAX_DECIDED = 100_000  # decided parts remembered at most; the oldest decided go first
MAX_IDS = 256  # frame ids remembered per decided part (counted and late ones)
_DEADLINE, _FORGET = 0, 1


@dataclass(frozen=True)
class Emit:
    """One record to produce. ``kind`` ``part`` / ``late``: to the parts topic, ``record``
    the JSON's dict; ``changelog``: to the changelog topic, ``value`` ``None`` a tombstone.
    ``key`` is the part id."""

    kind: Literal["part", "late", "changelog"]
    key: str
    value: bytes | None
    record: dict[str, Any] | None = None


class PartStateError(ValueError):
    """A changelog record that is not a part state this code can read."""


@dataclass
class OpenPart:
    part_id: str
    plan: InspectionPlan
    first_ms: int
    last_ms: int
    frames: list[dict[str, Any]] = field(default_factory=list)  # counted, in arrival order
    unexpected: list[dict[str, Any]] = field(default_factory=list)

    @property
    def deadline_at(self) -> int:
        return self.first_ms + self.plan.deadline_ms

    def has(self, frame_id: str) -> bool:
        return any(f["frame_id"] == frame_id for f in (*self.frames, *self.unexpected))

    def complete(self) -> bool:
        seen = {roi_of(f) for f in self.frames}
        return all((r.role_id, r.roi_id) in seen for r in self.plan.rois)

    def to_state(self) -> dict[str, Any]:
        plan = self.plan
        return {
            "schema": STATE_SCHEMA,
            "state": "open",
            "part_id": self.part_id,
            "plan": {
                "recipe_id": plan.recipe_id,
                "version": plan.version,
                "deadline_ms": plan.deadline_ms,
                "rois": [[r.role_id, r.roi_id, r.required] for r in plan.rois],
            },
            "first_ms": self.first_ms,
            "last_ms": self.last_ms,
            "frames": self.frames,
            "unexpected": self.unexpected,
        }


@dataclass
class DecidedPart:
    part_id: str
    recipe_id: str
    verdict: str
    decided_ms: int
    forget_ms: int  # when the part is forgotten (a tombstone is written)
    frame_ids: list[str]  # frames already in a record of this part (redeliveries are dropped)

    def to_state(self) -> dict[str, Any]:
        return {
            "schema": STATE_SCHEMA,
            "state": "decided",
            "part_id": self.part_id,
            "recipe_id": self.recipe_id,
            "verdict": self.verdict,
            "decided_ms": self.decided_ms,
            "forget_ms": self.forget_ms,
            "frame_ids": self.frame_ids,
        }


def encode_state(part: OpenPart | DecidedPart) -> bytes:
    return orjson.dumps(part.to_state())


def decode_state(value: bytes) -> OpenPart | DecidedPart:
    """A changelog value back into a part state; :class:`PartStateError` if unreadable."""
    try:
        data = orjson.loads(value)
        if data.get("schema") != STATE_SCHEMA:
            raise PartStateError(f"not a {STATE_SCHEMA} record: {data.get('schema')!r}")
        if data["state"] == "decided":
            fields = ("part_id", "recipe_id", "verdict", "decided_ms", "forget_ms", "frame_ids")
            return DecidedPart(*(data[name] for name in fields))
        plan = data["plan"]
        rois = tuple(PlanRoi(role, roi, bool(req)) for role, roi, req in plan["rois"])
        return OpenPart(
            data["part_id"],
            InspectionPlan(plan["recipe_id"], plan["version"], rois, int(plan["deadline_ms"])),
            int(data["first_ms"]),
            int(data["last_ms"]),
            list(data["frames"]),
            list(data["unexpected"]),
        )
    except PartStateError:
        raise
    except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError) as exc:
        raise PartStateError(f"unreadable part state: {exc}") from exc


class PartTable:
    """The parts of one input partition. Not thread-safe; deterministic given its inputs."""

    def __init__(
        self,
        *,
        horizon_ms: int | None = None,
        max_decided: int = MAX_DECIDED,
        code_version: str | None = None,
    ) -> None:
        self.clock = 0
        self._horizon_ms = horizon_ms
        self._max_decided = max_decided
        self._code_version = code_version
        self._open: dict[str, OpenPart] = {}
        self._decided: OrderedDict[str, DecidedPart] = OrderedDict()
        self._due: list[tuple[int, int, str]] = []  # (time, _DEADLINE | _FORGET, part_id)

    @property
    def open_parts(self) -> int:
        return len(self._open)

    @property
    def decided_parts(self) -> int:
        return len(self._decided)

    def add(
        self, verdict: Mapping[str, Any], plan: InspectionPlan | None, seen_ms: int
    ) -> list[Emit]:
        """Count one ``bdi.verdict/1`` message seen at ``seen_ms`` (its record timestamp).
        ``plan``: the plan of the frame's recipe (see :func:`frame_part`), ``None`` if none;
        it is read only when the frame opens a part. Every frame advances the clock, and
        parts whose deadline it reaches are decided first, so the result may hold other
        parts' records too (and only those for a frame without ``part_id``)."""
        emits = self.expire(seen_ms)
        ref = frame_part(verdict)
        if ref is None:
            return emits
        entry = frame_entry(verdict, self.clock)
        decided = self._decided.get(ref.part_id)
        if decided is not None:
            return emits + self._late(decided, entry)
        part = self._open.get(ref.part_id)
        if part is None:
            if plan is None:
                return emits
            part = OpenPart(ref.part_id, plan, self.clock, self.clock)
            self._open[ref.part_id] = part
            heapq.heappush(self._due, (part.deadline_at, _DEADLINE, ref.part_id))
        elif part.has(entry["frame_id"]):
            return emits  # a redelivery: counted once
        counted = counts_for(part.plan, entry, ref.recipe_id)
        (part.frames if counted else part.unexpected).append(entry)
        part.last_ms = self.clock
        if part.complete():
            return emits + self._decide(part, self.clock)
        return [*emits, Emit("changelog", part.part_id, encode_state(part))]

    def expire(self, now_ms: int) -> list[Emit]:
        """Advance the clock to ``now_ms`` (it never goes back): decide the parts whose
        deadline it reached, forget the decided ones past their horizon (tombstones)."""
        self.clock = max(self.clock, int(now_ms))
        emits: list[Emit] = []
        while self._due and self._due[0][0] <= self.clock:
            at, kind, part_id = heapq.heappop(self._due)
            if kind == _DEADLINE:
                part = self._open.get(part_id)
                if part is not None and part.deadline_at == at:
                    emits += self._decide(part, at)
            else:
                decided = self._decided.get(part_id)
                if decided is not None and decided.forget_ms == at:
                    del self._decided[part_id]
                    emits.append(Emit("changelog", part_id, None))
        return emits

    def next_due(self) -> int | None:
        """The clock time at which :meth:`expire` next has something to do, if any."""
        while self._due and not self._valid(*self._due[0]):
            heapq.heappop(self._due)
        return self._due[0][0] if self._due else None

    def restore(self, key: str | bytes, value: bytes | None) -> None:
        """Apply one changelog record (in log order) while rebuilding the table."""
        part_id = key.decode() if isinstance(key, bytes) else key
        self._open.pop(part_id, None)
        self._decided.pop(part_id, None)
        if value is None:
            return
        part = decode_state(value)
        if part.part_id != part_id:
            raise PartStateError(f"changelog key {part_id!r} holds part {part.part_id!r}")
        if isinstance(part, OpenPart):
            self._open[part_id] = part
            self.clock = max(self.clock, part.last_ms)
            heapq.heappush(self._due, (part.deadline_at, _DEADLINE, part_id))
        else:
            self._decided[part_id] = part
            self.clock = max(self.clock, part.decided_ms)
            heapq.heappush(self._due, (part.forget_ms, _FORGET, part_id))

    def _valid(self, at: int, kind: int, part_id: str) -> bool:
        if kind == _DEADLINE:
            part = self._open.get(part_id)
            return part is not None and part.deadline_at == at
        decided = self._decided.get(part_id)
        return decided is not None and decided.forget_ms == at

    def _decide(self, part: OpenPart, decided_ms: int) -> list[Emit]:
        times = (part.first_ms, part.last_ms, decided_ms)
        record = part_record(
            part.part_id, part.plan, part.frames, part.unexpected, times, self._code_version
        )
        horizon = self._horizon_ms
        if horizon is None:
            horizon = max(HORIZON_DEADLINES * part.plan.deadline_ms, MIN_HORIZON_MS)
        ids = [f["frame_id"] for f in (*part.frames, *part.unexpected)][-MAX_IDS:]
        decided = DecidedPart(
            part.part_id,
            part.plan.recipe_id,
            record["verdict"],
            decided_ms,
            decided_ms + horizon,
            ids,
        )
        del self._open[part.part_id]
        self._decided[part.part_id] = decided
        heapq.heappush(self._due, (decided.forget_ms, _FORGET, part.part_id))
        emits = [
            Emit("part", part.part_id, orjson.dumps(record), record),
            Emit("changelog", part.part_id, encode_state(decided)),
        ]
        while len(self._decided) > self._max_decided:
            oldest, _ = self._decided.popitem(last=False)
            emits.append(Emit("changelog", oldest, None))
        return emits

    def _late(self, decided: DecidedPart, entry: dict[str, Any]) -> list[Emit]:
        if entry["frame_id"] in decided.frame_ids:
            return []  # a redelivery of a frame already in a record
        decided.frame_ids = [*decided.frame_ids, entry["frame_id"]][-MAX_IDS:]
        record = late_record(
            decided.part_id, decided.recipe_id, decided.verdict, decided.decided_ms, entry
        )
        return [
            Emit("late", decided.part_id, orjson.dumps(record), record),
            Emit("changelog", decided.part_id, encode_state(decided)),
        ]
