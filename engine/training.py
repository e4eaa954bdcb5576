"""Fitting a model from OK images, and adding OK images to one: the work behind
:meth:`engine.engine.Engine.fit` and :meth:`engine.engine.Engine.append`.

The OK-only threshold (``BDI_THRESHOLD_METHOD``):

- ``conformal`` (the default): a random share of the images is held out; the bank is fitted
  on the rest; the held-out images are scored exactly as production frames are, and the
  threshold is the conformal quantile of those scores (:mod:`engine.conformal`): an OK frame
  like them is rejected with probability at most ``BDI_TARGET_FRR``. The held-out images
  then join the bank (the greedy rule going on, :mod:`engine.incremental`). Rows only ever
  added, a frame's nearest-row distance can only fall, so every frame scores at most what
  it scored when the threshold was chosen: the bound still holds, now conservative. (With
  ``BDI_SCORE_REWEIGHT`` a score is not monotone in the bank, and they stay out.)
- ``percentile`` (legacy): every image in the bank, the threshold the ``BDI_SCORE_PERCENTILE``
  -th of their leave-one-out scores; no guarantee.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

from engine import calibration as calib
from engine import conformal, fewshot
from engine.backbone import INPUT_MULTIPLE
from engine.device import dtype_name
from engine.errors import EngineError
from engine.images import SQUASH_LIMIT, aspect_shape, check_mode, check_shape, common_mode, squash
from engine.incremental import extend_bank, reference_scores
from engine.leave_one_out import leave_one_out_neighbours, position_baseline, positional_shortlist
from engine.meta import ASPECT, AUTO, SQUARE
from engine.patchcore import ModelMeta, PatchCoreModel, build_memory, score

if TYPE_CHECKING:
    from engine.engine import Engine

Progress = Callable[[str, int, int], None]  # (stage, done, total)
# image indices (I,) -> the features of their rotated views (I * (rotations - 1), h, w, C)
Views = Callable[[np.ndarray], np.ndarray]
# training images re-scored leave-one-out: the per-position baseline and the shortlist
# (and, with the legacy method, the OK threshold)
CALIBRATION_IMAGES = 64


@dataclass(frozen=True)
class FitOutput:
    """What :meth:`Engine.fit` and :meth:`Engine.append` return: the model (not yet
    stored) and how it was made."""

    model: PatchCoreModel
    n_images: int
    n_patches: int
    timings_s: dict[str, float]
    # OK scores behind the threshold: the held-out images' (conformal), or leave-one-image-
    # out scores of training images (legacy); unbiased, unlike re-scoring training images
    # against their own bank
    ok_scores: np.ndarray = field(default_factory=lambda: np.empty(0))
    n_calibration: int = 0  # images held out for the threshold (conformal)


def held_out_count(n: int, alpha: float, share: float) -> int:
    """Images to hold out of ``n``: what ``alpha`` needs (or the share, if more), at most
    half of them (the bank needs the rest), none below 2."""
    if n < 2:
        return 0
    return min(max(conformal.needed(alpha), math.ceil(share * n)), n // 2)


def split(n: int, n_cal: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random (seeded) training and calibration image indices: which image is held out
    does not depend on its content or its place in the list."""
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[n_cal:]), np.sort(order[:n_cal])


def fit(
    engine: Engine,
    images: Sequence[np.ndarray],
    mm_per_px: float | None,
    coreset_rate: float | None,
    progress: Progress,
    target_frr: float | None = None,
) -> FitOutput:
    if not images:
        raise EngineError("no OK images to train from")
    s = engine.config
    mode = common_mode(images)  # before any work: one camera type per model
    shape = input_shape(engine, images)  # and one crop shape for an "aspect" model
    bb = engine.backbone(s.backbone, shape or s.image_size)
    dtype = engine.spec.dtype  # recorded in the model, which is scored in it from then on
    options = fewshot.defaults(s, len(images))
    t0 = time.perf_counter()
    feats = engine.embed(images, bb, shape or s.image_size, progress, dtype)
    embed_s = time.perf_counter() - t0

    def views(picked: np.ndarray) -> np.ndarray:
        rotated = fewshot.rotated_views([images[i] for i in picked], options.rotations)
        return engine.embed(rotated, bb, shape or s.image_size, progress, dtype)

    meta = ModelMeta(
        backbone=bb.info.name, backbone_weights=engine.weights_fingerprint(bb),
        image_size=s.image_size, grid=feats.shape[1:3], feature_dim=feats.shape[3],
        mm_per_px=mm_per_px, coreset_rate=s.coreset_rate if coreset_rate is None else coreset_rate,
        n_train_images=0, n_patches=0, memory_bank=0, compute_dtype=dtype_name(dtype),
        input_mode=SQUARE if shape is None else ASPECT, input_shape=shape, channel_mode=mode,
        **options._asdict(),
    )  # fmt: skip
    out = fit_embedded(engine, feats, views, meta, target_frr, progress)
    out.timings_s["embed_s"] = embed_s
    out.timings_s["fit_s"] += embed_s
    return out


