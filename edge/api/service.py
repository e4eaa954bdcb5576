"""The blocking work behind the endpoints: training, calibration, inference, history.

Handlers run these in a worker thread (never on the event loop). Each takes the store,
engine and instruments it uses, the model's reference and plain values, and returns an API
schema; domain errors propagate and are mapped to HTTP statuses by the app's error table.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Sequence
from typing import Literal, NamedTuple

import numpy as np

from configs.settings import Settings
from edge.api import fitting
from edge.api.diagnostics import Diagnostics
from edge.api.errors import BadRequest, BdiError
from edge.api.metrics import ApiMetrics
from edge.api.schemas import (
    Apply,
    CalibrationPublic,
    DatasetInferencePublic,
    FitResult,
    InferDatasetResult,
    InferencePublic,
    RegionPublic,
    RevisionPublic,
    RevisionsPublic,
)
from edge.api.thresholds import Choice, choose
from engine import Engine, Inference, PatchCoreModel
from engine.images import decode_image
from engine.metrics import auroc
from engine.provenance import Provenance
from engine.training import Progress
from store import ModelRef, ModelStore

# engine failures of one frame that mean "this model cannot score this image"
_REQUEST_ERRORS = {
    "GridMismatchError": (400, "token_grid_mismatch"),
    "NotFittedError": (400, "missing_memory"),
    "ChannelMismatchError": (422, "channel_mismatch"),
    "ShapeMismatchError": (422, "shape_mismatch"),
}


def decode(data: bytes, max_pixels: int) -> np.ndarray:
    """Upload bytes -> RGB; 415 for a non-PNG/JPEG, 413 past the pixel bound, else 400."""
    return decode_image(data, max_pixels)


def train(
    store: ModelStore,
    engine: Engine,
    metrics: ApiMetrics,
    diagnostics: Diagnostics,
    ref: ModelRef,
    images: Sequence[np.ndarray],
    mm_per_px: float | None,
    source: str,
    target_frr: float | None = None,
    progress: Progress = fitting.quiet,
) -> FitResult:
    locked = store.check_mm_per_px(ref.recipe_id, mm_per_px)  # 409 before the work
    mm = mm_per_px if mm_per_px is not None else locked
    started = time.perf_counter()
    metrics.fits_running.inc()
    try:
        fit = engine.fit(images, mm_per_px=mm, target_frr=target_frr, progress=progress)
        progress("save", 0, 1)
        saved = store.save_model(ref, fit.model)
    except Exception as exc:
        metrics.trainings.labels("error").inc()
        diagnostics.log(
            "training", level="error", **ref.ids(), n_images=len(images), source=source,
            result="error", exception=type(exc).__name__, message=str(exc),
            duration_ms=round((time.perf_counter() - started) * 1e3, 3),
        )  # fmt: skip
        raise
    finally:
        metrics.fits_running.dec()
    seconds = time.perf_counter() - started
    metrics.trainings.labels("ok").inc()
    metrics.training_seconds.observe(seconds)
    meta = fit.model.meta
    diagnostics.log(
        "training", **ref.ids(), n_images=fit.n_images, n_patches=fit.n_patches,
        memory_bank=meta.memory_bank, model_version=saved.version, threshold=fit.model.threshold,
        source=source, result="ok", duration_ms=round(seconds * 1e3, 3), timings_s=fit.timings_s,
    )  # fmt: skip
    return fitting.fit_result(ref, fit, saved, source, engine.config.calibration_share)


Mode = Literal["fit", "append"]


def check_fit_request(
    settings: Settings, mode: Mode, target_frr: float | None, use_dataset: bool, uploads: bool
) -> None:
    """What ``POST /fit_ok`` and ``POST /jobs/train`` refuse before any work (400)."""
    if use_dataset and uploads:
        raise BadRequest("send images or use_dataset=true, not both", code="ambiguous_source")
    if mode == "append" and target_frr is not None:
        raise BadRequest(
            "target_frr chooses a new model's threshold; an append keeps the stored model's "
            "target (recalibrate with /calibrate_ng to change it)",
            code="target_frr_with_append",
        )
    if not use_dataset and settings.train_dataset_only:
        raise BadRequest(
            "uploads are disabled for training (BDI_TRAIN_DATASET_ONLY=1): store the images "
            "with /datasets/upload and train with use_dataset=true",
            code="train_dataset_only",
        )


def check_ok_count(settings: Settings, n_ok: int, mode: Mode) -> None:
    """Enough stored OK images to train (``BDI_MIN_OK_SAMPLES``) or to append (one)."""
    need = 1 if mode == "append" else settings.min_ok_samples
    if n_ok < need:
        why = "to append" if mode == "append" else "(BDI_MIN_OK_SAMPLES)"
        raise BadRequest(
            f"{n_ok} stored OK images, at least {need} needed {why}", code="missing_ok_samples"
        )


def stored_ok(store: ModelStore, settings: Settings, ref: ModelRef, mode: Mode) -> list[np.ndarray]:
    """The stored OK dataset of ``ref``, when it has enough images for ``mode``."""
    ok = store.datasets.load(ref, "ok")
    check_ok_count(settings, len(ok), mode)
    return ok


def fit_ok(
    store: ModelStore,
    engine: Engine,
    metrics: ApiMetrics,
    diagnostics: Diagnostics,
    ref: ModelRef,
    images: Sequence[np.ndarray],
    mm_per_px: float | None,
    source: str,
    mode: Mode,
    target_frr: float | None,
    progress: Progress = fitting.quiet,
) -> FitResult:
    """A new model from OK ``images`` (``mode=fit``), or them added to the stored one."""
    if mode == "append":
        return fitting.append(
            store, engine, metrics, diagnostics, ref, images, mm_per_px, source, progress
        )
    return train(
        store, engine, metrics, diagnostics, ref, images, mm_per_px, source, target_frr, progress
    )


def _store_calibration(
    store: ModelStore,
    metrics: ApiMetrics,
    diagnostics: Diagnostics,
    ref: ModelRef,
    choice: Choice,
    source: str,
) -> CalibrationPublic:
    calibration = choice.calibration
    saved = store.save_calibration(ref, calibration)
    metrics.calibrations.labels("ok").inc()
    data = calibration.to_dict()
    diagnostics.log(
        "calibration", **ref.ids(), model_version=saved.version, threshold=calibration.threshold,
        method=calibration.method, n_ok=calibration.ok.n,
        n_ng=calibration.ng.n if calibration.ng else 0, source=source, applied=choice.applied,
    )  # fmt: skip
    data.pop("created_at", None)
    data["calibration_version"] = calibration.version
    report = {
        "applied": choice.applied,
        "conformal": choice.conformal,
        "balanced": choice.balanced,
        "warnings": choice.warnings,
    }
    return CalibrationPublic.model_validate(
        {**data, **report, **ref.ids(), "model_version": saved.version, "source": source}
    )


def calibrate_scores(
    store: ModelStore,
    engine: Engine,
    metrics: ApiMetrics,
    diagnostics: Diagnostics,
    ref: ModelRef,
    ok_scores: list[float],
    ng_scores: list[float],
    apply: Apply = "balanced",
    target_frr: float | None = None,
    per_part_rois: int = 1,
) -> CalibrationPublic:
    """The threshold ``apply`` asks for (:func:`edge.api.thresholds.choose`), stored."""
    model = store.load_model(ref)
    choice = choose(engine, model, ok_scores, ng_scores, apply, target_frr, per_part_rois)
    return _store_calibration(store, metrics, diagnostics, ref, choice, "scores")


def calibrate_dataset(
    store: ModelStore,
    engine: Engine,
    metrics: ApiMetrics,
    diagnostics: Diagnostics,
    ref: ModelRef,
) -> CalibrationPublic:
    """Score the stored OK and NG images and set the threshold from both.

    OK images the model was trained on score lower than unseen ones, which can only pull
    the threshold down: more false rejects, never a missed defect.
    """
    model = store.load_model(ref)
    ok = store.datasets.load(ref, "ok")
    ng = store.datasets.load(ref, "ng")
    if not ok:
        raise BadRequest("no stored OK images to calibrate with", code="missing_ok_samples")
    ok_scores = engine.image_scores(model, ok).tolist()
    ng_scores = engine.image_scores(model, ng).tolist() if ng else []
    choice = choose(engine, model, ok_scores, ng_scores)
    return _store_calibration(store, metrics, diagnostics, ref, choice, "dataset")


def regions_public(result: Inference) -> list[RegionPublic]:
    """The regions as the Kafka verdict has them too (:meth:`engine.regions.Region.to_dict`)."""
    return [RegionPublic.model_validate(r.to_dict()) for r in result.regions]


def infer_model(store: ModelStore, ref: ModelRef, mm_per_px: float | None) -> PatchCoreModel:
    """The model ``/infer`` scores with (409 for a scale other than the recipe's lock)."""
    if mm_per_px is not None:  # the recipe's scale is locked: another one is a 409
        store.check_mm_per_px(ref.recipe_id, mm_per_px)
    return store.load_model(ref)


def inference_public(
    engine: Engine,
    metrics: ApiMetrics,
    diagnostics: Diagnostics,
    ref: ModelRef,
    result: Inference,
    image_sha256: str,
    heatmap: bool,
) -> InferencePublic:
    """One scored upload as ``/infer`` answers it (400 / 422 when the model cannot score it)."""
    if result.verdict == "ERROR" and result.error_kind in _REQUEST_ERRORS:
        # over REST the caller is told why, as an error status, not as a verdict
        raise BdiError(result.error or "", *_REQUEST_ERRORS[result.error_kind])
    metrics.inferences.labels(result.verdict).inc()
    diagnostics.log(
        "inference", **ref.ids(), verdict=result.verdict, score=result.score,
        threshold=result.threshold, p_value=result.p_value, model_version=result.model_version,
        calibration_version=result.calibration_version, image_sha256=image_sha256,
        regions=len(result.regions), error=result.error, timings_ms=result.timings_ms,
    )  # fmt: skip
    png = result.heatmap_png if heatmap else None
    provenance = Provenance.of(engine.config)
    return InferencePublic(
        verdict=result.verdict,
        score=result.score,
        threshold=result.threshold,
        regions=regions_public(result),
        p_value=result.p_value,
        model_version=result.model_version,
        calibration_version=result.calibration_version,
        image_sha256=image_sha256,
        code_version=provenance.code_version,
        settings_fingerprint=provenance.settings_fingerprint,
        error=result.error,
        heatmap_png_base64=base64.b64encode(png).decode() if png else None,
        random_backbone=result.random_backbone,
        timings_ms={k: round(v, 3) for k, v in result.timings_ms.items()},
    )


class DatasetFrames(NamedTuple):
    """The stored images ``/infer_dataset`` scores: the model, (label, name), the images."""

    model: PatchCoreModel
    names: list[tuple[str, str]]
    images: list[np.ndarray]


def dataset_frames(
    store: ModelStore, ref: ModelRef, label: str | None, max_pixels: int
) -> DatasetFrames:
    model = store.load_model(ref)
    listing = store.datasets.list_images(ref, label)
    names = [(lab, item.name) for lab in ("ok", "ng") for item in listing.get(lab, [])]
    if not names:
        raise BadRequest("no stored images to score", code="empty_dataset")
    images = [decode(store.datasets.read(ref, lab, name), max_pixels) for lab, name in names]
    return DatasetFrames(model, names, images)


def dataset_result(
    metrics: ApiMetrics, ref: ModelRef, frames: DatasetFrames, results: Sequence[Inference]
) -> InferDatasetResult:
    model, names = frames.model, frames.names
    rows = [
        DatasetInferencePublic(
            name=name,
            label=lab,  # type: ignore[arg-type]
            verdict=r.verdict,
            score=r.score,
            threshold=r.threshold,
            regions=regions_public(r),
            p_value=r.p_value,
            error=r.error,
        )  # fmt: skip
        for (lab, name), r in zip(names, results, strict=True)
    ]
    counts: dict[str, int] = {}
    for r in results:
        counts[r.verdict] = counts.get(r.verdict, 0) + 1
        metrics.inferences.labels(r.verdict).inc()
    labels = [1 if lab == "ng" else 0 for lab, _ in names]
    scored = [r.score for r in results]
    area = None
    if 0 < sum(labels) < len(labels) and all(s is not None for s in scored):
        area = float(auroc(np.asarray(labels), np.asarray(scored, dtype=np.float64)))
    return InferDatasetResult(
        **ref.ids(),
        model_version=model.version,
        calibration_version=model.calibration_version,
        threshold=model.threshold,
        results=rows,
        counts=counts,
        auroc=area,
    )


def revisions(store: ModelStore, ref: ModelRef) -> RevisionsPublic:
    items = [RevisionPublic(**r.to_dict()) for r in store.revisions(ref)]
    current = next((r.revision for r in items if r.current), None)
    return RevisionsPublic(**ref.ids(), current=current, revisions=items)


def rollback(
    store: ModelStore, diagnostics: Diagnostics, ref: ModelRef, revision: str
) -> RevisionsPublic:
    """Make a stored revision current again (404 for one the store lacks)."""
    saved = store.rollback(ref, revision)
    diagnostics.log("rollback", **ref.ids(), revision=saved.revision, model_version=saved.version)
    return revisions(store, ref)
