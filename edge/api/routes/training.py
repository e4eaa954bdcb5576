"""Training from OK images and calibration of the threshold."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Annotated

from fastapi import APIRouter, File, Form, Request, UploadFile

from edge.api import service
from edge.api.deps import AppState, StateDep
from edge.api.errors import BadRequest, Busy
from edge.api.routes.common import ERRORS, IdField, OptIdField, blocking, read_images, resolve
from edge.api.schemas import CalibrateRequest, CalibrationPublic, FitResult

router = APIRouter(tags=["training"], responses=ERRORS)


@router.post("/fit_ok")
async def fit_ok(
    request: Request,
    state: StateDep,
    role_id: IdField,
    roi_id: IdField,
    recipe_id: OptIdField = None,
    model_key: OptIdField = None,
    mm_per_px: Annotated[float | None, Form(gt=0, allow_inf_nan=False)] = None,
    use_dataset: Annotated[bool, Form()] = False,
    images: Annotated[list[UploadFile] | None, File()] = None,
) -> FitResult:
    """Build a model from OK images: uploaded ones, or the stored OK dataset
    (``use_dataset=true``, at least ``BDI_MIN_OK_SAMPLES``)."""
    ref = resolve(request, state, recipe_id, role_id, roi_id, model_key)
    settings = state.settings
    if use_dataset and images:
        raise BadRequest("send images or use_dataset=true, not both", code="ambiguous_source")
    if not use_dataset and settings.train_dataset_only:
        raise BadRequest(
            "uploads are disabled for training (BDI_TRAIN_DATASET_ONLY=1): store the images "
            "with /datasets/upload and train with use_dataset=true",
            code="train_dataset_only",
        )
    if not state.fit_slots.acquire(blocking=False):
        raise Busy(f"{settings.max_concurrent_fits} training(s) already running", 30)
    try:
        if use_dataset:
            ok = await blocking(
                state.store.datasets.load, ref.recipe_id, ref.role_id, ref.roi_id, "ok"
            )
            if len(ok) < settings.min_ok_samples:
                raise BadRequest(
                    f"{len(ok)} stored OK images, at least {settings.min_ok_samples} needed "
                    "(BDI_MIN_OK_SAMPLES)",
                    code="missing_ok_samples",
                )
        else:
            ok = await read_images(state, images or [])
        return await blocking(
            service.train, state, ref, ok, mm_per_px, "dataset" if use_dataset else "upload"
        )
    finally:
        state.fit_slots.release()


@router.post("/calibrate_ng")
async def calibrate_ng(
    request: Request, state: StateDep, body: CalibrateRequest
) -> CalibrationPublic:
    """Set the stored model's threshold from OK (and NG) image scores."""
    ref = resolve(request, state, body.recipe_id, body.role_id, body.roi_id, body.model_key)
    return await _counted(state, blocking(service.calibrate_scores, state, ref, body))


@router.post("/calibrate_dataset")
async def calibrate_dataset(
    request: Request,
    state: StateDep,
    role_id: IdField,
    roi_id: IdField,
    recipe_id: OptIdField = None,
    model_key: OptIdField = None,
) -> CalibrationPublic:
    """Score the stored OK and NG images with the stored model and set its threshold."""
    ref = resolve(request, state, recipe_id, role_id, roi_id, model_key)
    return await _counted(state, blocking(service.calibrate_dataset, state, ref))


async def _counted(state: AppState, work: Awaitable[CalibrationPublic]) -> CalibrationPublic:
    """Failed calibrations count too (``bdi_calibrations_total{result="error"}``)."""
    try:
        return await work
    except Exception:
        state.metrics.calibrations.labels("error").inc()
        raise
