"""What leave-one-out scores of the training images give a model: baseline, shortlist."""

from __future__ import annotations

import cv2
import numpy as np

from engine.knn import KnnIndex
from engine.leave_one_out import (
    BASELINE_MIN_IMAGES,
    BASELINE_PERCENTILE,
    BASELINE_SIGMA,
    leave_one_out_neighbours,
    position_baseline,
    positional_shortlist,
)


def test_positional_shortlist_prefers_the_rows_nearest_around_each_cell() -> None:
    # 3 images on a 2x3 grid; cell (0, 0) and its neighbours mostly pick row 7
    nn = np.array(
        [
            [[7, 7, 1], [2, 3, 4]],
            [[7, 5, 1], [2, 3, 9]],
            [[6, 7, 1], [8, 3, 4]],
        ]
    )
    short = positional_shortlist(nn, size=3, radius=1)
    assert short.shape == (6, 3) and short.dtype == np.int32
    assert short[0, 0] == 7  # 4 votes within one cell of (0, 0)
    assert short[5, 0] in (1, 3, 4)  # corner (1, 2): neighbours 1, 1, 1, 3, 3, 3, 4, 4, 9
    alone = positional_shortlist(nn, size=8, radius=0)
    assert set(alone[0]) == {7, 6}  # only what was nearest at that very cell, padded


def test_leave_one_out_skips_the_images_own_rows() -> None:
    # two images of two patches each; every bank row is one of their patches
    features = np.array([[[0.0, 0.0], [10.0, 0.0]], [[1.0, 0.0], [10.0, 3.0]]], np.float32)
    bank = features.reshape(-1, 2)
    index = KnnIndex("exact").fit(bank)
    scores, rows = leave_one_out_neighbours(index, features, np.array([0, 0, 1, 1]))
    # image 0's patches meet image 1's rows, and the other way round
    np.testing.assert_allclose(scores, [[1.0, 3.0], [1.0, 3.0]], rtol=1e-6)
    assert rows.tolist() == [[2, 3], [0, 1]]


def test_position_baseline_needs_enough_images() -> None:
    loo = np.ones((BASELINE_MIN_IMAGES - 1, 3, 4))
    assert position_baseline(loo) is None


def test_position_baseline_is_a_smoothed_high_percentile_per_position() -> None:
    rng = np.random.default_rng(0)
    loo = rng.random((BASELINE_MIN_IMAGES, 5, 6))
    loo[:, 2, 3] += 4.0  # a position where every OK part scores high (an edge, a highlight)
    baseline = position_baseline(loo)
    assert baseline is not None and baseline.shape == (5, 6) and baseline.dtype == np.float32
    typical = np.percentile(loo, BASELINE_PERCENTILE, axis=0).astype(np.float32)
    np.testing.assert_allclose(baseline, cv2.GaussianBlur(typical, (0, 0), BASELINE_SIGMA))
    assert np.unravel_index(baseline.argmax(), baseline.shape) == (2, 3)
