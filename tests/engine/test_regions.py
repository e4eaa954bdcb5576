"""Defect regions: connected components measured in pixels and mm²."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from engine.regions import Region, area_mm2, find_regions, significant


@pytest.fixture
def two_rectangles() -> np.ndarray:
    """A 100x120 map: a 30x20 rectangle at 2.0 and a 10x10 square at 3.0, else 0.1."""
    amap = np.full((100, 120), 0.1, dtype=np.float32)
    amap[5:25, 10:40] = 2.0  # x=10, y=5, w=30, h=20 -> 600 px
    amap[60:70, 80:90] = 3.0  # x=80, y=60, w=10, h=10 -> 100 px
    return amap


def test_rectangles_are_found_largest_first(two_rectangles: np.ndarray) -> None:
    regions = find_regions(two_rectangles, threshold=1.0, mm_per_px=0.1)
    assert len(regions) == 2
    big, small = regions
    assert big.bbox == (10, 5, 30, 20)
    assert big.area_px == 600
    assert big.area_mm2 == pytest.approx(6.0)
    assert big.max_score == pytest.approx(2.0)
    assert big.mean_score == pytest.approx(2.0)
    assert small.bbox == (80, 60, 10, 10)
    assert small.area_px == 100
    assert small.area_mm2 == pytest.approx(1.0)
    assert small.max_score == pytest.approx(3.0)


@pytest.mark.parametrize("mm_per_px", [0.1, 0.05, 0.37])
def test_area_mm2_is_pixels_times_scale_squared(
    two_rectangles: np.ndarray, mm_per_px: float
) -> None:
    for region in find_regions(two_rectangles, 1.0, mm_per_px):
        assert region.area_mm2 == pytest.approx(region.area_px * mm_per_px**2)


def test_area_mm2_has_no_floating_point_noise_at_any_scale() -> None:
    amap = np.zeros((40, 120), dtype=np.float32)
    amap[10:21, 5:106] = 1.0  # 11 x 101 = 1111 px
    (region,) = find_regions(amap, 0.5, mm_per_px=0.1)
    assert 1111 * (0.1 * 0.1) == 11.110000000000003
    assert region.area_mm2 == 11.11
    assert area_mm2(4, 0.01) == 0.0004  # a fine scale keeps its small areas
    assert area_mm2(5897, 0.05) == 14.7425
    assert area_mm2(7, None) is None


def test_unknown_scale_gives_no_area_mm2(two_rectangles: np.ndarray) -> None:
    regions = find_regions(two_rectangles, 1.0)
    assert [r.area_px for r in regions] == [600, 100]
    assert all(r.area_mm2 is None for r in regions)


def test_threshold_is_inclusive_and_selects_regions(two_rectangles: np.ndarray) -> None:
    assert [r.area_px for r in find_regions(two_rectangles, 2.0)] == [600, 100]
    assert [r.area_px for r in find_regions(two_rectangles, 2.5)] == [100]
    assert find_regions(two_rectangles, 3.5) == []


def test_scores_summarise_the_region() -> None:
    amap = np.zeros((20, 20), dtype=np.float32)
    amap[5:7, 5:7] = [[1.0, 2.0], [3.0, 6.0]]
    (region,) = find_regions(amap, 0.5)
    assert region.area_px == 4
    assert region.max_score == pytest.approx(6.0)
    assert region.mean_score == pytest.approx(3.0)


def test_diagonal_pixels_are_one_region() -> None:
    """8-connectivity: pixels touching at a corner belong together."""
    amap = np.zeros((10, 10), dtype=np.float32)
    amap[2, 2] = amap[3, 3] = amap[4, 4] = 1.0
    (region,) = find_regions(amap, 0.5)
    assert region.bbox == (2, 2, 3, 3)
    assert region.area_px == 3


def test_circle_area_matches_mask_pixel_count() -> None:
    mask = np.zeros((120, 140), dtype=np.uint8)
    cv2.circle(mask, (70, 55), 23, 1, thickness=-1)
    amap = mask.astype(np.float32) * 2.0
    (region,) = find_regions(amap, 1.0, mm_per_px=0.2)
    assert region.area_px == int(mask.sum())
    assert region.bbox == (70 - 23, 55 - 23, 47, 47)
    assert region.area_mm2 == pytest.approx(int(mask.sum()) * 0.04)


def _regions_of_whole_frame(amap: np.ndarray, threshold: float) -> list[tuple]:
    """Reference: every component labelled on the whole frame, measured pixel by pixel."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(
        (amap >= threshold).astype(np.uint8), connectivity=8
    )
    out = []
    for label in range(1, n):
        values = amap[labels == label]
        x, y, w, h, area = (int(v) for v in stats[label])
        out.append(((x, y, w, h), area, float(values.max()), float(values.mean())))
    return sorted(out, key=lambda r: (-r[1], r[0]))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(("sigma", "quantile"), [(3.0, 0.9), (12.0, 0.9), (40.0, 0.8)])
def test_regions_match_labelling_the_whole_frame(seed: int, sigma: float, quantile: float) -> None:
    """Components are labelled inside the box around the pixels above the threshold only,
    and measured there (OpenCV's statistics for many regions, directly for a few); boxes
    (in frame coordinates), areas and scores must be those of the whole frame, including
    blobs that touch its edges. Blurs: ~20-30 regions, 2-3 regions, one region."""
    rng = np.random.default_rng(seed)
    amap = cv2.GaussianBlur(rng.random((90, 130)).astype(np.float32), (0, 0), sigma)
    amap[:, :3] += 0.2 * (seed % 2) * amap.std()  # sometimes a region along the left edge
    threshold = float(np.quantile(amap, quantile))
    found = find_regions(amap, threshold)
    got = sorted(
        ((r.bbox, r.area_px, r.max_score, r.mean_score) for r in found),
        key=lambda r: (-r[1], r[0]),
    )
    want = _regions_of_whole_frame(amap, threshold)
    assert len(got) == len(want) > 0
    for g, w in zip(got, want, strict=True):
        assert g[:2] == w[:2]
        assert g[2:] == pytest.approx(w[2:])


def test_nothing_above_the_threshold_gives_no_region() -> None:
    assert find_regions(np.zeros((40, 50), dtype=np.float32), 0.5) == []


def test_to_dict_is_plain() -> None:
    region = Region((1, 2, 3, 4), 12, 0.5, 2.0, 1.5)
    assert region.to_dict() == {
        "bbox": (1, 2, 3, 4), "area_px": 12, "area_mm2": 0.5, "max_score": 2.0, "mean_score": 1.5,
    }  # fmt: skip


def _region(area_mm2: float | None) -> Region:
    return Region((0, 0, 1, 1), 1, area_mm2, 1.0, 1.0)


def test_significant_filters_by_area() -> None:
    big, edge, small = _region(6.0), _region(2.0), _region(1.0)
    assert significant([big, edge, small], 2.0) == [big, edge]
    assert significant([small], 2.0) == []
    assert significant([], 2.0) == []


def test_significant_keeps_regions_of_unknown_scale() -> None:
    unknown, small = _region(None), _region(0.1)
    assert significant([unknown, small], 1e9) == [unknown]
