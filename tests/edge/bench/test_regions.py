"""``bdi bench regions`` on real data: its exact path agrees with an exact search of every
patch, frame by frame, and it reports both paths' cost from the same run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from configs.settings import load_settings
from edge.bench.regions import measure
from engine.engine import Engine


@pytest.mark.slow
def test_exact_regions_agree_and_both_paths_are_timed(metal_plate: Path) -> None:
    engine = Engine.from_settings(
        load_settings(backbone="efficientnet_lite0", require_cuda=False, image_size=224)
    )
    result = measure(metal_plate, engine, max_train=0, rounds=1)
    assert result["knn"] == "ivf" and result["knn_shortlist"] == 64
    assert result["frames_with_regions"] >= 10
    assert result["exact_frames_regions_differ"] == 0
    assert result["exact_image_scores_identical"] and result["index_image_scores_identical"]
    # the index-only path is what regions were before: larger on some frames
    assert result["index_frames_regions_differ"] > 0
    assert result["exact_score_ms_per_frame"] > 0 and result["index_score_ms_per_frame"] > 0


def test_a_missing_folder_is_one_line_and_exit_2(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "edge.cli", "bench", "regions", "--data", str(tmp_path / "no")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: no such data folder") and "Traceback" not in proc.stderr
