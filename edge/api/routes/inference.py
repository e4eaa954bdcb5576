"""Scoring single uploads and the stored datasets.

Both queue their decoded frames on the app's batcher (:mod:`edge.api.batching`), which
scores concurrent requests together in engine-sized batches.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, File, Form, UploadFile

from edge.api import service
from edge.api.deps import FormRef, StateDep
from edge.api.routes.common import ERRORS, blocking
from edge.api.schemas import ErrorPublic, InferDatasetResult, InferencePublic
from engine import Inference, InferItem, PatchCoreModel
from store import ModelRef, ModelStore

# what the batcher answers besides (edge.api.batching)
QUEUE_ERRORS: dict[int | str, dict[str, Any]] = {
    429: {"model": ErrorPublic, "description": "queue_full: BDI_REST_QUEUE_MAX frames already "
          "wait for the engine (see Retry-After)"},
    503: {"model": ErrorPublic, "description": "deadline_exceeded: not scored within "
          "BDI_REST_DEADLINE_S (see Retry-After); device_out_of_memory"},
}  # fmt: skip

router = APIRouter(tags=["inference"], responses={**ERRORS, **QUEUE_ERRORS})


@router.post("/infer")
async def infer(
    state: StateDep,
    ref: FormRef,
    image: Annotated[UploadFile, File()],
    mm_per_px: Annotated[float | None, Form(gt=0, allow_inf_nan=False)] = None,
    heatmap: Annotated[bool, Form()] = False,
) -> InferencePublic:
    """Score one image: verdict, score, threshold, regions (mm² when the scale is known),
    and what made the verdict (model, calibration, image, code and settings versions)."""
    data = await image.read()
    model, rgb, sha = await blocking(
        _prepare, state.store, ref, data, mm_per_px, state.settings.max_image_pixels
    )
    (result,) = await state.batcher.infer([InferItem(model, rgb, mm_per_px, want_heatmap=heatmap)])
    return await blocking(
        service.inference_public,
        *(state.engine, state.metrics, state.diagnostics),
        *(ref, result, sha, heatmap),
    )


def _prepare(
    store: ModelStore, ref: ModelRef, data: bytes, mm_per_px: float | None, max_pixels: int
) -> tuple[PatchCoreModel, np.ndarray, str]:
    """The model, the upload as RGB and the SHA-256 of its bytes as received (one
    worker-thread hop before the request queues for the engine)."""
    rgb = service.decode(data, max_pixels)
    model = service.infer_model(store, ref, mm_per_px)
    return model, rgb, hashlib.sha256(data).hexdigest()


@router.post("/infer_dataset")
async def infer_dataset(
    state: StateDep,
    ref: FormRef,
    label: Annotated[Literal["ok", "ng"] | None, Form()] = None,
) -> InferDatasetResult:
    """Score every stored image (or one label's) with the stored model."""
    frames = await blocking(
        service.dataset_frames, state.store, ref, label, state.settings.max_image_pixels
    )
    # queued an engine batch at a time, so that /infer requests get their turn in between
    step = state.engine.batch_size
    results: list[Inference] = []
    for start in range(0, len(frames.images), step):
        chunk = frames.images[start : start + step]
        results += await state.batcher.infer([InferItem(frames.model, img) for img in chunk])
    return await blocking(service.dataset_result, state.metrics, ref, frames, results)
