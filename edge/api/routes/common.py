"""Pieces shared by the routers: the documented error answers, upload reading, running
blocking work off the event loop."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
from fastapi import UploadFile
from starlette.concurrency import run_in_threadpool

from edge.api import service
from edge.api.deps import AppState
from edge.api.diagnostics import Diagnostics
from edge.api.errors import BadRequest, Busy
from edge.api.metrics import ApiMetrics
from edge.api.schemas import ErrorPublic
from engine import Engine
from store import ModelStore

T = TypeVar("T")

# what every endpoint that takes ids and images may answer besides 200
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorPublic, "description": text}
    for code, text in [
        (400, "invalid id or value, missing memory/OK samples, token-grid mismatch"),
        (401, "not logged in, session expired, or a wrong X-API-Key (docs/AUTH.md)"),
        (403, "the role may not do this (forbidden), or a missing X-CSRF-Token (csrf)"),
        (404, "no such dataset image or model revision"),
        (409, "mm_per_px differs from the recipe's locked value"),
        (413, "request body or image too large"),
        (415, "image is not a PNG or JPEG of a supported kind"),
        (422, "request does not match the schema"),
        (429, "too many trainings at once (see Retry-After)"),
        (500, "unexpected error (details in the diagnostics log)"),
    ]
}


def workers(state: AppState) -> tuple[ModelStore, Engine, ApiMetrics, Diagnostics]:
    """What the training, calibration and inference services take, in their order."""
    return state.store, state.engine, state.metrics, state.diagnostics


def take_fit_slot(state: AppState) -> None:
    """One of the ``BDI_MAX_CONCURRENT_FITS`` training slots (the caller releases it), or
    429 ``busy`` with a Retry-After."""
    if not state.fit_slots.acquire(blocking=False):
        raise Busy(f"{state.settings.max_concurrent_fits} training(s) already running", 30)


async def read_images(files: list[UploadFile], max_pixels: int) -> list[np.ndarray]:
    """Decode uploads in a worker thread; the body bound already capped their total size."""
    if not files:
        raise BadRequest("no images uploaded (file field 'images')", code="missing_images")
    blobs = [await f.read() for f in files]
    return await run_in_threadpool(lambda: [service.decode(b, max_pixels) for b in blobs])


async def blocking(func: Callable[..., T], *args: Any) -> T:
    return await run_in_threadpool(func, *args)
