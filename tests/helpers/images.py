"""Synthetic images: disc ROIs encoded as a camera sends them, random and noise images,
periodic textures with and without a defect."""

from __future__ import annotations

import cv2
import numpy as np

from edge.simulator.discs import encode_jpeg, encode_png, make_ng, make_ok

SIZE = 96  # synthetic ROI and model input size: small enough for seconds-long tests on 2 cores


def ok_png(seed: int) -> bytes:
    return encode_png(make_ok(seed, SIZE).image)


def ng_png(seed: int, kind: str | None = None) -> bytes:
    return encode_png(make_ng(seed, SIZE, kind).image)


def ok_jpeg(seed: int) -> bytes:
    return encode_jpeg(make_ok(seed, SIZE).image)


def png(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", image)
    assert ok
    return buf.tobytes()


def noise_png(size: int, seed: int = 0) -> np.ndarray:
    """An incompressible RGB image (for oversized frames)."""
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def random_images(seed: int, n: int = 4, size: int = 64) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


def texture(kind: str, seed: int, height: int = 64, width: int = 64) -> np.ndarray:
    """A noisy periodic RGB texture ``(H, W, 3)`` uint8: ``stripes`` or ``checker``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    if kind == "stripes":
        base = 0.5 + 0.5 * np.sin(2 * np.pi * yy / 8.0)
        rgb = np.stack([60 + 120 * base, 50 + 90 * base, 40 + 60 * base], -1)
    elif kind == "checker":
        base = ((yy // 8 + xx // 8) % 2).astype(np.float64)
        rgb = np.stack([30 + 40 * base, 80 + 120 * base, 150 - 60 * base], -1)
    else:
        raise ValueError(kind)
    rgb = rgb + rng.normal(0.0, 6.0, rgb.shape)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def with_defect(image: np.ndarray, y: int = 20, x: int = 24, size: int = 16) -> np.ndarray:
    """A copy of ``image`` with a bright white square pasted in."""
    out = image.copy()
    out[y : y + size, x : x + size] = 255
    return out
