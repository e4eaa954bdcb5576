"""Accuracy on real inspection photographs (../shared/data), through the benchmark path."""

from pathlib import Path

import pytest

from configs.settings import load_settings
from engine.benchmark import evaluate, load_mvtec
from engine.engine import Engine

pytestmark = pytest.mark.slow


def _engine(**overrides):
    base = {"backbone": "efficientnet_lite0", "require_cuda": False, "image_size": 224,
            "coreset_rate": 0.1}  # fmt: skip
    return Engine.from_settings(load_settings(**(base | overrides)))


@pytest.mark.parametrize("knn", ["exact", "ivf"])
def test_metal_plate_matches_reference_accuracy(metal_plate: Path, knn: str):
    """Targets from the reference run of anomalib 2.7.0 (image 1.000, pixel 0.972)."""
    result = evaluate(metal_plate, _engine(knn_mode=knn))
    assert result["n_train"] == 54 and result["n_test"] == 97
    assert result["memory_bank"] == 4233
    assert result["image_auroc"] >= 0.99
    assert result["pixel_auroc"] >= 0.97


def test_tire_accuracy_floor(test_data: Path):
    """The hard set. At 224 px this engine measures image 0.671 / pixel 0.963 (see
    docs/BENCHMARKS.md); this guards against regressions below that."""
    tire = test_data / "mvtec3d_tire" / "tire"
    if not tire.is_dir():
        pytest.skip(f"{tire} missing")
    result = evaluate(tire, _engine(knn_mode="ivf"))
    assert result["n_train"] == 210
    assert result["image_auroc"] >= 0.65
    assert result["pixel_auroc"] >= 0.96


def test_load_mvtec_rejects_other_layouts(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="MVTec"):
        load_mvtec(tmp_path)
