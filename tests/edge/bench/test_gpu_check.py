"""``edge/bench/gpu_check.py`` runs end to end (here on the CPU, at toy sizes), so that a GPU
machine's few minutes go to numbers, not to fixing the script."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[3]


def test_gpu_check_prints_every_number():
    run = subprocess.run(
        [sys.executable, "edge/bench/gpu_check.py", "--sizes", "1,2", "--fit-images", "4",
         "--bank-images", "4", "--image-size", "56"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    out = orjson.loads(run.stdout.strip().splitlines()[-1])
    assert out["backbone"] == "dinov2_vits14 (random weights)" and out["image_size"] == 56
    for key in ("backbone_img_per_s_b1", "backbone_img_per_s_b2", "coreset_s_1024_to_102",
                "knn_ms_per_32_images", "fit_s_4_images", "infer_img_per_s_b4"):  # fmt: skip
        assert out[key] > 0, key
    assert isinstance(out["knn_gpu_index"], bool)  # True only with faiss-gpu and CUDA
    assert out["fit_timings_s"]["fit_s"] > 0
