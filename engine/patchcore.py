"""PatchCore maths: embed (aggregate backbone maps into patch features), fit, score.

Roth et al., "Towards Total Recall in Industrial Anomaly Detection", CVPR 2022.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from engine import fewshot
from engine.calibration import Calibration
from engine.coreset import greedy_coreset
from engine.errors import GridMismatchError, NotFittedError
from engine.knn import KnnIndex
from engine.meta import ModelMeta

if TYPE_CHECKING:
    from configs.settings import KnnMode

REWEIGHT_NEIGHBOURS = 9  # b in the paper's eq. (7)
BOUND_MARGIN = 2e-6  # relative slack on shortlist bounds (see PatchCoreModel.shortlist_bounds)
MAP_SLACK = 1e-5  # relative slack on region thresholds (see region_floor)


def aggregate(feature_maps: list[torch.Tensor], grid_map: int = 0) -> torch.Tensor:
    """Locally aware patch features (paper §3.1): 3x3 average of each map, brought to the
    grid of ``feature_maps[grid_map]`` (finer maps area-averaged, coarser ones bilinearly
    upsampled), channels concatenated.

    ``[(B, C_i, h_i, w_i)] -> (B, h, w, sum C_i)`` float32. Channels-last inputs (the CPU
    backbone's) make the final layout a free view.
    """
    # zero padding counts at the border, as in the reference implementations (measured:
    # +0.004 pixel AUROC on metal_plate over excluding it)
    h, w = feature_maps[grid_map].shape[-2:]
    resized = []
    for f in feature_maps:
        fh, fw = f.shape[-2:]
        if (fh, fw) == (2 * h, 2 * w):
            resized.append(_pool_halve(f))
            continue
        f = F.avg_pool2d(f, 3, stride=1, padding=1)
        if (fh, fw) == (h, w):
            resized.append(f)
        elif fh >= h and fw >= w:
            resized.append(F.adaptive_avg_pool2d(f, (h, w)))
        else:
            resized.append(F.interpolate(f, size=(h, w), mode="bilinear", align_corners=False))
    return torch.cat([f.permute(0, 2, 3, 1) for f in resized], dim=3)


def _pool_halve(f: torch.Tensor) -> torch.Tensor:
    """The 3x3 zero-padded average followed by a 2x2 area average, as one depthwise 4x4
    stride-2 convolution (per axis ``[1, 2, 2, 1] / 6``): the same numbers, one pass over
    the map instead of two (measured on the stride-4 map: ~7x cheaper)."""
    taps = torch.tensor([1.0, 2.0, 2.0, 1.0], dtype=f.dtype, device=f.device) / 6.0
    c = f.shape[1]
    kernel = (taps[:, None] * taps[None, :]).expand(c, 1, 4, 4).contiguous()
    return F.conv2d(f, kernel, stride=2, padding=1, groups=c)


class Scores(NamedTuple):
    image: np.ndarray  # (B,) image scores: max over positions of (distance - baseline)
    patches: np.ndarray  # (B, h, w) patch distances to the memory bank (no baseline)


@dataclass
class PatchCoreModel:
    meta: ModelMeta
    index: KnnIndex
    calibration: Calibration | None = None
    version: str = ""
    # the per-position OK baseline: (h, w) patch distance an OK part typically shows at
    # each grid position (engine.leave_one_out), subtracted before the max. None: plain
    # PatchCore.
    baseline: np.ndarray | None = None
    # (h*w, K) memory-bank rows per grid position: the nearest rows of aligned OK patches
    # there and around. Only a speed aid (see :func:`score`); None: search everything.
    shortlist: np.ndarray | None = None
    # (M,) bool: bank rows that came from held-out calibration images (engine.incremental),
    # left out when new calibration scores are made; None: no such rows
    held_out: np.ndarray | None = None
    _baseline_maps: dict[tuple[int, int, float], np.ndarray] = field(
        default_factory=dict, repr=False, compare=False
    )
    _candidates: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = field(
        default=None, repr=False, compare=False
    )

    def baseline_map(self, size: int | tuple[int, int], sigma: float) -> np.ndarray | None:
        """The per-position baseline as a pixel map ``size`` ``(H, W)``, made exactly as the
        anomaly maps are (upsampling and blurring are linear, so ``map - baseline_map`` is
        the map of the baseline-subtracted patch scores). Cached per model."""
        if self.baseline is None:
            return None
        key = (size, size, sigma) if isinstance(size, int) else (*size, sigma)
        if key not in self._baseline_maps:
            from engine.anomaly_map import anomaly_maps

            self._baseline_maps[key] = anomaly_maps(self.baseline[None], size, sigma)[0]
        return self._baseline_maps[key]

    def __post_init__(self) -> None:
        if self.baseline is not None:
            self.baseline = np.ascontiguousarray(self.baseline, dtype=np.float32)
            if self.baseline.shape != tuple(self.meta.grid):
                raise ValueError(f"baseline {self.baseline.shape} != grid {self.meta.grid}")
        if self.shortlist is not None:
            self.shortlist = np.ascontiguousarray(self.shortlist, dtype=np.int32)
            cells = self.meta.grid[0] * self.meta.grid[1]
            if self.shortlist.ndim != 2 or self.shortlist.shape[0] != cells:
                raise ValueError(f"shortlist {self.shortlist.shape} does not fit {cells} cells")
            if self.shortlist.size and not (
                self.shortlist.min() >= 0 and self.shortlist.max() < self.index.size
            ):
                raise ValueError("shortlist names rows outside the memory bank")
        if self.held_out is not None:
            self.held_out = np.ascontiguousarray(self.held_out, dtype=bool)
            if self.held_out.shape != (self.index.size,):
                raise ValueError(f"held-out flags {self.held_out.shape} != {self.index.size} rows")
        if not self.version:
            self.version = content_version(self.meta, self.index.bank(), self.baseline)

    def shortlist_bounds(self, flat: np.ndarray) -> np.ndarray | None:
        """Distance from each patch ``(B, P, C)`` to the nearest of its position's shortlist
        rows, ``(B, P)``: an upper bound of its nearest-neighbour distance, and on aligned OK
        parts usually the distance itself. None without a shortlist."""
        if self.shortlist is None or self.shortlist.shape[1] == 0:
            return None
        if self._candidates is None:
            rows = torch.from_numpy(self.index.bank())[torch.from_numpy(self.shortlist).long()]
            # (P, C, K) rows, (P, 1, K) squared norms and (P, 1) their largest, built once
            norms = (rows * rows).sum(-1)
            self._candidates = (
                rows.transpose(1, 2).contiguous(),
                norms[:, None],
                norms.amax(-1, keepdim=True),
            )
        cand_t, cand_sq, cand_sq_max = self._candidates
        rows = torch.from_numpy(np.ascontiguousarray(flat, dtype=np.float32))
        with torch.inference_mode():
            q_sq = (rows * rows).sum(-1).T  # (P, B)
            d2 = torch.baddbmm(cand_sq, rows.transpose(0, 1), cand_t, alpha=-2.0)  # (P, B, K)
            # float32 rounding of this expansion is below ~1e-6 of |q|² + |m|²: a margin
            # of twice that, with the position's largest |m|², keeps every minimum a true
            # upper bound
            best = d2.amin(dim=-1).add_(q_sq).add_(BOUND_MARGIN * (q_sq + cand_sq_max))
            return best.clamp_min_(0.0).sqrt_().T.contiguous().numpy()

    @property
    def threshold(self) -> float | None:
        return None if self.calibration is None else self.calibration.threshold

    @property
    def calibration_version(self) -> str | None:
        return None if self.calibration is None else self.calibration.version


def content_version(meta: ModelMeta, bank: np.ndarray, baseline: np.ndarray | None = None) -> str:
    """A short content hash naming one trained model (memory bank, baseline, metadata)."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(bank, dtype=np.float32).tobytes())
    if baseline is not None:
        h.update(np.ascontiguousarray(baseline, dtype=np.float32).tobytes())
    h.update(json.dumps(meta.to_dict(), sort_keys=True).encode())
    return h.hexdigest()[:16]


class FitTimings(NamedTuple):
    coreset_s: float
    index_s: float
    radius: float | None = None  # the coreset's coverage radius (None: every row kept)


def build_memory(
    features: np.ndarray,
    coreset_rate: float,
    knn_mode: KnnMode,
    nprobe: int,
    projection_dim: int,
    seed: int,
    device: torch.device,
    use_gpu_index: bool,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[KnnIndex, np.ndarray, FitTimings]:
    """Coreset of ``features (N, C)`` and its kNN index. Returns index, bank row ids, timings."""
    n = features.shape[0]
    k = max(1, min(n, int(n * coreset_rate)))
    t0 = time.perf_counter()
    if k < n:
        feats = torch.from_numpy(features).to(device)
        coreset = greedy_coreset(feats, k, projection_dim, seed, progress)
        ids = coreset.indices.cpu().numpy()
        radius: float | None = coreset.radius
    else:
        ids, radius = np.arange(n), None
    t1 = time.perf_counter()
    index = KnnIndex(knn_mode, nprobe=nprobe, use_gpu=use_gpu_index).fit(features[ids])
    return index, ids, FitTimings(t1 - t0, time.perf_counter() - t1, radius)


def score(
    model: PatchCoreModel,
    features: np.ndarray,
    reweight: bool = False,
    maps: np.ndarray | None = None,
    regions: MapSpec | None = None,
    exact_regions: bool = True,
) -> Scores:
    """Score patch features ``(B, h, w, C)`` against the model's memory bank.

    A patch's distance to its nearest bank row, less the model's per-position OK baseline
    (what OK parts typically show at that grid position; zero without one), is its score;
    an image's score is the highest patch score (s* in the paper; ``reweight``: times the
    paper's eq. (7) weight). A defect region's ``max_score`` comes from the pixel map of
    the same patch scores, upsampled and blurred (:mod:`engine.anomaly_map`): each pixel a
    weighted average of nearby patch scores, never above the highest, so without
    reweighting it is at most the image score and usually below it; a frame may even reach
    the threshold with no pixel doing so (NG without a region).

    The image scores are exact. ``patches`` are upper bounds of the patch distances, exact
    where they decide the image score; with a shortlist they are only searched where they
    could, so ``maps (B,) bool`` names the frames whose whole map is wanted (a heatmap, a
    map): those get every patch searched with the index (``maps=None``: every frame).

    ``regions``: how the frames' anomaly maps are drawn, for the frames that reach the
    model's threshold (their defect regions are measured): every patch that one of their
    regions can depend on is then searched exactly (see :func:`_search_near_regions`), so
    their regions, areas included, are those of an exact search of every patch. None: no
    regions are measured from these scores (image scores only). ``exact_regions=False``
    searches those patches with the index only, as before regions were exact (kept for
    ``bdi bench regions``, which measures what exactness costs): regions then err larger.
    """
    if model.index.size == 0:
        raise NotFittedError("model has an empty memory bank")
    b, h, w, c = features.shape
    if (h, w) != tuple(model.meta.grid) or c != model.meta.feature_dim:
        raise GridMismatchError(
            f"token grid {h}x{w}x{c} differs from the model's "
            f"{model.meta.grid[0]}x{model.meta.grid[1]}x{model.meta.feature_dim}"
        )
    if model.meta.feature_norm or model.meta.top_share:  # few-shot options (engine.fewshot)
        features = fewshot.prepare(model.meta, features)
        if model.meta.top_share:
            image, exact = fewshot.score_top(model, features.reshape(b, h * w, c))
            return Scores(image, exact.reshape(b, h, w))
    flat = features.reshape(b, h * w, c)
    baseline = None if model.baseline is None else model.baseline.ravel()
    # on a GPU the exact search is cheap enough on its own
    upper = None if model.index.use_gpu else model.shortlist_bounds(flat)
    searched = np.zeros((b, h * w), dtype=bool)  # patches at index quality
    exact = np.zeros((b, h * w), dtype=bool)  # patches at their exact distance
    patch = model.index.search_images(flat, baseline, upper, searched, exact)  # (B, P)
    judged = patch if baseline is None else patch - baseline
    image = judged.max(axis=1)
    if not exact.all():
        whole = np.ones(b, dtype=bool) if maps is None or reweight else maps.copy()
        where = np.zeros((b, h * w), dtype=bool)
        where[whole] = True
        patch = model.index.settle(flat, patch, where & ~searched)
        searched |= where
        threshold = model.threshold
        if regions is not None and threshold is not None:
            reaching = image >= threshold
            if reaching.any():
                _search_near_regions(
                    model.index, flat, patch, exact if exact_regions else searched, reaching,
                    (h, w), baseline, threshold, regions, exact_regions,
                )  # fmt: skip
    if reweight:
        image = image * _reweight(model.index, flat[np.arange(b), judged.argmax(axis=1)])
    return Scores(image.astype(np.float64), patch.reshape(b, h, w))


def region_floor(threshold: float) -> float:
    """A hair below ``threshold``: where a map value can still reach it once drawn another
    way (frame by frame, the baseline subtracted after), which may round differently. Both
    the region search and the region box use it, so that they agree."""
    return threshold - MAP_SLACK * max(1.0, abs(threshold))


class MapSpec(NamedTuple):
    """How a frame's anomaly map is drawn from its patch scores (see engine.anomaly_map):
    at the backbone's input size ``(height, width)``, blurred with ``sigma``."""

    height: int
    width: int
    sigma: float


def _search_near_regions(
    index: KnnIndex,
    flat: np.ndarray,
    patch: np.ndarray,
    exact: np.ndarray,
    frames: np.ndarray,
    grid: tuple[int, int],
    baseline: np.ndarray | None,
    threshold: float,
    spec: MapSpec,
    exact_search: bool = True,
) -> None:
    """Search exactly the patches of ``frames (B,) bool`` that their regions depend on (in
    place). ``exact (B, P) bool``: patches already at their exact distance (updated here).
    (``exact_search=False``: with the index only, and ``exact`` then names the patches
    already searched with it.)

    Every other patch distance is an upper bound (a shortlist's, an IVF probe's), and a map
    pixel is a positive weighted average of the patches its operator reaches
    (:func:`map_support`), so a map drawn from them is an upper bound of the exact map:
    pixels below the threshold on it are below it on the exact map too. A full-size pixel
    interpolates the map pixels next to it, so the patches reached by every pixel at or
    above the threshold, and by its 8 neighbours, are searched exactly. Those pixels, and
    every full-size pixel that may reach the threshold, then hold their exact values: the
    same regions, with the same scores and areas, as an exact search of every patch.

    One round is enough: a search only ever lowers a patch distance, so no pixel below the
    threshold can rise to it afterwards.
    """
    from engine.anomaly_map import map_support, map_tensor

    h, w = grid
    todo = np.flatnonzero(frames)
    judged = patch[todo].reshape(-1, h, w)
    if baseline is not None:
        judged = judged - baseline.reshape(h, w)
    # each hot pixel with its 8 neighbours: the supports widened by a pixel each way
    rows = map_support(h, spec.height, spec.sigma, widen=1)
    cols = map_support(w, spec.width, spec.sigma, widen=1)
    with torch.inference_mode():
        size = (spec.height, spec.width)
        hot = (map_tensor(judged, size, spec.sigma) >= region_floor(threshold)).float()
        # cell (i, j) is reached when some hot pixel (y, x) has rows[y, i] and cols[x, j]
        reached = torch.matmul(torch.matmul(rows.T, hot), cols).numpy() > 0.5
    need = np.zeros(patch.shape, dtype=bool)
    need[todo] = reached.reshape(len(todo), h * w) & ~exact[todo]
    if need.any():
        index.settle(flat, patch, need, exact=exact_search)
        exact |= need


def _reweight(index: KnnIndex, worst: np.ndarray) -> np.ndarray:
    """Paper eq. (7): down-weight s* when the nearest memory feature m* sits in a dense
    neighbourhood. ``worst (B, C)`` are the highest-scoring patch features."""
    bank = index.bank()
    _, nn = index.search(worst, 1, exact=True)
    m_star = bank[nn[:, 0]]
    k = min(REWEIGHT_NEIGHBOURS, len(bank))
    _, support = index.search(m_star, k, exact=True)  # N_b(m*), m* itself first
    dist = np.linalg.norm(bank[support] - worst[:, None, :], axis=2).astype(np.float64)
    soft = np.exp(dist - dist.max(axis=1, keepdims=True))
    return 1.0 - soft[:, 0] / soft.sum(axis=1)
