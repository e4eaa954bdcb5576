"""Scoring single uploads and the stored datasets."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, UploadFile

from edge.api import service
from edge.api.deps import FormRef, StateDep
from edge.api.routes.common import ERRORS, blocking, read_images, workers
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
    """Score one image: verdict, score, threshold, regions (mm² when the scale is known)."""
    (rgb,) = await read_images([image], state.settings.max_image_pixels)
    return await blocking(
        service.infer_one,
        *workers(state),
        *(ref, rgb, mm_per_px, heatmap),
    )


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
