"""What ``POST /fit_ok`` answers, and its ``mode=append``: OK images added to the stored
model's memory bank without a refit (:func:`engine.training.append`), stored atomically as
a new version.

An append is refused (409) when the stored model was made otherwise than this engine embeds
images: another backbone, backbone weights or input size (``append_mismatch``), or another
``mm_per_px`` than the request's or the recipe's locked one (``mm_per_px_mismatch``). The
``bdi train --append`` command makes the same checks (:func:`check_append`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from edge.api.errors import BdiError
from edge.api.schemas import ConformalPublic, FitResult
from store import ModelRef, ModelStore, SavedModel
from store.errors import ConflictError
from store.recipes import MM_REL_TOL

if TYPE_CHECKING:
    from edge.api.diagnostics import Diagnostics
    from edge.api.metrics import ApiMetrics
    from engine import Engine
    from engine.patchcore import PatchCoreModel
    from engine.training import FitOutput, Progress


def quiet(stage: str, done: int, total: int) -> None:
    """A progress callback that reports nothing (``engine.training.Progress``)."""


class AppendMismatch(ConflictError):
    """The stored model cannot take images embedded as this engine embeds them."""


class ModelChanged(ConflictError):
    """The stored model changed while images were being added to it."""


@contextmanager
def http_errors() -> Iterator[None]:
    """The append refusals as the API answers them (409 with their own codes; the CLI
    reports them as they are, ``bdi: error: ...``)."""
    try:
        yield
    except AppendMismatch as exc:
        raise BdiError(exc.message, 409, "append_mismatch") from None
    except ModelChanged as exc:
        raise BdiError(exc.message, 409, "model_changed") from None


def check_append(
    store: ModelStore,
    engine: Engine,
    ref: ModelRef,
    model: PatchCoreModel,
    mm_per_px: float | None,
) -> float | None:
    """Refuse an append the stored ``model`` cannot take; returns the model's scale.

    :class:`AppendMismatch`: the backbone, its weights or the input size differ from this
    engine's settings (new patches would not be comparable with the bank's rows).
    :class:`~store.errors.ConflictError`: ``mm_per_px`` differs from the recipe's locked
    value or from the model's own (region areas in mm² would change meaning)."""
    meta, cfg = model.meta, engine.config
    why = None
    if meta.backbone != cfg.backbone or meta.image_size != cfg.image_size:
        why = (
            f"the stored model of {ref.describe()} was trained with {meta.backbone}@"
            f"{meta.image_size}, this server embeds with {cfg.backbone}@{cfg.image_size} "
            "(BDI_BACKBONE, BDI_IMAGE_SIZE)"
        )
    else:
        weights = engine.weights_fingerprint(engine.backbone())
        if weights != meta.backbone_weights:
            why = (
                f"the stored model of {ref.describe()} was trained with {meta.backbone} weights "
                f"{meta.backbone_weights}, this server has {weights} (BDI_BACKBONE_WEIGHTS)"
            )
    if why is not None:
        raise AppendMismatch(f"cannot append: {why}; train a new model instead")
    locked = store.check_mm_per_px(ref.recipe_id, mm_per_px)
    have = meta.mm_per_px
    for value in (mm_per_px, locked):
        if (
            value is not None
            and have is not None
            and not math.isclose(value, have, rel_tol=MM_REL_TOL)
        ):
            raise ConflictError(
                f"mm_per_px {value:g} differs from {have:g}, the stored model's: images of "
                "another scale cannot be appended"
            )
    return have


def extend(
    store: ModelStore,
    engine: Engine,
    ref: ModelRef,
    model: PatchCoreModel,
    images: Sequence[Any],
    progress: Progress = quiet,
) -> tuple[FitOutput, SavedModel]:
    """``images`` added to ``model`` and stored as the new current version, unless the
    stored model changed meanwhile (:class:`ModelChanged`: nothing is stored)."""
    fit = engine.append(model, images, progress)
    progress("save", 0, 1)
    return fit, save(store, ref, fit.model, model)


def save(
    store: ModelStore, ref: ModelRef, model: PatchCoreModel, previous: PatchCoreModel | None
) -> SavedModel:
    """Store ``model``; when it is ``previous`` with images added, only while ``previous``
    is still the stored model (:class:`ModelChanged` otherwise: nothing is stored)."""
    if previous is None:
        return store.save_model(ref, model)
    with store.lock(ref.recipe_id):
        now = store.load_model(ref)
        if (now.version, now.calibration_version) != (
            previous.version,
            previous.calibration_version,
        ):
            raise ModelChanged(
                f"the stored model of {ref.describe()} changed while the images were being "
                "added (another training, append or calibration); nothing was stored: try "
                "again"
            )
        return store.save_model(ref, model)