def fit_embedded(
    engine: Engine,
    feats: np.ndarray,
    views: Views,
    meta: ModelMeta,
    target_frr: float | None,
    progress: Progress,
) -> FitOutput:
    """The model of the OK images' backbone features ``feats (N, h, w, C)``, fitted with
    ``meta``'s options (:mod:`engine.fewshot`). ``views(idx)``: the features of the
    rotated views of images ``idx`` (``meta.rotations - 1`` per image, image by image),
    asked only when the model has rotations."""
    s = engine.config
    alpha = s.target_frr if target_frr is None else target_frr
    t1 = time.perf_counter()
    feats = fewshot.prepare(meta, feats)
    n_cal = held_out_count(len(feats), alpha, s.calibration_share)
    if s.threshold_method != "conformal":
        n_cal = 0
    train, cal = split(len(feats), n_cal, s.seed)
    rotated = _views(meta, views, train)  # only bank images are rotated
    model, loo_ok, timings = fit_bank(engine, feats[train], meta, progress, rotated)
    t2 = time.perf_counter()
    if n_cal:
        no_maps = np.zeros(n_cal, dtype=bool)
        ok = score(model, feats[cal], s.score_reweight, no_maps).image
        model.calibration = calib.from_conformal(ok, alpha, s.score_percentile)
        if not s.score_reweight:  # rows only added: every frame scores at most what it did
            joining = _with_views(feats[cal], _views(meta, views, cal))
            model = _extend(engine, model, joining, held_out=True, progress=progress, images=n_cal)
    else:
        ok = loo_ok
        if len(ok):
            model.calibration = calib.from_ok(ok, s.score_percentile)
    t3 = time.perf_counter()
    n_img, h, w, _ = feats.shape
    timings.update({"calibrate_s": t3 - t2, "fit_s": t3 - t1})
    return FitOutput(model, n_img, n_img * h * w, timings, ok, n_cal)


def input_shape(engine: Engine, images: Sequence[np.ndarray]) -> tuple[int, int] | None:
    """The backbone input ``(H, W)`` of an "aspect" model fitted on ``images`` (sized by
    ``engine.aspect_sizing``), or None for a square one: ``BDI_INPUT_MODE`` ``square``,
    or ``auto`` where a square input squashes them by at most :data:`SQUASH_LIMIT`."""
    s = engine.config
    if s.input_mode == SQUARE or (s.input_mode == AUTO and squash(images) <= SQUASH_LIMIT):
        return None
    return aspect_shape(images, s.image_size, INPUT_MULTIPLE[s.backbone], engine.aspect_sizing)


def _views(meta: ModelMeta, views: Views, picked: np.ndarray) -> np.ndarray | None:
    """The rotated views of images ``picked``, prepared as the bank holds them (None
    without rotations)."""
    if meta.rotations <= 1 or not len(picked):
        return None
    return fewshot.prepare(meta, views(picked))


def _with_views(feats: np.ndarray, rotated: np.ndarray | None) -> np.ndarray:
    return feats if rotated is None else np.concatenate([feats, rotated])


