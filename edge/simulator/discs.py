"""Seeded synthetic brake-disc ROI images for tests, demos and benchmarks.

An image is an ROI crop of the turned friction surface of a grey-cast-iron brake disc:
metallic grey with a fine noise texture, concentric turning marks around a disc centre
below the crop (the ROI is a patch of the annulus), two cross-drilled holes (dark bore,
bright chamfer rim) and smooth lighting variation. OK variation between seeds is kept
small (ring pitch, hole size, brightness in narrow ranges) so that a detector trained on
~20 OK images can separate the defects.

An NG image is the OK image of the same ``(seed, size)`` with one defect painted on top:
pixels outside ``mask`` are byte-identical to ``make_ok(seed, size).image`` and ``mask`` holds
exactly the pixels the defect changed. Randomness comes only from ``np.random.default_rng``
seeded with ``seed`` (and the defect kind), so equal arguments give byte-identical images.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

DEFECT_KINDS: tuple[str, ...] = ("scratch", "crack", "pit", "rust")

_TINT = np.array([0.97, 0.99, 1.03], np.float32)  # cool metallic grey, RGB gains
_RUST = np.array([150.0, 72.0, 32.0], np.float32)  # orange-brown, RGB
_HOLES = ((0.27, 0.34), (0.73, 0.64))  # nominal hole centres, fractions of (x, y)


@dataclass(frozen=True)
class SyntheticDisc:
    """One synthetic ROI.

    ``image``: (H, W, 3) uint8 RGB; ``mask``: (H, W) bool, exactly the defect pixels (all
    False for OK); ``defect``: one of ``DEFECT_KINDS`` or None; ``area_px == mask.sum()``.
    """

    image: np.ndarray
    mask: np.ndarray
    defect: str | None
    area_px: int
    seed: int


def _check(size: int, defect: str | None) -> None:
    if size < 32:
        raise ValueError(f"synthetic disc size must be >= 32 px, got {size}")
    if defect is not None and defect not in DEFECT_KINDS:
        raise ValueError(f"unknown defect kind {defect!r}; expected one of {DEFECT_KINDS} or None")


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates ``(yy, xx)``, each (size, size) float32; cached, read-only."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    yy.flags.writeable = xx.flags.writeable = False
    return yy, xx


def _base(seed: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The OK surface: (size, size, 3) uint8 RGB and the (size, size) bool hole zone."""
    rng = np.random.default_rng(seed)
    yy, xx = _grid(size)
    k = size / 224.0
    # disc centre below the crop; turning marks = sinusoid + per-ring brightness profile
    ang, dist = np.pi / 2 + rng.uniform(-0.12, 0.12), size * rng.uniform(1.7, 2.0)
    cx, cy = size / 2 + dist * float(np.cos(ang)), size / 2 + dist * float(np.sin(ang))
    r = np.hypot(xx - cx, yy - cy)  # float32 (python-float scalars keep float32)
    pitch = max(2.6, rng.uniform(3.6, 4.0) * k)
    r0 = float(r.min())
    prof = rng.standard_normal(int((float(r.max()) - r0) * 2) + 3)
    prof = np.convolve(prof, [0.25, 0.5, 0.25], mode="same").astype(np.float32)
    rings = 5.0 * np.sin(r * np.float32(2 * np.pi / pitch) + np.float32(rng.uniform(0, 6.3)))
    rings += 5.0 * prof[((r - r0) * 2).astype(np.intp)]
    # uniform (4x cheaper than normal) white noise, slightly blurred into a fine grain
    noise = cv2.GaussianBlur(rng.random((size, size), dtype=np.float32) - 0.5, (3, 3), 0.7)
    contrast = rng.uniform(0.92, 1.08)
    g = np.float32(135 + rng.uniform(-6, 6)) + np.float32(contrast) * (rings + 16.0 * noise)
    # cross-drilled holes: dark bore with depth shading, bright chamfer rim
    zone = np.zeros((size, size), bool)
    for fx, fy in _HOLES:
        hx, hy = (fx + rng.uniform(-0.03, 0.03)) * size, (fy + rng.uniform(-0.03, 0.03)) * size
        hr, rim = size * rng.uniform(0.053, 0.058), 0.02 * size + 1.0
        ext = hr + rim + 2.0
        y0, y1 = max(0, int(hy - ext)), min(size, int(hy + ext) + 1)
        x0, x1 = max(0, int(hx - ext)), min(size, int(hx + ext) + 1)
        d = np.hypot(xx[y0:y1, x0:x1] - hx, yy[y0:y1, x0:x1] - hy)
        win = g[y0:y1, x0:x1]
        cham = np.clip(1.0 - (d - hr) / rim, 0.0, 1.0) * (d >= hr)
        win += 45.0 * cham
        np.copyto(win, 22.0 + 14.0 * d / hr + 6.0 * noise[y0:y1, x0:x1], where=d < hr)
        zone[y0:y1, x0:x1] |= d < ext
    # lighting: linear gradient, vignetting, global gain
    u, v = xx / size - 0.5, yy / size - 0.5
    gx, gy = (float(a) for a in rng.uniform(-0.12, 0.12, 2))
    light = 1.0 + gx * u + gy * v - rng.uniform(0.2, 0.35) * (u * u + v * v)
    g *= light * np.float32(rng.uniform(0.96, 1.04))
    rgb = cv2.convertScaleAbs(g[..., None] * _TINT)  # rounds and saturates to uint8
    return rgb, zone


