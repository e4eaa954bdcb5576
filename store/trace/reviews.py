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
