"""Anomaly maps: bilinear upsampling + Gaussian blur, applied as separable matrices."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from engine.anomaly_map import (
    anomaly_maps,
    full_size_box,
    map_operator,
    map_support,
    resize_map,
)


def _opencv_map(grid: np.ndarray, size: int, sigma: float) -> np.ndarray:
    """The definition, pixel by pixel: OpenCV resize, then a ±4σ reflected Gaussian blur."""
    k = 2 * int(4.0 * sigma + 0.5) + 1
    up = cv2.resize(grid, (size, size), interpolation=cv2.INTER_LINEAR)
    return cv2.GaussianBlur(up, (k, k), sigma, borderType=cv2.BORDER_REFLECT)


CASES = [(28, 28, 224, 4.0), (16, 16, 224, 4.0), (28, 20, 224, 2.0), (7, 9, 64, 1.5)]


@pytest.mark.parametrize(("h", "w", "size", "sigma"), CASES)
def test_maps_equal_upsampling_then_blurring(h: int, w: int, size: int, sigma: float) -> None:
    rng = np.random.default_rng(h * w)
    grids = (rng.random((3, h, w)) * 40).astype(np.float32)
    maps = anomaly_maps(grids, size, sigma)
    assert maps.shape == (3, size, size) and maps.dtype == np.float32
    for grid, amap in zip(grids, maps, strict=True):
        np.testing.assert_allclose(amap, _opencv_map(grid, size, sigma), rtol=1e-5, atol=1e-4)


def test_a_map_is_a_weighted_average_of_its_cells() -> None:
    """Weights are non-negative and sum to one: a map never leaves its grid's range."""
    op = map_operator(28, 224, 4.0).numpy()
    assert (op >= 0).all()
    np.testing.assert_allclose(op.sum(axis=1), 1.0, atol=1e-5)
    grid = np.random.default_rng(1).random((1, 28, 28)).astype(np.float32)
    amap = anomaly_maps(grid, 224, 4.0)[0]
    assert grid.min() - 1e-5 <= amap.min() and amap.max() <= grid.max() + 1e-5


def test_support_is_where_a_single_cell_still_shows() -> None:
    """A pixel depends on exactly the cells its support names: a single hot cell lights up
    the pixels whose row and column supports both hold it, and no other; widened by a
    pixel, the supports also hold the cells of the pixels next to it."""
    rows = map_support(28, 224, 4.0).numpy()
    assert 1 < rows.sum(axis=1).max() < 28
    grid = np.zeros((1, 28, 28), dtype=np.float32)
    grid[0, 14, 9] = 1.0
    lit = anomaly_maps(grid, 224, 4.0)[0] > 0
    np.testing.assert_array_equal(lit, np.outer(rows[:, 14] > 0, rows[:, 9] > 0))
    wide = map_support(28, 224, 4.0, widen=1).numpy()
    for y in range(1, 223):
        np.testing.assert_array_equal(wide[y] > 0, rows[y - 1 : y + 2].max(axis=0) > 0)


def test_resize_map_keeps_a_map_of_the_right_size() -> None:
    amap = np.ones((10, 12), dtype=np.float32)
    assert resize_map(amap, 10, 12) is amap
    assert resize_map(amap, 20, 30).shape == (20, 30)


@pytest.mark.parametrize(
    "size", [(512, 512), (400, 300), (224, 224), (1000, 37), (112, 112), (97, 150)]
)
def test_full_size_box_holds_every_pixel_that_reaches_the_threshold(size: tuple[int, int]) -> None:
    """Regions are labelled inside this box only: no full-size pixel at or above the
    threshold may lie outside it, whether the frame is larger or smaller than the map."""
    height, width = size
    rng = np.random.default_rng(height + width)
    for _ in range(5):
        grid = np.zeros((1, 28, 28), dtype=np.float32)
        y, x = rng.integers(0, 28, 2)
        grid[0, y, x] = 10.0  # one hot cell somewhere, the edges included
        amap = anomaly_maps(grid, 224, 4.0)[0]
        threshold = 0.3 * float(amap.max())
        hot = amap >= threshold
        box = full_size_box(hot.any(axis=1), hot.any(axis=0), height, width)
        full = resize_map(amap, height, width)
        assert box is not None
        inside = np.zeros(full.shape, dtype=bool)
        inside[box] = True
        assert (full >= threshold).any()
        assert not ((full >= threshold) & ~inside).any()
        assert inside.sum() < full.size or min(size) < 224  # it does leave pixels out


def test_full_size_box_of_nothing_is_none() -> None:
    assert full_size_box(np.zeros(224, dtype=bool), np.zeros(224, dtype=bool), 512, 512) is None
