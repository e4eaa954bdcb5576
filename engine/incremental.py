"""Adding OK images to a fitted memory bank without a refit.

The greedy k-center rule goes on from the bank's rows (:func:`engine.coreset.continue_coreset`):
each step adds the new patch farthest from every row, old and new, the same rule a full
fit applies to all patches at once. The index gains the rows (an IVF index keeps its lists),
the positional shortlist gains the new rows where they came from, the baseline stays.

A model never changes in place: each call returns a new one, with a new version.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch

from engine.coreset import continue_coreset
from engine.fewshot import image_scores, prepare
from engine.knn import KnnIndex
from engine.patchcore import ModelMeta, PatchCoreModel

# at most this share of a position's shortlist is given to rows added after the fit
SHORTLIST_NEW_SHARE = 0.25


class Extension(NamedTuple):
    model: PatchCoreModel
    added_rows: int
    radius: float  # coverage radius of the new patches by the whole bank (projected space)
    seconds: float


def rows_for(meta: ModelMeta, n_new: int) -> int:
    """Bank rows the greedy rule adds for ``n_new`` new patches: as many as bring the bank
    to the fit's rate of all the patches (a full fit's size), at least one."""
    target = int((meta.n_patches + n_new) * meta.coreset_rate)
    return max(1, min(n_new, target - meta.memory_bank))


def extend_bank(
    model: PatchCoreModel,
    features: np.ndarray,
    *,
    projection_dim: int,
    seed: int,
    device: torch.device,
    held_out: bool,
    progress: Callable[[int, int], None] | None = None,
    images: int | None = None,
) -> Extension:
    """``model`` with the patches ``features (N, h, w, C)`` of N more OK images covered.

    As many rows are added as bring the bank to the coreset rate of all patches, and then
    more while a new patch is farther from every row than the bank's coverage radius (new
    content is covered as well as the images it was fitted on: a false reject appended
    scores as a training image does).
    ``held_out``: the images are calibration images, whose scores were taken without them
    (their rows are flagged, so that later calibration scores leave them out too).
    ``images``: how many OK images ``features`` are (fewer than N when they include their
    rotated views, :mod:`engine.fewshot`); None: N. Features are brought to the model's
    form (:func:`engine.fewshot.prepare`).
    """
    t0 = time.perf_counter()
    n_img, h, w, c = features.shape
    meta = model.meta
    if (h, w) != tuple(meta.grid) or c != meta.feature_dim:
        raise ValueError(f"features {h}x{w}x{c} do not fit the model's grid {meta.grid}x{c}")
    flat = np.ascontiguousarray(prepare(meta, features).reshape(-1, c), dtype=np.float32)
    k = rows_for(meta, len(flat))
    bank = model.index.bank()
    if k < len(flat):
        coreset = continue_coreset(
            torch.from_numpy(flat).to(device), torch.from_numpy(bank).to(device), k,
            projection_dim, seed, progress, radius=meta.coverage_radius,
        )  # fmt: skip
        picked, radius = coreset.indices.cpu().numpy(), coreset.radius
    else:
        picked, radius = np.arange(len(flat)), 0.0
    index = model.index.add(flat[picked])
    flags = np.zeros(len(bank), bool) if model.held_out is None else model.held_out
    flags = np.concatenate([flags, np.full(len(picked), held_out)])
    shortlist = None
    if model.shortlist is not None:
        positions = picked % (h * w)
        shortlist = extend_shortlist(model.shortlist, (h, w), positions, len(bank))
    old_radius = meta.coverage_radius
    new_meta = dataclasses.replace(
        meta,
        n_train_images=meta.n_train_images + (n_img if images is None else images),
        n_patches=meta.n_patches + len(flat),
        memory_bank=index.size,
        coverage_radius=None if old_radius is None else max(old_radius, radius),
        created_at=time.time(),
    )
    extended = PatchCoreModel(
        meta=new_meta, index=index, calibration=model.calibration, baseline=model.baseline,
        shortlist=shortlist, held_out=flags if flags.any() else None,
    )  # fmt: skip
    return Extension(extended, len(picked), radius, time.perf_counter() - t0)


def extend_shortlist(
    shortlist: np.ndarray, grid: tuple[int, int], positions: np.ndarray, first_row: int
) -> np.ndarray:
    """The positional shortlist ``(h*w, K)`` with new bank rows (ids ``first_row + i``,
    taken from grid cells ``positions (R,)``) put at their cell and the 8 around it, in
    the place of the entries last in each list (the least often nearest), at most
    ``SHORTLIST_NEW_SHARE`` of a list. Parts come aligned, so a row taken at a cell is a
    likely neighbour of patches there; a shortlist only bounds the search, never decides
    a score, so a missing row costs time, not a result."""
    h, w = grid
    out = shortlist.copy()
    size = out.shape[1]
    room = max(1, int(size * SHORTLIST_NEW_SHARE))
    fresh: list[list[int]] = [[] for _ in range(h * w)]
    for i, pos in enumerate(positions.tolist()):
        y, x = divmod(pos, w)
        for yy in range(max(0, y - 1), min(h, y + 2)):
            for xx in range(max(0, x - 1), min(w, x + 2)):
                fresh[yy * w + xx].append(first_row + i)
    for cell, rows in enumerate(fresh):
        if rows:
            keep = rows[-room:]  # the latest rows, when more than fit
            out[cell, size - len(keep) :] = keep
    return out


def reference_scores(model: PatchCoreModel, features: np.ndarray) -> np.ndarray:
    """Image scores of ``features (N, h, w, C)`` against the bank rows that did not come
    from calibration images (exact search, the baseline subtracted): how images unseen by
    those rows score, for calibration scores exchangeable with the earlier ones; the image
    score as the model takes it (max or top-share mean, :mod:`engine.fewshot`)."""
    n, h, w, c = features.shape
    bank = model.index.bank()
    rows = bank if model.held_out is None else bank[~model.held_out]
    index = KnnIndex("exact").fit(rows)
    dist = index.exact(prepare(model.meta, features).reshape(-1, c)).reshape(n, h * w)
    if model.baseline is not None:
        dist = dist - model.baseline.ravel()
    return image_scores(dist, model.meta.top_share).astype(np.float64)
