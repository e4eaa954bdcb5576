"""Training from OK images and calibration of the threshold."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, UploadFile

from edge.api import service
from edge.api.deps import BodyRef, FormRef, StateDep
from edge.api.metrics import ApiMetrics
from edge.api.routes.common import ERRORS, blocking, read_images, take_fit_slot, workers
from edge.api.schemas import CalibrateRequest, CalibrationPublic, FitResult

router = APIRouter(tags=["training"], responses=ERRORS)


@router.post("/fit_ok")
async def fit_ok(
    state: StateDep,
    ref: FormRef,
    mm_per_px: Annotated[float | None, Form(gt=0, allow_inf_nan=False)] = None,
    use_dataset: Annotated[bool, Form()] = False,
    images: Annotated[list[UploadFile] | None, File()] = None,
    target_frr: Annotated[float | None, Form(gt=0, lt=1, allow_inf_nan=False)] = None,
    mode: Annotated[Literal["fit", "append"], Form()] = "fit",
) -> FitResult:
    """Build a model from OK images: uploaded ones, or the stored OK dataset
    (``use_dataset=true``, at least ``BDI_MIN_OK_SAMPLES``); its threshold rejects at most
    ``target_frr`` of OK frames (default ``BDI_TARGET_FRR``). ``mode=append``: add the
    images to the stored model's memory bank instead, without a refit (a new version)."""
    settings = state.settings
    service.check_fit_request(settings, mode, target_frr, use_dataset, bool(images))
    take_fit_slot(state)
    try:
        if use_dataset:
            ok = await blocking(service.stored_ok, state.store, settings, ref, mode)
        else:
            ok = await read_images(images or [], settings.max_image_pixels)
        source = "dataset" if use_dataset else "upload"
        return await blocking(
            service.fit_ok, *workers(state), ref, ok, mm_per_px, source, mode, target_frr
        )
    finally:
        state.fit_slots.release()


@router.post("/calibrate_ng")
async def calibrate_ng(state: StateDep, ref: BodyRef, body: CalibrateRequest) -> CalibrationPublic:
    """Set the stored model's threshold from OK (and NG) image scores (``apply=balanced``),
    or the conformal one of its held-out OK scores (``apply=conformal``); the answer reports
    both (docs/THRESHOLDS.md)."""
    work = blocking(
        service.calibrate_scores,
        *workers(state),
        *(ref, body.ok_scores, body.ng_scores, body.apply, body.target_frr, body.per_part_rois),
    )
    return await _counted(state.metrics, work)


@router.post("/calibrate_dataset")
async def calibrate_dataset(state: StateDep, ref: FormRef) -> CalibrationPublic:
    """Score the stored OK and NG images with the stored model and set its threshold
    (the answer reports the conformal one beside it)."""
    return await _counted(state.metrics, blocking(service.calibrate_dataset, *workers(state), ref))


async def _counted(metrics: ApiMetrics, work: Awaitable[CalibrationPublic]) -> CalibrationPublic:
    """Failed calibrations count too (``bdi_calibrations_total{result="error"}``)."""
    try:
        return await work
    except Exception:
        metrics.calibrations.labels("error").inc()
        raise
