"""Colour-mapped anomaly overlays as PNG bytes."""

from __future__ import annotations

import cv2
import numpy as np


def heatmap_png(
    image: np.ndarray, amap: np.ndarray, vmax: float | None = None, alpha: float = 0.45
) -> bytes:
    """Overlay ``amap (H, W)`` on RGB ``image (H, W, 3)``; scores are scaled to ``[0, vmax]``.

    Pass the model's threshold times ~2 as ``vmax`` so colours mean the same across frames.
    """
    top = float(vmax) if vmax and vmax > 0 else float(max(amap.max(), 1e-6))
    scaled = np.clip(amap / top * 255.0, 0, 255).astype(np.uint8)
    colour = cv2.applyColorMap(scaled, cv2.COLORMAP_JET)  # BGR
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    if bgr.shape[:2] != colour.shape[:2]:
        colour = cv2.resize(colour, (bgr.shape[1], bgr.shape[0]))
    overlay = cv2.addWeighted(bgr, 1.0 - alpha, colour, alpha, 0.0)
    ok, png = cv2.imencode(".png", overlay)
    if not ok:  # pragma: no cover - OpenCV encodes any uint8 BGR image
        raise RuntimeError("PNG encoding failed")
    return png.tobytes()
