"""Scoring single uploads and the stored datasets."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Request, UploadFile

from edge.api import service
from edge.api.deps import StateDep
from edge.api.routes.common import ERRORS, IdField, OptIdField, blocking, read_images, resolve
from edge.api.schemas import InferDatasetResult, InferencePublic

router = APIRouter(tags=["inference"], responses=ERRORS)


@router.post("/infer")
async def infer(
    request: Request,
    state: StateDep,
    role_id: IdField,
    roi_id: IdField,
    image: Annotated[UploadFile, File()],
    recipe_id: OptIdField = None,
    model_key: OptIdField = None,
    mm_per_px: Annotated[float | None, Form(gt=0, allow_inf_nan=False)] = None,
    heatmap: Annotated[bool, Form()] = False,
) -> InferencePublic:
    """Score one image: verdict, score, threshold, regions (mm² when the scale is known)."""
    ref = resolve(request, state, recipe_id, role_id, roi_id, model_key)
    (rgb,) = await read_images(state, [image])
    return await blocking(service.infer_one, state, ref, rgb, mm_per_px, heatmap)


@router.post("/infer_dataset")
async def infer_dataset(
    request: Request,
    state: StateDep,
    role_id: IdField,
    roi_id: IdField,
    recipe_id: OptIdField = None,
    model_key: OptIdField = None,
    label: Annotated[Literal["ok", "ng"] | None, Form()] = None,
) -> InferDatasetResult:
    """Score every stored image (or one label's) with the stored model."""
    ref = resolve(request, state, recipe_id, role_id, roi_id, model_key)
    return await blocking(service.infer_dataset, state, ref, label)
