"""AUROC against scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from engine.metrics import auroc


@pytest.mark.parametrize("seed", range(5))
def test_auroc_equals_sklearn_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=300)
    scores = rng.integers(0, 6, size=300) + 0.5 * labels  # few distinct values: many ties
    assert auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_auroc_equals_sklearn_continuous() -> None:
    rng = np.random.default_rng(9)
    labels = rng.integers(0, 2, size=1000)
    scores = rng.normal(size=1000) + labels
    assert auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


@pytest.mark.parametrize(
    ("labels", "scores", "expected"),
    [
        ([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9], 1.0),
        ([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1], 0.0),
        ([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5], 0.5),
    ],
)
def test_auroc_known_values(labels: list[int], scores: list[float], expected: float) -> None:
    assert auroc(np.array(labels), np.array(scores)) == pytest.approx(expected)


@pytest.mark.parametrize("labels", [[0, 0, 0], [1, 1, 1], []])
def test_auroc_is_nan_with_one_class(labels: list[int]) -> None:
    assert math.isnan(auroc(np.array(labels), np.arange(len(labels), dtype=float)))