def _pt(p: np.ndarray) -> tuple[int, int]:
    return int(round(float(p[0]))), int(round(float(p[1])))


def _draw(kind: str, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Defect footprint: a (size, size) uint8 layer mask (0 none, 1 main, 2 pit rim) and
    a (size, size) float32 texture in [0.5, 1.5] used by the painter."""
    k = size / 224.0
    m = np.zeros((size, size), np.uint8)
    tex = np.ones((size, size), np.float32)
    c = rng.uniform(0.22, 0.78, 2) * size
    if kind == "scratch":  # straight, 2-3 px wide, at >= 30 deg to the (horizontal) rings
        theta = rng.uniform(np.pi / 6, 5 * np.pi / 6) * rng.choice([-1, 1])
        half = 0.5 * size * rng.uniform(0.42, 0.6) * np.array([np.cos(theta), np.sin(theta)])
        p0, p1 = _pt(c - half), _pt(c + half)
        if rng.random() < 0.5:
            cv2.line(m, p0, p1, 1, 2)  # 3 px wide
        else:  # 2 px wide: two adjacent 1 px lines
            off = (1, 0) if abs(np.sin(theta)) > 0.7 else (0, 1)
            for dx, dy in ((0, 0), off):
                cv2.line(m, (p0[0] + dx, p0[1] + dy), (p1[0] + dx, p1[1] + dy), 1, 1)
    elif kind == "crack":  # jagged random walk around a main direction, 1-3 px wide
        n = int(rng.integers(26, 38))
        heads = rng.uniform(0, 2 * np.pi) + rng.normal(0, 0.55, n)
        heads += np.cumsum(rng.normal(0, 0.12, n))
        steps = max(2.0, 4.0 * k) * np.stack([np.cos(heads), np.sin(heads)], 1)
        pts = np.cumsum(np.vstack([np.zeros((1, 2)), steps]), 0)
        pts += c - pts.mean(0)
        for i, t in enumerate(rng.integers(1, 3, n)):
            cv2.line(m, _pt(pts[i]), _pt(pts[i + 1]), 1, int(t))
    elif kind == "pit":  # 1-3 round pits: dark core, bright raised rim
        n = int(rng.integers(1, 4))
        rad = rng.uniform(5.5, 7.5, n) * max(k, 0.6)
        cs = c + rng.uniform(-0.09, 0.09, (n, 2)) * size
        for p, rr in zip(cs, rad, strict=True):
            cv2.circle(m, _pt(p), int(round(rr + 2)), 2, -1)
        for p, rr in zip(cs, rad, strict=True):
            cv2.circle(m, _pt(p), int(round(rr)), 1, -1)
    else:  # rust: blotch = top-`area` pixels of smoothed noise + radial bias, mottled colour
        area = int(rng.uniform(0.007, 0.02) * size * size)
        side = min(size - 2, int(np.sqrt(area) * 2.0))
        low = rng.standard_normal((4, 4)).astype(np.float32)
        a = np.linspace(-1, 1, side, dtype=np.float32)
        field = cv2.resize(low, (side, side), interpolation=cv2.INTER_CUBIC) + 3.0 * (
            1.0 - (a[:, None] ** 2 + a[None, :] ** 2)
        )
        blob = field >= np.partition(field.ravel(), -area)[-area]
        y0, x0 = (np.clip(c - side / 2, 0, size - side)).astype(int)[::-1]
        m[y0 : y0 + side, x0 : x0 + side] = blob
        mot = cv2.resize(rng.standard_normal((9, 9)).astype(np.float32), (side, side))
        tex[y0 : y0 + side, x0 : x0 + side] = np.clip(1.0 + 0.25 * mot, 0.5, 1.5)
    return m, tex


def _paint(
    img: np.ndarray, kind: str, m: np.ndarray, tex: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Apply defect ``kind`` to (H, W, 3) uint8 ``img`` inside layer mask ``m`` (only the
    masked pixels are computed); returns the new image and the (H, W) bool changed mask."""
    sel = m > 0
    old = img[sel]  # (N, 3) uint8
    f = old.astype(np.float32)
    if kind == "scratch":
        new = f + np.float32(rng.uniform(60, 80) * rng.choice([-1.0, 1.0]))
    elif kind == "crack":
        new = f * np.float32(rng.uniform(0.22, 0.32))
    elif kind == "pit":
        new = np.where((m[sel] == 2)[:, None], f + 55.0, f * np.float32(0.25))
    else:
        new = 0.2 * f + 0.8 * _RUST * tex[sel][:, None]
    out, mask = img.copy(), np.zeros(m.shape, bool)
    out[sel] = np.clip(new + 0.5, 0, 255).astype(np.uint8)
    mask[sel] = (out[sel] != old).any(-1)
    return out, mask


def make_disc(seed: int, size: int = 224, defect: str | None = None) -> SyntheticDisc:
    """One (size, size, 3) uint8 RGB ROI; ``defect`` (or None for OK) painted on the OK base."""
    _check(size, defect)
    img, zone = _base(seed, size)
    if defect is None:
        return SyntheticDisc(img, np.zeros((size, size), bool), None, 0, seed)
    rng = np.random.default_rng([seed, 1 + DEFECT_KINDS.index(defect)])
    for _ in range(16):  # off the holes and not too small (deterministic rejection)
        m, tex = _draw(defect, rng, size)
        n_on = np.count_nonzero(m)
        if np.count_nonzero(m[zone]) <= 0.02 * n_on and n_on >= 0.0035 * size * size:
            break
    m[zone] = 0
    out, mask = _paint(img, defect, m, tex, rng)
    return SyntheticDisc(out, mask, defect, int(mask.sum()), seed)


def make_ok(seed: int, size: int = 224) -> SyntheticDisc:
    """An OK (defect-free) ROI, (size, size, 3) uint8 RGB with an all-False mask."""
    return make_disc(seed, size, None)


def make_ng(seed: int, size: int = 224, kind: str | None = None) -> SyntheticDisc:
    """An NG ROI; ``kind=None`` picks ``DEFECT_KINDS[seed % len(DEFECT_KINDS)]``."""
    if kind is None:
        kind = DEFECT_KINDS[seed % len(DEFECT_KINDS)]
    return make_disc(seed, size, kind)


def _bgr(image: np.ndarray) -> np.ndarray:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
    return cv2.cvtColor(image, cv2.COLOR_RGB2BGR)


def encode_png(image: np.ndarray) -> bytes:
    """(H, W, 3) uint8 RGB -> PNG bytes."""
    ok, buf = cv2.imencode(".png", _bgr(image))
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


def encode_jpeg(image: np.ndarray, quality: int = 92) -> bytes:
    """(H, W, 3) uint8 RGB -> JPEG bytes at ``quality`` (1-100)."""
    ok, buf = cv2.imencode(".jpg", _bgr(image), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


def stream(
    seed: int, n: int, size: int = 224, ng_fraction: float = 0.05
) -> Iterator[SyntheticDisc]:
    """``n`` ROIs, exactly ``round(n * ng_fraction)`` of them NG at seeded positions, defect
    kinds cycling through ``DEFECT_KINDS``. Deterministic in all arguments; each item is
    reproducible as ``make_disc(item.seed, size, item.defect)``."""
    _check(size, None)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not 0.0 <= ng_fraction <= 1.0:
        raise ValueError(f"ng_fraction must be in [0, 1], got {ng_fraction}")
    rng = np.random.default_rng([seed, 0x5EED])
    seeds = rng.integers(0, 2**31 - 1, n)
    ng = np.zeros(n, bool)
    ng[rng.permutation(n)[: int(round(n * ng_fraction))]] = True
    kind_at = np.cumsum(ng) + int(rng.integers(len(DEFECT_KINDS)))
    for i in range(n):
        kind = DEFECT_KINDS[kind_at[i] % len(DEFECT_KINDS)] if ng[i] else None
        yield make_disc(int(seeds[i]), size, kind)
