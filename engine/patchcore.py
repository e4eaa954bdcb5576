"""PatchCore maths: embed (aggregate backbone maps into patch features), fit, score.

Roth et al., "Towards Total Recall in Industrial Anomaly Detection", CVPR 2022.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import NamedTuple

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from engine.calibration import Calibration
from engine.coreset import greedy_coreset
from engine.errors import GridMismatchError, NotFittedError
from engine.knn import KnnIndex, KnnMode

FORMAT_VERSION = 1
REWEIGHT_NEIGHBOURS = 9  # b in the paper's eq. (7)
NOMINAL_MIN_IMAGES = 16  # fewer leave-one-out images give too noisy a per-position baseline
NOMINAL_PERCENTILE = 90.0
NOMINAL_SIGMA = 1.0  # in token-grid cells


def aggregate(feature_maps: list[torch.Tensor], grid_map: int = 0) -> torch.Tensor:
    """Locally aware patch features (paper §3.1): 3x3 average of each map, brought to the
    grid of ``feature_maps[grid_map]`` (finer maps area-averaged, coarser ones bilinearly
    upsampled), channels concatenated.

    ``[(B, C_i, h_i, w_i)] -> (B, h, w, sum C_i)`` float32. Channels-last inputs (the CPU
    backbone's) make the final layout a free view.
    """
    # zero padding counts at the border, as in the reference implementations (measured:
    # +0.004 pixel AUROC on metal_plate over excluding it)
    pooled = [F.avg_pool2d(f, 3, stride=1, padding=1) for f in feature_maps]
    h, w = pooled[grid_map].shape[-2:]
    resized = []
    for f in pooled:
        fh, fw = f.shape[-2:]
        if (fh, fw) == (h, w):
            resized.append(f)
        elif fh >= h and fw >= w:
            resized.append(F.adaptive_avg_pool2d(f, (h, w)))
        else:
            resized.append(F.interpolate(f, size=(h, w), mode="bilinear", align_corners=False))
    return torch.cat([f.permute(0, 2, 3, 1) for f in resized], dim=3)


@dataclass(frozen=True)
class ModelMeta:
    backbone: str
    backbone_weights: str  # "random", or "sha256:<16 hex>" of the pretrained weights file
    image_size: int
    grid: tuple[int, int]
    feature_dim: int
    mm_per_px: float | None
    coreset_rate: float
    n_train_images: int
    n_patches: int
    memory_bank: int
    nominal_images: int = 0  # training images behind the per-position baseline; 0 = none
    created_at: float = field(default_factory=time.time)
    format: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["grid"] = list(self.grid)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> ModelMeta:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        known["grid"] = tuple(known["grid"])  # type: ignore[arg-type]
        return cls(**known)  # type: ignore[arg-type]


class Scores(NamedTuple):
    image: np.ndarray  # (B,) image scores: s* in the paper, less the per-position baseline
    patches: np.ndarray  # (B, h, w) patch distances to the memory bank (no baseline)


@dataclass
class PatchCoreModel:
    meta: ModelMeta
    index: KnnIndex
    calibration: Calibration | None = None
    version: str = ""
    # (h, w) patch distance an OK part typically shows at each grid position; subtracted
    # before the max. None: plain PatchCore.
    nominal: np.ndarray | None = None
    _baselines: dict[tuple[int, float], np.ndarray] = field(
        default_factory=dict, repr=False, compare=False
    )

    def baseline(self, size: int, sigma: float) -> np.ndarray | None:
        """The per-position baseline as a pixel map ``(size, size)``, made exactly as the
        anomaly maps are (upsampling and blurring are linear, so ``map - baseline`` is the
        map of the baseline-subtracted patch scores). Cached per model."""
        if self.nominal is None:
            return None
        key = (size, sigma)
        if key not in self._baselines:
            from engine.anomaly_map import anomaly_maps

            self._baselines[key] = anomaly_maps(self.nominal[None], size, sigma)[0]
        return self._baselines[key]

    def __post_init__(self) -> None:
        if self.nominal is not None:
            self.nominal = np.ascontiguousarray(self.nominal, dtype=np.float32)
            if self.nominal.shape != tuple(self.meta.grid):
                raise ValueError(f"nominal map {self.nominal.shape} != grid {self.meta.grid}")
        if not self.version:
            self.version = content_version(self.meta, self.index.bank(), self.nominal)

    @property
    def threshold(self) -> float | None:
        return None if self.calibration is None else self.calibration.threshold


def content_version(meta: ModelMeta, bank: np.ndarray, nominal: np.ndarray | None = None) -> str:
    """A short content hash naming one trained model (memory bank, baseline, metadata)."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(bank, dtype=np.float32).tobytes())
    if nominal is not None:
        h.update(np.ascontiguousarray(nominal, dtype=np.float32).tobytes())
    h.update(json.dumps(meta.to_dict(), sort_keys=True).encode())
    return h.hexdigest()[:16]


class FitTimings(NamedTuple):
    coreset_s: float
    index_s: float


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
    else:
        ids = np.arange(n)
    t1 = time.perf_counter()
    index = KnnIndex(knn_mode, nprobe=nprobe, use_gpu=use_gpu_index).fit(features[ids])
    return index, ids, FitTimings(t1 - t0, time.perf_counter() - t1)


def score(model: PatchCoreModel, features: np.ndarray, reweight: bool = False) -> Scores:
    """Score patch features ``(B, h, w, C)`` against the model's memory bank."""
    if model.index.size == 0:
        raise NotFittedError("model has an empty memory bank")
    b, h, w, c = features.shape
    if (h, w) != tuple(model.meta.grid) or c != model.meta.feature_dim:
        raise GridMismatchError(
            f"token grid {h}x{w}x{c} differs from the model's "
            f"{model.meta.grid[0]}x{model.meta.grid[1]}x{model.meta.feature_dim}"
        )
    flat = features.reshape(b, h * w, c)
    offset = None if model.nominal is None else model.nominal.ravel()
    patch = model.index.search_images(flat, offset)  # (B, P)
    judged = patch if offset is None else patch - offset
    image = judged.max(axis=1)
    if reweight:
        image = image * _reweight(model.index, flat[np.arange(b), judged.argmax(axis=1)])
    return Scores(image.astype(np.float64), patch.reshape(b, h, w))


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


def leave_one_out_patch_scores(
    index: KnnIndex, features: np.ndarray, bank_source: np.ndarray, k: int = 16
) -> np.ndarray:
    """Patch scores of training images, each scored without its own patches: ``(N, P)``.

    ``features (N_img, P, C)``, ``bank_source (M,)`` = training image of each bank row.
    When all ``k`` neighbours come from the image itself, the k-th distance is used: a lower
    bound, so an OK threshold taken from these can only come out lower (stricter).
    """
    n_img, p, c = features.shape
    scores = np.empty((n_img, p))
    for i in range(n_img):
        dist, ids = index.search(features[i], min(k, index.size), exact=True)
        other = bank_source[ids] != i
        first = np.where(other.any(axis=1), other.argmax(axis=1), dist.shape[1] - 1)
        scores[i] = dist[np.arange(p), first]
    return scores


def leave_one_out_scores(
    index: KnnIndex, features: np.ndarray, bank_source: np.ndarray, k: int = 8
) -> np.ndarray:
    """Image scores (max patch) of :func:`leave_one_out_patch_scores`."""
    return leave_one_out_patch_scores(index, features, bank_source, k).max(axis=1)


def nominal_map(loo_patches: np.ndarray) -> np.ndarray | None:
    """Per-position baseline ``(h, w)`` from leave-one-out patch scores ``(N, h, w)``.

    Parts come to the camera aligned, so an OK part's patch distance depends on where the
    patch is: a specular highlight or an edge scores high on every part, at the same place.
    Subtracting what OK parts typically show there (a high percentile, lightly smoothed so
    one image cannot carve a hole) lets a defect elsewhere stand out. Measured on the tire
    set: image AUROC 0.67 -> see docs/BENCHMARKS.md.
    """
    if len(loo_patches) < NOMINAL_MIN_IMAGES:
        return None
    base = np.percentile(loo_patches, NOMINAL_PERCENTILE, axis=0).astype(np.float32)
    return cv2.GaussianBlur(base, (0, 0), NOMINAL_SIGMA)
