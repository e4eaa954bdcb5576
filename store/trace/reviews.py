"""Reviews of frame verdicts (docs/REVIEW.md): who confirmed or overruled a frame's
verdict, when and why, and what followed: the dataset image its crop became, the model
version an append made. Rows are only ever added; a frame may be reviewed more than once,
and every review stays.
"""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

from store.trace.db import Database
from store.trace.queries import Cursor

Decision = Literal["confirm", "overrule"]
COLUMNS = (
    "review_id", "frame_id", "part_id", "recipe_id", "role_id", "roi_id", "verdict", "decision",
    "reviewer", "reason", "reviewed_ms", "dataset_label", "dataset_item", "model_version",
    "new_model_version",
)  # fmt: skip


@dataclass(frozen=True)
class Review:
    """One review, as stored (``json`` keeps all of it; the columns are for queries)."""

    review_id: str
    frame_id: str
    part_id: str | None
    recipe_id: str | None
    role_id: str | None
    roi_id: str | None
    verdict: str  # the frame's verdict that was reviewed
    score: float | None
    decision: Decision
    reviewer: str
    reason: str
    reviewed_ms: int
    dataset_label: str | None  # "ok" / "ng": the dataset the crop went into; None: none
    dataset_item: str | None  # the dataset image's name
    model_version: str | None  # the model version that judged the frame
    calibration_version: str | None
    appended: bool  # the crop was added to the model's memory bank
    new_model_version: str | None  # the version that append stored
    note: str  # what the review changed, for a person

    @staticmethod
    def new_id() -> str:
        return uuid.uuid4().hex

    @staticmethod
    def iso(ms: int) -> str:
        return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "reviewed_at": self.iso(self.reviewed_ms)}


def add(db: Database, review: Review) -> None:
    """Store one review (its own transaction)."""
    values = review.to_dict()
    with db.transaction() as tx:
        tx.execute(
            f"INSERT INTO reviews ({', '.join(COLUMNS)}, json) "  # noqa: S608 - fixed names
            f"VALUES ({', '.join('?' * (len(COLUMNS) + 1))})",
            [*(values[c] for c in COLUMNS), orjson.dumps(values).decode()],
        )


def of_frame(db: Database, frame_id: str) -> list[dict[str, Any]]:
    """The reviews of a frame, oldest first (each as :meth:`Review.to_dict` gave it)."""
    rows = db.read(
        "SELECT json FROM reviews WHERE frame_id = ? ORDER BY reviewed_ms, review_id",
        (frame_id,),
    )
    return [orjson.loads(r[0]) for r in rows]


def queue(
    db: Database,
    verdicts: tuple[str, ...],
    near: float | None,
    reviewed: bool,
    after: Cursor | None,
    limit: int,
) -> tuple[list[tuple[dict[str, Any], int]], Cursor | None]:
    """Frame verdicts worth a person's look, newest first: those of ``verdicts`` and the
    OK ones scored at ``near`` × their threshold or above; without ``reviewed``, only
    frames nobody reviewed yet. Each with its number of reviews; and the next page's cursor
    (None: this was the last)."""
    wanted: list[str] = []
    params: list[Any] = []
    if verdicts:
        wanted.append(f"v.verdict IN ({','.join('?' * len(verdicts))})")
        params += verdicts
    if near is not None:
        wanted.append("(v.verdict = 'OK' AND v.threshold > 0 AND v.score >= ? * v.threshold)")
        params.append(near)
    if not wanted:
        return [], None
    clauses = ["(" + " OR ".join(wanted) + ")"]
    if not reviewed:
        clauses.append("NOT EXISTS (SELECT 1 FROM reviews r WHERE r.frame_id = v.frame_id)")
    if after is not None:
        clauses.append("(v.produced_ms, v.frame_id) < (?, ?)")
        params += [after.produced_ms, after.frame_id]
    rows = db.read(
        "SELECT v.produced_ms, v.frame_id, v.json, "  # noqa: S608 - fixed clauses
        "(SELECT COUNT(*) FROM reviews r WHERE r.frame_id = v.frame_id) FROM verdicts v "
        f"WHERE {' AND '.join(clauses)} ORDER BY v.produced_ms DESC, v.frame_id DESC LIMIT ?",
        [*params, limit + 1],
    )
    more = len(rows) > limit
    rows = rows[:limit]
    last = Cursor(int(rows[-1][0]), str(rows[-1][1])) if more else None
    return [(orjson.loads(r[2]), int(r[3])) for r in rows], last
