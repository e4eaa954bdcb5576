"""Pieces shared by the routers: id resolution, upload reading, running blocking work."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import numpy as np
from fastapi import Form, Request, UploadFile
from starlette.concurrency import run_in_threadpool

from edge.api import service
from edge.api.deps import AppState, remember_ids
from edge.api.errors import BadRequest
from edge.api.schemas import ErrorPublic
from store import ModelRef

T = TypeVar("T")

# the ids every form names a model or dataset by
IdField = Annotated[str, Form(min_length=1, max_length=256)]
OptIdField = Annotated[str | None, Form(max_length=256)]

# what every endpoint that takes ids and images may answer besides 200
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorPublic, "description": text}
    for code, text in [
        (400, "invalid id or value, missing memory/OK samples, token-grid mismatch"),
        (401, "missing or wrong X-API-Key (when BDI_API_KEY is set)"),
        (404, "no such dataset image"),
        (409, "mm_per_px differs from the recipe's locked value"),
        (413, "request body or image too large"),
        (415, "image is not a PNG or JPEG of a supported kind"),
        (422, "request does not match the schema"),
        (429, "too many trainings at once (see Retry-After)"),
        (500, "unexpected error (details in the diagnostics log)"),
    ]
}


def resolve(
    request: Request,
    state: AppState,
    recipe_id: str | None,
    role_id: str,
    roi_id: str,
    model_key: str | None = None,
) -> ModelRef:
    """Validate the ids (400 on a bad one) and tag the request's log line with them."""
    remember_ids(request, recipe_id=recipe_id, role_id=role_id, roi_id=roi_id)
    ref = state.store.ref(recipe_id, role_id, roi_id, model_key)
    remember_ids(request, recipe_id=ref.recipe_id, model_key=ref.model_key)
    return ref


async def read_images(state: AppState, files: list[UploadFile]) -> list[np.ndarray]:
    """Decode uploads in a worker thread; the body bound already capped their total size."""
    if not files:
        raise BadRequest("no images uploaded (file field 'images')", code="missing_images")
    blobs = [await f.read() for f in files]
    return await run_in_threadpool(lambda: [service.decode(state, b) for b in blobs])


async def blocking(func: Callable[..., T], *args: Any) -> T:
    return await run_in_threadpool(func, *args)
