"""Options for models fitted on few OK images, stored with the model (:class:`ModelMeta`
fields ``feature_norm``, ``rotations``, ``top_share``) so that scoring does what fitting did.

After AnomalyDINO (Damm, Roth et al., "AnomalyDINO: Boosting Patch-based Few-shot Anomaly
Detection with DINOv2", WACV 2025):

- ``feature_norm``: patch features L2-normalised after aggregation, for the memory bank, the
  baseline, the shortlist and every query alike (:func:`prepare`, at fit and at score). On
  unit vectors the L2 distance is ``sqrt(2 - 2 cos)``: the paper's cosine distance, ranked
  the same.
- ``rotations``: each memory-bank image also joins the bank rotated by 45° steps
  (:func:`rotated_views`; 8 = every 45°, 1 = none). Only bank images: held-out calibration
  images are scored as they are, and the per-position baseline and the positional
  shortlist come from the unrotated images (parts reach the camera aligned).
- ``top_share``: the image score is the mean of the highest ``⌈top_share · P⌉`` of the
  ``P`` judged patch scores (distance less baseline) instead of their maximum; every patch
  is then searched exactly (:func:`score_top`).

And one of this project's: ``baseline_min``, the fewest leave-one-out images the
per-position baseline is taken from (:func:`engine.leave_one_out.position_baseline`; 16,
:data:`~engine.leave_one_out.BASELINE_MIN_IMAGES`, unless a fit asks for fewer: an option,
not a default, as measured in docs/FEWSHOT.md).

What the defaults are, and why (the few-shot table), is in docs/FEWSHOT.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

import cv2
import numpy as np

from engine.leave_one_out import BASELINE_MIN_IMAGES
from engine.meta import ModelMeta

if TYPE_CHECKING:
    from engine.config import EngineConfig
    from engine.patchcore import PatchCoreModel

ROTATION_STEP_DEG = 45.0
_NORM_EPS = 1e-12


class FewShot(NamedTuple):
    """A model's few-shot options; ``FewShot()`` is plain PatchCore."""

    feature_norm: bool = False
    rotations: int = 1  # views of each bank image, 45° apart (1: the image alone)
    top_share: float = 0.0  # image score = mean of the top share of patches; 0: the max
    baseline_min: int = BASELINE_MIN_IMAGES  # fewest leave-one-out images for a baseline

    @classmethod
    def of(cls, meta: ModelMeta) -> FewShot:
        return cls(meta.feature_norm, meta.rotations, meta.top_share, meta.baseline_min)


# what new fits on fewer than BDI_FEWSHOT_BELOW images get: the rotations and the top-1 %
# mean, not the normalisation (it lowered full-training image AUROC on tire by 0.07 and
# gained nothing beyond the draws' spread below 16 images; docs/FEWSHOT.md)
FEWSHOT_DEFAULT = FewShot(rotations=8, top_share=0.01)


def defaults(config: EngineConfig, n_images: int) -> FewShot:
    """The options a new fit on ``n_images`` OK images gets."""
    return FEWSHOT_DEFAULT if n_images < config.fewshot_below else FewShot()


def normalise(features: np.ndarray) -> np.ndarray:
    """Patch features ``(..., C)`` scaled to unit L2 norm (float32)."""
    f = np.asarray(features, dtype=np.float32)
    norms = np.linalg.norm(f, axis=-1, keepdims=True)
    return np.ascontiguousarray(f / np.maximum(norms, _NORM_EPS), dtype=np.float32)


def prepare(meta: ModelMeta, features: np.ndarray) -> np.ndarray:
    """Features ``(..., C)`` as the model's bank holds them: the one function applied at fit,
    append and score (normalising twice changes nothing)."""
    return normalise(features) if meta.feature_norm else features


def rotated_views(images: Sequence[np.ndarray], views: int) -> list[np.ndarray]:
    """Each image rotated about its centre by 45°, 90°, … (``views - 1`` of them, image
    by image), same size, borders reflected (no black corners the parts never show)."""
    out: list[np.ndarray] = []
    for image in images:
        h, w = image.shape[:2]
        for k in range(1, views):
            m = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), k * ROTATION_STEP_DEG, 1.0)
            out.append(cv2.warpAffine(image, m, (w, h), borderMode=cv2.BORDER_REFLECT_101))
    return out


def top_count(patches: int, share: float) -> int:
    """How many patches the top-share mean takes: ``⌈share · patches⌉``, at least one."""
    return max(1, min(patches, math.ceil(share * patches - 1e-9)))


def image_scores(judged: np.ndarray, share: float) -> np.ndarray:
    """Image scores of judged patch scores ``(B, P)``: the max (``share`` 0) or the mean of
    the top ``⌈share · P⌉``."""
    if not share or judged.shape[1] == 0:
        return judged.max(axis=1)
    k = top_count(judged.shape[1], share)
    top = np.partition(judged, judged.shape[1] - k, axis=1)[:, -k:]
    return top.mean(axis=1)


def score_top(model: PatchCoreModel, flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Image scores and exact patch distances ``(B, P)`` of features ``flat (B, P, C)``
    for a top-share model: every patch searched exactly (a mean of many patches has no
    cheap bound; the cost, per image, is the bank's size times ``P`` distances)."""
    b, p, c = flat.shape
    patch = model.index.exact(flat.reshape(-1, c)).reshape(b, p).astype(np.float32)
    judged = patch if model.baseline is None else patch - model.baseline.ravel()
    return image_scores(judged, model.meta.top_share).astype(np.float64), patch
