"""What the training images, each scored without its own patches, give a model.

Scored leave-one-out, training images behave like unseen OK parts: their patch distances
set the per-position OK baseline (:func:`position_baseline`), their nearest bank rows the
positional shortlist (:func:`positional_shortlist`), and their image scores the OK-only
threshold (in :meth:`engine.engine.Engine.fit`).
"""

from __future__ import annotations

import cv2
import numpy as np

from engine.knn import KnnIndex

# fewer leave-one-out images give too noisy a per-position baseline, unless a model asks for
# fewer (ModelMeta.baseline_min, the few-shot option; docs/FEWSHOT.md)
BASELINE_MIN_IMAGES = 16
BASELINE_PERCENTILE = 90.0
BASELINE_SIGMA = 1.0  # in token-grid cells


def leave_one_out_neighbours(
    index: KnnIndex, features: np.ndarray, bank_source: np.ndarray, k: int = 16
) -> tuple[np.ndarray, np.ndarray]:
    """Patch scores of training images, each scored without its own patches, and the bank
    row that gave each score: ``(N, P)`` distances and ``(N, P)`` row ids.

    ``features (N_img, P, C)``, ``bank_source (M,)`` = training image of each bank row.
    When all ``k`` neighbours come from the image itself, the k-th distance is used: a lower
    bound, so an OK threshold taken from these can only come out lower (stricter).
    """
    n_img, p, c = features.shape
    scores = np.empty((n_img, p))
    rows = np.empty((n_img, p), dtype=np.int64)
    for i in range(n_img):
        dist, ids = index.search(features[i], min(k, index.size), exact=True)
        other = bank_source[ids] != i
        first = np.where(other.any(axis=1), other.argmax(axis=1), dist.shape[1] - 1)
        scores[i] = dist[np.arange(p), first]
        rows[i] = ids[np.arange(p), first]
    return scores, rows


def positional_shortlist(neighbours: np.ndarray, size: int, radius: int = 1) -> np.ndarray:
    """Per grid position, the ``size`` bank rows most often nearest to OK patches at that
    position or within ``radius`` cells of it: ``(N, h, w)`` row ids -> ``(h*w, size)``.

    Parts reach the camera aligned, so an OK patch's nearest row is usually one that was
    nearest to other OK parts' patches around the same place (measured on the tire set:
    within one cell for 89 % of test patches). Shorter lists are padded with their first
    row (a repeat changes no minimum).
    """
    n, h, w = neighbours.shape
    padded = np.pad(neighbours, ((0, 0), (radius, radius), (radius, radius)), constant_values=-1)
    out = np.empty((h * w, size), dtype=np.int32)
    span = 2 * radius + 1
    for y in range(h):
        for x in range(w):
            pool = padded[:, y : y + span, x : x + span].ravel()
            rows, counts = np.unique(pool[pool >= 0], return_counts=True)
            pick = rows[np.argsort(-counts, kind="stable")][:size]
            out[y * w + x, : len(pick)] = pick
            out[y * w + x, len(pick) :] = pick[0]
    return out


def position_baseline(
    loo_patches: np.ndarray, min_images: int = BASELINE_MIN_IMAGES
) -> np.ndarray | None:
    """The per-position OK baseline ``(h, w)`` from leave-one-out patch scores ``(N, h, w)``
    (None below ``min_images`` images).

    Parts come to the camera aligned, so an OK part's patch distance depends on where the
    patch is: a specular highlight or an edge scores high on every part, at the same place.
    Subtracting what OK parts typically show there (a high percentile, lightly smoothed so
    one image cannot carve a hole) lets a defect elsewhere stand out. Measured on the tire
    set: image AUROC 0.671 -> 0.788 (docs/BENCHMARKS.md).
    """
    if len(loo_patches) < max(1, min_images):
        return None
    typical = np.percentile(loo_patches, BASELINE_PERCENTILE, axis=0).astype(np.float32)
    return cv2.GaussianBlur(typical, (0, 0), BASELINE_SIGMA)