def fit_bank(
    engine: Engine,
    feats: np.ndarray,
    meta: ModelMeta,
    progress: Progress,
    rotated: np.ndarray | None = None,
) -> tuple[PatchCoreModel, np.ndarray, dict[str, float]]:
    """Memory bank, baseline and shortlist of ``feats (N, h, w, C)``; the leave-one-out
    image scores of up to CALIBRATION_IMAGES of them (baseline subtracted).

    ``rotated (N * V, h, w, C)``: the images' rotated views, ``V`` per image, image by image
    (:mod:`engine.fewshot`): bank rows too, but the baseline and the shortlist come from the
    unrotated images (each scored without its own views), as parts reach the camera aligned.
    """
    s = engine.config
    n_img, h, w, c = feats.shape
    bank = _with_views(feats, rotated)
    index, ids, timing = build_memory(
        bank.reshape(-1, c), meta.coreset_rate, s.knn_mode, s.knn_ivf_nprobe,
        s.coreset_projection_dim, s.seed, engine.spec.device, engine.spec.is_cuda,
        lambda done, total: progress("coreset", done, total),
    )  # fmt: skip
    loo = np.empty((0, h * w))
    shortlist = None
    if n_img >= 2:
        pick = np.linspace(0, n_img - 1, min(n_img, CALIBRATION_IMAGES)).round().astype(int)
        source = ids // (h * w)
        per_image = 1
        if rotated is not None:  # a view's rows belong to the image it was rotated from
            per_image = max(1, len(rotated) // n_img)
            source = np.where(source < n_img, source, (source - n_img) // per_image)
        # re-number so that bank rows of picked image j carry label j
        remap = np.full(n_img, -1)
        remap[pick] = np.arange(len(pick))
        loo, nearest = leave_one_out_neighbours(
            index, feats[pick].reshape(len(pick), h * w, c), remap[source], k=16 * per_image
        )
        if s.knn_shortlist:
            shortlist = positional_shortlist(nearest.reshape(-1, h, w), s.knn_shortlist)
    loo_grid = loo.reshape(-1, h, w)
    baseline = position_baseline(loo_grid, meta.baseline_min) if s.position_norm else None
    meta = replace(
        meta, n_train_images=n_img, n_patches=len(bank) * h * w, memory_bank=len(ids),
        baseline_images=0 if baseline is None else len(loo), coverage_radius=timing.radius,
    )  # fmt: skip
    model = PatchCoreModel(meta=meta, index=index, baseline=baseline, shortlist=shortlist)
    # the same images scored the way inference will score (baseline subtracted); they
    # helped set the baseline, so these run low
    judged = loo - (0.0 if baseline is None else baseline.ravel())
    ok = fewshot.image_scores(judged, meta.top_share) if len(loo) else loo
    timings = {"coreset_s": timing.coreset_s, "index_s": timing.index_s}
    return model, np.asarray(ok, dtype=np.float64).ravel(), timings


def _extend(
    engine: Engine,
    model: PatchCoreModel,
    feats: np.ndarray,
    held_out: bool,
    progress: Progress,
    images: int | None = None,
) -> PatchCoreModel:
    s = engine.config
    return extend_bank(
        model, feats, projection_dim=s.coreset_projection_dim, seed=s.seed,
        device=engine.spec.device, held_out=held_out, images=images,
        progress=lambda done, total: progress("append", done, total),
    ).model  # fmt: skip


def append(
    engine: Engine, model: PatchCoreModel, images: Sequence[np.ndarray], progress: Progress
) -> FitOutput:
    """``model`` with ``images`` (OK) in its memory bank, and its threshold recomputed.

    With a conformal calibration, a random share of the images (what the calibration share
    gives, none of one image) is scored against the bank rows that no calibration image gave,
    after the others joined them: new calibration scores exchangeable with a frame scored by
    that bank. The earlier calibration scores were taken against fewer rows, so they are at
    least what that bank would give them: the threshold from all of them keeps its bound,
    conservatively. Then the held-out ones join too. A legacy or NG-calibrated threshold is
    kept as it is (rows only added, it can only reject fewer OK frames).
    """
    if not images:
        raise EngineError("no OK images to add")
    check_mode(model.meta.channel_mode, common_mode(images), "the added images are")
    for image in images:
        check_shape(model.meta.input_shape, image)
    s = engine.config
    bb = engine.backbone_for(model)
    t0 = time.perf_counter()
    meta, dtype = model.meta, engine.model_dtype(model)
    feats = fewshot.prepare(meta, engine.embed(images, bb, meta.input_hw, progress, dtype))

    def views(picked: np.ndarray) -> np.ndarray:  # the model's rotations, as at its fit
        rotated = fewshot.rotated_views([images[i] for i in picked], meta.rotations)
        return engine.embed(rotated, bb, meta.input_hw, progress, dtype)

    t1 = time.perf_counter()
    cal_record = None if model.calibration is None else model.calibration.conformal
    n_cal = 0
    if cal_record is not None and not s.score_reweight and len(images) >= 2:
        n_cal = min(len(images) // 2, math.ceil(s.calibration_share * len(images)))
    train, cal = split(len(images), n_cal, s.seed)
    joining = _with_views(feats[train], _views(meta, views, train))
    out = _extend(engine, model, joining, held_out=False, progress=progress, images=len(train))
    new_scores = np.empty(0)
    if n_cal:
        assert cal_record is not None and model.calibration is not None
        new_scores = reference_scores(out, feats[cal])
        scores = np.concatenate([np.asarray(cal_record.scores), new_scores])
        joining = _with_views(feats[cal], _views(meta, views, cal))
        out = _extend(engine, out, joining, held_out=True, progress=progress, images=n_cal)
        previous = model.calibration
        if previous.method == conformal.METHOD:
            out.calibration = calib.from_conformal(scores, cal_record.alpha, previous.percentile)
        else:  # the applied threshold stays; the p-values get the new scores
            record = conformal.record(scores, cal_record.alpha)
            out.calibration = replace(previous, conformal=record)
    t2 = time.perf_counter()
    n_img, h, w, _ = feats.shape
    timings = {"embed_s": t1 - t0, "append_s": t2 - t1, "fit_s": t2 - t0}
    return FitOutput(out, n_img, n_img * h * w, timings, new_scores, n_cal)
