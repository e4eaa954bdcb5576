"""Accuracy on real inspection photographs (../shared/data), through the benchmark path."""

from pathlib import Path

import pytest

from configs.settings import load_settings
from edge.bench.engine import evaluate, load_mvtec
from engine.engine import Engine

pytestmark = pytest.mark.slow


def _engine(**overrides):
    base = {"backbone": "efficientnet_lite0", "require_cuda": False, "image_size": 224,
            "coreset_rate": 0.1}  # fmt: skip
    return Engine.from_settings(load_settings(**(base | overrides)))


@pytest.mark.parametrize(("knn", "shortlist"), [("exact", 64), ("ivf", 64), ("ivf", 0)])
def test_metal_plate_matches_reference_accuracy(metal_plate: Path, knn: str, shortlist: int):
    """Targets from the reference run of anomalib 2.7.0 (image 1.000, pixel 0.972)."""
    result = evaluate(metal_plate, _engine(knn_mode=knn, knn_shortlist=shortlist), rounds=1)
    assert result["n_train"] == 54 and result["n_test"] == 97
    assert result["memory_bank"] == 4233
    assert result["knn_shortlist"] == shortlist
    assert result["image_auroc"] >= 0.99
    assert result["pixel_auroc"] >= 0.97


def test_tire_matches_reference_accuracy(test_data: Path):
    """The hard set: anomalib 2.7.0 measures image 0.700 / pixel 0.965 here. This engine
    measures 0.772 / 0.976 (docs/BENCHMARKS.md)."""
    tire = test_data / "mvtec3d_tire" / "tire"
    if not tire.is_dir():
        pytest.skip(f"{tire} missing")
    result = evaluate(tire, _engine(knn_mode="ivf"), rounds=1)
    assert result["n_train"] == 210
    assert result["image_auroc"] >= 0.70
    assert result["pixel_auroc"] >= 0.965


def test_load_mvtec_rejects_other_layouts(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="MVTec"):
        load_mvtec(tmp_path)
