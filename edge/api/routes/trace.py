"""Reading the trace (docs/TRACE.md): a part with its frames, frame verdicts filtered and
paged, one frame, its crop and its heatmap. The work is in ``edge/api/trace.py``."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Response

from edge.api import trace
from edge.api.deps import StateDep, TraceDep
from edge.api.errors import BadRequest
from edge.api.routes.common import ERRORS, blocking
from edge.api.schemas import ErrorPublic
from edge.api.trace_schemas import FramePublic, PartPublic, PartsPublic, VerdictsPublic
from store import naming
from store.errors import InvalidValueError
from store.trace import Cursor, VerdictFilter
from store.trace.records import FRAME_VERDICTS, PART_VERDICTS


def _error(text: str) -> dict[str, Any]:
    return {"model": ErrorPublic, "description": text}


TRACE_ERRORS: dict[int | str, dict[str, Any]] = {
    **{code: ERRORS[code] for code in (401, 403, 422, 500)},
    503: _error("no trace database yet, or it cannot be reached (trace_unavailable)"),
}
_NOT_FOUND = _error("no such frame (frame_not_found)")
_NO_CROP = _error("no such frame (frame_not_found); its crop is not kept (crop_not_kept)")
_PNG = {"content": {"image/png": {}}, "description": "the heatmap PNG"}
_CROP = {
    "content": {"image/png": {}, "image/jpeg": {}, "application/octet-stream": {}},
    "description": "the crop's bytes as the camera sent them",
}

router = APIRouter(tags=["trace"], responses=TRACE_ERRORS)

Id = Annotated[str, Path(min_length=1, max_length=1024)]
Text = Annotated[str | None, Query(min_length=1, max_length=256)]


def _ms(name: str, text: str | None) -> int | None:
    """An ISO 8601 time (naive: UTC) as epoch milliseconds; 400 when unreadable."""
    if text is None:
        return None
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise BadRequest(f"{name} must be an ISO 8601 time such as 2026-11-27T16:57:14Z, "
                         f"got {text[:80]!r}", code="invalid_filter") from None  # fmt: skip
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def _verdicts(
    given: list[str] | None, known: frozenset[str] = FRAME_VERDICTS
) -> str | tuple[str, ...] | None:
    names = [v.strip().upper() for item in given or () for v in item.split(",") if v.strip()]
    unknown = sorted(set(names) - known)
    if unknown:
        raise BadRequest(f"unknown verdict {', '.join(map(repr, unknown))}: one of "
                         f"{', '.join(sorted(known))}", code="invalid_filter")  # fmt: skip
    chosen = tuple(sorted(set(names)))
    return None if not chosen else chosen[0] if len(chosen) == 1 else chosen


@router.get("/parts", responses={400: _error("a bad filter")})
async def get_parts(
    reader: TraceDep,
    verdict: Annotated[list[str] | None, Query(max_length=64)] = None,
    recipe_id: Text = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> PartsPublic:
    """The newest decided parts (by decision time), in brief: what to look at before a
    serial is typed. ``verdict`` (repeat it or give a comma list, e.g. ``NG,ERROR``)
    keeps the parts of those verdicts."""
    chosen = _verdicts(verdict, PART_VERDICTS)
    where = (chosen,) if isinstance(chosen, str) else chosen
    recipe = None if recipe_id is None else naming.recipe_id(recipe_id)
    return PartsPublic.model_validate(
        await blocking(trace.recent_parts, reader, where, recipe, limit)
    )


@router.get("/parts/{part_id:path}", responses={404: _error("no such part (part_not_found)")})
async def get_part(reader: TraceDep, part_id: Id) -> PartPublic:
    """A part: its verdict and reason, the plan it was judged by, missing and unexpected
    ROIs, times, and its frames with their verdicts, provenance and crop / heatmap links.
    ``decided: false`` while frames of it are stored but its record has not come."""
    return PartPublic.model_validate(await blocking(trace.part, reader, part_id))


@router.get("/verdicts", responses={400: _error("a bad filter or cursor")})
async def get_verdicts(
    reader: TraceDep,
    recipe_id: Text = None,
    role_id: Text = None,
    roi_id: Text = None,
    part_id: Annotated[str | None, Query(min_length=1, max_length=1024)] = None,
    verdict: Annotated[list[str] | None, Query(max_length=64)] = None,
    since: Annotated[str | None, Query(max_length=64, description="ISO 8601, inclusive")] = None,
    until: Annotated[str | None, Query(max_length=64, description="ISO 8601, exclusive")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(max_length=2048)] = None,
) -> VerdictsPublic:
    """Frame verdicts, newest first (by ``produced_at``), filtered by ids as the frames
    name them (the recipe id case-insensitive, as everywhere; a malformed one is 400), by
    verdict (repeat it or give a comma list) and by time; a page at a time: pass
    ``next_cursor`` back as ``cursor``."""
    recipe = None if recipe_id is None else naming.recipe_id(recipe_id)
    where = VerdictFilter(
        recipe_id=recipe, role_id=role_id, roi_id=roi_id, part_id=part_id,
        verdict=_verdicts(verdict), since_ms=_ms("since", since), until_ms=_ms("until", until),
    )  # fmt: skip
    since_ms, until_ms = where.since_ms, where.until_ms
    if since_ms is not None and until_ms is not None and since_ms >= until_ms:
        raise BadRequest("since must be before until", code="invalid_filter")
    try:
        after = Cursor.decode(cursor) if cursor is not None else None
    except InvalidValueError as exc:
        raise BadRequest(f"{exc}: pass the next_cursor of a previous page",
                         code="invalid_cursor") from None  # fmt: skip
    return VerdictsPublic.model_validate(
        await blocking(trace.verdicts, reader, where, after, limit)
    )


# the crop and heatmap routes come first: /frames/{frame_id:path} would match them too
@router.get(
    "/frames/{frame_id:path}/crop",
    response_class=Response,
    responses={200: _CROP, 404: _NO_CROP},
)
async def get_crop(reader: TraceDep, frame_id: Id) -> Response:
    """The frame's crop, when the trace kept it (404 ``crop_not_kept`` says why not)."""
    data, media, sha = await blocking(trace.crop, reader, frame_id)
    return Response(data, media_type=media, headers={"ETag": f'"{sha}"'})


@router.get(
    "/frames/{frame_id:path}/heatmap",
    response_class=Response,
    responses={
        200: _PNG,
        404: _error("no such frame, no crop kept (crop_not_kept), or no model scored it "
                    "(heatmap_unavailable)"),
        410: _error("the model version that judged the frame is no longer stored "
                    "(model_version_gone)"),
    },
)  # fmt: skip
async def get_heatmap(state: StateDep, reader: TraceDep, frame_id: Id) -> Response:
    """The crop scored again by the model revision that judged it, as a PNG overlay (full
    red at twice the threshold, as on the heatmaps topic)."""
    png = await blocking(
        trace.heatmap, reader, state.store, state.engine, frame_id,
        state.settings.max_image_pixels,
    )  # fmt: skip
    return Response(png, media_type="image/png")


@router.get("/frames/{frame_id:path}", responses={404: _NOT_FOUND})
async def get_frame(reader: TraceDep, frame_id: Id) -> FramePublic:
    """A frame: its stored verdict, its part, its image's SHA-256, crop and heatmap links."""
    return FramePublic.model_validate(await blocking(trace.frame, reader, frame_id))