def threshold_fields(fit: FitOutput, share: float, mode: str) -> dict[str, Any]:
    """The ``FitResult`` fields of the model's threshold: its method, the conformal choice,
    and a warning when the false-reject bound is not guaranteed."""
    cal = fit.model.calibration
    record = None if cal is None else cal.conformal
    out: dict[str, Any] = {
        "calibration_method": None if cal is None else cal.method,
        "target_frr": None if record is None else record.alpha,
        "conformal": None,
        "n_calibration": fit.n_calibration,
        "warnings": [],
    }
    if record is None:
        return out
    out["conformal"] = ConformalPublic(
        alpha=record.alpha, target_frr=record.alpha, per_part_rois=1, n=record.n, k=record.k,
        bound=record.bound, guaranteed=record.guaranteed, needed=record.needed,
        threshold=record.threshold, ng_miss_rate=None,
    )  # fmt: skip
    if not record.guaranteed:
        what = (
            f"the false-reject rate {record.alpha:g} is not guaranteed: {record.n} held-out OK "
            f"scores, {record.needed} needed"
        )
        if mode == "append":
            more = math.ceil((record.needed - record.n) / share)
            out["warnings"].append(
                f"{what}; append about {more} more OK images (in batches of 2 or more, a "
                f"share BDI_CALIBRATION_SHARE of each is held out), or train with at least "
                f"{2 * record.needed} OK images"
            )
        else:
            out["warnings"].append(
                f"{what}; train with at least {2 * record.needed} OK images (at most half "
                "are held out)"
            )
    return out


def cli_summary(fit: FitOutput, share: float, previous: PatchCoreModel | None) -> dict[str, Any]:
    """What ``bdi train`` prints of the threshold and of an append."""
    mode = "fit" if previous is None else "append"
    facts = threshold_fields(fit, share, mode)
    record = facts["conformal"]
    return {
        "mode": mode,
        "method": facts["calibration_method"],
        "alpha": facts["target_frr"],
        "n_calibration": None if record is None else record.n,
        "guaranteed": None if record is None else record.guaranteed,
        "needed": None if record is None else record.needed,
        "added_rows": None
        if previous is None
        else fit.model.meta.memory_bank - previous.meta.memory_bank,
        "previous_version": None if previous is None else previous.version,
        "warnings": facts["warnings"],
    }


def fit_result(
    ref: ModelRef,
    fit: FitOutput,
    saved: SavedModel,
    source: str,
    share: float,
    previous: PatchCoreModel | None = None,
) -> FitResult:
    """The answer of a fit (``previous`` None) or of an append to ``previous``."""
    meta = fit.model.meta
    mode: Literal["fit", "append"] = "fit" if previous is None else "append"
    return FitResult(
        **ref.ids(),
        model_version=saved.version,
        revision=saved.revision,
        n_images=fit.n_images,
        n_patches=fit.n_patches,
        memory_bank=meta.memory_bank,
        coreset_rate=meta.coreset_rate,
        backbone=meta.backbone,
        image_size=meta.image_size,
        grid=meta.grid,
        mm_per_px=saved.mm_per_px,
        threshold=fit.model.threshold,
        calibration_version=fit.model.calibration_version,
        timings_s={k: round(v, 4) for k, v in fit.timings_s.items()},
        source="dataset" if source == "dataset" else "upload",
        mode=mode,
        added_rows=None if previous is None else meta.memory_bank - previous.meta.memory_bank,
        previous_model_version=None if previous is None else previous.version,
        **threshold_fields(fit, share, mode),
    )


def append(
    store: ModelStore,
    engine: Engine,
    metrics: ApiMetrics,
    diagnostics: Diagnostics,
    ref: ModelRef,
    images: Sequence[np.ndarray],
    mm_per_px: float | None,
    source: str,
    progress: Progress = quiet,
) -> FitResult:
    """``POST /fit_ok`` with ``mode=append``: 400 ``missing_memory`` without a stored model,
    409 as :func:`check_append` says, else the new version's ``FitResult``."""
    model = store.load_model(ref)
    with http_errors():
        check_append(store, engine, ref, model, mm_per_px)
    started = time.perf_counter()
    metrics.fits_running.inc()
    try:
        with http_errors():
            fit, saved = extend(store, engine, ref, model, images, progress)
    except Exception as exc:
        metrics.trainings.labels("error").inc()
        diagnostics.log(
            "training", level="error", **ref.ids(), mode="append", n_images=len(images),
            source=source, result="error", exception=type(exc).__name__, message=str(exc),
            duration_ms=round((time.perf_counter() - started) * 1e3, 3),
        )  # fmt: skip
        raise
    finally:
        metrics.fits_running.dec()
    seconds = time.perf_counter() - started
    metrics.trainings.labels("ok").inc()
    metrics.training_seconds.observe(seconds)
    diagnostics.log(
        "training", **ref.ids(), mode="append", n_images=fit.n_images,
        memory_bank=fit.model.meta.memory_bank, previous_model_version=model.version,
        model_version=saved.version, threshold=fit.model.threshold, source=source,
        result="ok", duration_ms=round(seconds * 1e3, 3), timings_s=fit.timings_s,
    )  # fmt: skip
    return fit_result(ref, fit, saved, source, engine.config.calibration_share, model)
