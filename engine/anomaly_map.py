"""Patch scores -> pixel anomaly map: bilinear upsampling and Gaussian smoothing only."""

from __future__ import annotations

import cv2
import numpy as np


def anomaly_maps(patch_scores: np.ndarray, size: int, sigma: float = 4.0) -> np.ndarray:
    """``(B, h, w)`` patch scores -> ``(B, size, size)`` float32 maps, blurred with ``sigma``.

    The kernel spans ±4σ (as anomalib's ``2 * int(4σ + 0.5) + 1``).
    """
    ksize = 2 * int(4.0 * sigma + 0.5) + 1
    out = np.empty((patch_scores.shape[0], size, size), dtype=np.float32)
    for i, grid in enumerate(patch_scores.astype(np.float32, copy=False)):
        up = cv2.resize(grid, (size, size), interpolation=cv2.INTER_LINEAR)
        out[i] = cv2.GaussianBlur(up, (ksize, ksize), sigma, borderType=cv2.BORDER_REFLECT)
    return out


def resize_map(amap: np.ndarray, height: int, width: int) -> np.ndarray:
    """One ``(S, S)`` map to the original image size ``(height, width)``."""
    if amap.shape == (height, width):
        return amap
    return cv2.resize(amap, (width, height), interpolation=cv2.INTER_LINEAR)
