"""Greedy k-center coreset selection (PatchCore §3.2) on randomly projected features.

Two implementations of the *same* exact greedy rule (each step adds the point farthest
from the current selection):

- :func:`_greedy_dense` — fully vectorised, no host synchronisation per step (the next
  centre stays a device tensor); used on CUDA, where one pass over all points is cheap.
- :func:`_greedy_pruned` — on the CPU, where a full pass per step is memory-bound, it skips
  every point that the triangle inequality proves the new centre cannot improve:
  if ``d(c_new, c_a(x)) >= 2 r(x)`` then ``d(x, c_new) >= r(x)``. Only the remaining
  candidates are measured, so late steps touch a small fraction of the points. The
  selection is identical to the dense rule (up to floating-point ties).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch

# the distance a chosen row is given: below any real one, so it is never chosen twice
_CHOSEN = -1.0


class Coreset(NamedTuple):
    indices: torch.Tensor  # (k,) int64 indices into the input rows, in selection order
    radius: float  # coverage radius in the projected space: max_x min_c ||x - c||


def random_projection(features: torch.Tensor, dim: int, seed: int = 0) -> torch.Tensor:
    """Johnson–Lindenstrauss projection ``(N, D) -> (N, dim)``; identity when ``D <= dim``."""
    n_features = features.shape[1]
    if n_features <= dim:
        return features.float()
    gen = torch.Generator(device="cpu").manual_seed(seed)
    proj = torch.randn(n_features, dim, generator=gen) / math.sqrt(dim)
    return features.float() @ proj.to(features.device)


def greedy_coreset(
    features: torch.Tensor,
    n_select: int,
    projection_dim: int = 128,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> Coreset:
    """Select ``n_select`` rows of ``features (N, D)`` by greedy k-center on projected features.

    ``progress(done, total)`` is called every ~2 % of the steps on the CPU path (the device
    path reports only its end, to keep its loop free of host work)."""
    n = features.shape[0]
    if not 0 < n_select <= n:
        raise ValueError(f"n_select must be in [1, {n}], got {n_select}")
    z = random_projection(features, projection_dim, seed)
    start = int(torch.randint(n, (1,), generator=torch.Generator().manual_seed(seed)))
    if z.device.type == "cpu":
        idx, radius = _greedy_pruned(z.numpy(), n_select, start, progress)
        return Coreset(torch.from_numpy(idx), radius)
    idx_t, radius_t = _greedy_dense(z, n_select, start)
    if progress is not None:
        progress(n_select, n_select)
    return Coreset(idx_t, float(radius_t))


def _greedy_dense(z: torch.Tensor, k: int, start: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact greedy k-center; ``z (N, d)`` on any device, no ``.item()`` inside the loop."""
    sq = (z * z).sum(1)
    min_d2 = torch.full_like(sq, float("inf"))
    selected = torch.empty(k, dtype=torch.long, device=z.device)
    current = torch.tensor(start, device=z.device)
    for i in range(k):
        selected[i] = current
        centre = z.index_select(0, current.view(1))  # (1, d)
        d2 = sq + (centre * centre).sum() - 2.0 * (z @ centre.T).squeeze(1)
        torch.minimum(min_d2, d2.clamp_min_(0.0), out=min_d2)
        # a chosen row ranks below every other, 0 included: the expansion above leaves it a
        # rounding error (not 0) that could win the next argmax, and once every row is
        # covered exactly (duplicates) a chosen row could tie for it
        min_d2.index_fill_(0, current.view(1), _CHOSEN)
        current = torch.argmax(min_d2)
    return selected, min_d2.max().clamp_min(0.0).sqrt()


def _greedy_pruned(
    z: np.ndarray, k: int, start: int, progress: Callable[[int, int], None] | None = None
) -> tuple[np.ndarray, float]:
    """Exact greedy k-center on the CPU with triangle-inequality pruning. ``z (N, d)``."""
    z = np.ascontiguousarray(z, dtype=np.float32)
    n, d = z.shape
    centres = np.empty((k, d), dtype=np.float32)
    centre_sq = np.empty(k, dtype=np.float32)
    selected = np.empty(k, dtype=np.int64)
    # r: distance of each point to its nearest selected centre; owner: which centre that is
    owner = np.zeros(n, dtype=np.int32)
    z_sq = np.einsum("ij,ij->i", z, z)
    r = np.sqrt(np.maximum(((z - z[start]) ** 2).sum(1), 0.0)).astype(np.float32)
    r[start] = _CHOSEN
    twice_r = 2.0 * r
    selected[0], centres[0] = start, z[start]
    centre_sq[0] = float(z[start] @ z[start])
    report_every = max(1, k // 50)
    for i in range(1, k):
        if progress is not None and i % report_every == 0:
            progress(i, k)
        new = int(np.argmax(r))
        c = z[new]
        c_sq = float(c @ c)
        selected[i], centres[i], centre_sq[i] = new, c, c_sq
        # a chosen row ranks below every other (see _greedy_dense) and is never a candidate
        # again (its twice_r is negative)
        r[new] = twice_r[new] = _CHOSEN
        # distance of the new centre to every earlier centre, via one mat-vec
        dc2 = centre_sq[:i] + c_sq - 2.0 * (centres[:i] @ c)
        dc = np.sqrt(np.maximum(dc2, 0.0))
        cand = np.flatnonzero(dc.take(owner) < twice_r)
        owner[new] = i
        if cand.size == 0:
            continue
        # |x|² + |c|² - 2 x·c: one pass over the gathered rows instead of three (the
        # difference, its square, its sum); measured ~18 % less time on metal_plate
        # (``take`` gathers rows faster than fancy indexing: ~25 % of this step)
        rows = z.take(cand, axis=0)
        dist = np.sqrt(np.maximum(z_sq.take(cand) + c_sq - 2.0 * (rows @ c), 0.0))
        better = dist < r.take(cand)
        hit = cand[better]
        r[hit] = dist[better]
        twice_r[hit] = 2.0 * dist[better]
        owner[hit] = i
    if progress is not None:
        progress(k, k)
    return selected, max(0.0, float(r.max()))


def coverage_radius(z: torch.Tensor, indices: torch.Tensor, chunk: int = 8192) -> float:
    """``max_x min_c ||x - c||`` over rows of ``z (N, d)`` and centres ``z[indices]``."""
    centres = z[indices]
    worst = 0.0
    for start in range(0, z.shape[0], chunk):
        d = torch.cdist(z[start : start + chunk], centres).min(1).values
        worst = max(worst, float(d.max()))
    return worst
