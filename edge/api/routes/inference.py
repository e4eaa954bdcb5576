"""Scoring single uploads and the stored datasets."""

from __future__ import annotations

import hashlib
from typing import Annotated, Literal

import numpy as np
from fastapi import APIRouter, File, Form, UploadFile

from edge.api import service
from edge.api.deps import FormRef, StateDep
from edge.api.routes.common import ERRORS, blocking, workers
from edge.api.schemas import InferDatasetResult, InferencePublic

router = APIRouter(tags=["inference"], responses=ERRORS)


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
    rgb, sha = await blocking(_decode_and_hash, data, state.settings.max_image_pixels)
    return await blocking(
        service.infer_one,
        *workers(state),
        *(ref, rgb, sha, mm_per_px, heatmap),
    )


def _decode_and_hash(data: bytes, max_pixels: int) -> tuple[np.ndarray, str]:
    """The upload as RGB and the SHA-256 of its bytes as received (one worker-thread hop)."""
    return service.decode(data, max_pixels), hashlib.sha256(data).hexdigest()


@router.post("/infer_dataset")
async def infer_dataset(
    state: StateDep,
    ref: FormRef,
    label: Annotated[Literal["ok", "ng"] | None, Form()] = None,
) -> InferDatasetResult:
    """Score every stored image (or one label's) with the stored model."""
    return await blocking(
        service.infer_dataset,
        *(state.store, state.engine, state.metrics),
        *(ref, label, state.settings.max_image_pixels),
    )
