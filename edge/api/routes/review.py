"""The review loop (docs/REVIEW.md): confirm or overrule a frame's verdict from the trace,
and read a frame's reviews. The work is in ``edge/api/review.py``.

Registered before the trace router: its ``GET /frames/{frame_id:path}`` would take
``/frames/{frame_id}/reviews`` for a frame id ending in ``/reviews``.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request

from edge.api import review
from edge.api.auth import Forbidden
from edge.api.deps import PrincipalDep, StateDep, TraceDep
from edge.api.errors import BadRequest
from edge.api.review import QueuePublic, ReviewPublic, ReviewRequest, ReviewsPublic
from edge.api.routes.common import ERRORS, blocking
from edge.api.schemas import ErrorPublic
from store.errors import InvalidValueError
from store.trace import Cursor
from store.users import at_least


def _error(text: str) -> dict[str, Any]:
    return {"model": ErrorPublic, "description": text}


REVIEW_ERRORS: dict[int | str, dict[str, Any]] = {
    **{code: ERRORS[code] for code in (401, 403, 422, 500)},
    404: _error("no such frame in the trace (frame_not_found)"),
    503: _error("no trace database yet, or it cannot be reached (trace_unavailable)"),
}
router = APIRouter(tags=["review"], responses=REVIEW_ERRORS)

Id = Annotated[str, Path(min_length=1, max_length=1024)]


@router.post(
    "/frames/{frame_id:path}/review",
    responses={
        400: _error("append=true for anything but an overruled NG (append_not_applicable); "
                    "the verdict's ids break the naming rules (invalid_id); no model stored "
                    "to append to (missing_memory)"),
        409: _error("no verdict stored yet (verdict_not_stored); an ERROR or NO_MODEL verdict "
                    "(not_reviewable); no crop kept (crop_not_kept); the model cannot take "
                    "the crop (append_mismatch, mm_per_px_mismatch, model_changed)"),
        413: ERRORS[413],
        415: ERRORS[415],
        429: _error("append=true while a training is running (see Retry-After)"),
    },
)  # fmt: skip
async def post_review(
    request: Request,
    state: StateDep,
    principal: PrincipalDep,
    reader: TraceDep,
    frame_id: Id,
    body: ReviewRequest,
) -> ReviewPublic:
    """Confirm or overrule the frame's verdict. An NG overruled puts the crop into the OK
    dataset (``append=true``: into the model's memory bank too, a new model version); an
    NG confirmed and an OK overruled put it into the NG dataset; an OK confirmed is only
    recorded. Every review is recorded in the trace with who, when and why: a logged-in
    user's name is the reviewer; with the API key, ``reviewer`` says who. Adding to the
    memory bank (``append``) changes the model: the engineer role only (403)."""
    if body.append and not at_least(principal.role, "engineer"):
        raise Forbidden(
            f"append=true adds the crop to the model: this needs the role engineer; "
            f"{principal.name} has the role {principal.role} (review without append)"
        )
    body = review.as_reviewer(body, principal.name if principal.via == "session" else None)
    request.state.audit_detail = {"decision": body.decision, "append": body.append}
    return await blocking(
        review.review, reader, state.store, state.engine, state.diagnostics, state.fit_slots,
        state.settings.max_image_pixels, frame_id, body,
    )  # fmt: skip


@router.get("/frames/{frame_id:path}/reviews")
async def get_reviews(reader: TraceDep, frame_id: Id) -> ReviewsPublic:
    """The frame's reviews, oldest first."""
    return await blocking(review.reviews, reader, frame_id)


QUEUED = frozenset({"NG", "ERROR", "NO_MODEL"})


@router.get("/review/queue", responses={400: _error("a bad filter or cursor")})
async def get_queue(
    reader: TraceDep,
    verdict: Annotated[list[str] | None, Query(max_length=64)] = None,
    near: Annotated[float, Query(ge=0.0, le=1.0)] = 0.8,
    reviewed: bool = False,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(max_length=2048)] = None,
) -> QueuePublic:
    """The frames to review, newest first: those whose verdict is one of ``verdict``
    (default ``NG,ERROR``; repeat it or give a comma list; ``none`` for none) and the OK
    ones scored at ``near`` × their threshold or above (``near=1``: none); only frames
    nobody reviewed yet unless ``reviewed=true``. A page at a time: pass ``next_cursor``
    back as ``cursor``."""
    given = [v.strip().upper() for item in verdict or ["NG,ERROR"] for v in item.split(",")]
    chosen = tuple(sorted({v for v in given if v and v != "NONE"}))
    unknown = sorted(set(chosen) - QUEUED)
    if unknown:
        raise BadRequest(f"unknown verdict {', '.join(map(repr, unknown))}: one of "
                         f"{', '.join(sorted(QUEUED))} or none", code="invalid_filter")  # fmt: skip
    try:
        after = Cursor.decode(cursor) if cursor is not None else None
    except InvalidValueError as exc:
        raise BadRequest(f"{exc}: pass the next_cursor of a previous page",
                         code="invalid_cursor") from None  # fmt: skip
    return await blocking(
        review.queue, reader, chosen, None if near >= 1.0 else near, reviewed, after, limit
    )
