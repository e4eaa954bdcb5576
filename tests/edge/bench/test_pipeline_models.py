"""``bdi bench pipeline --models``: frames name K ROIs round-robin, every one answered once,
correctly and by its own ROI's model, in every round; the consumers' memory is read per K."""

from __future__ import annotations

import os

import orjson
import pytest

from edge.bench.pipeline_models import RoundRobinCamera, parse_models, roi_names, rss_mb
from edge.cli import main
from edge.simulator.camera import CameraFrame

QUICK_GROUP = ("session_timeout_ms=4000", "heartbeat_interval_ms=800")


def test_model_counts_are_parsed_and_bad_ones_refused(capsys):
    assert parse_models("1,8,32,128") == (1, 8, 32, 128)
    for bad in ("0", "1,x", "", "5000"):
        with pytest.raises(ValueError, match="--models"):
            parse_models(bad)
        with pytest.raises(SystemExit) as exit_:
            main(["bench", "pipeline", "--models", bad])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and "error: argument --models" in err


def test_roi_names_keep_the_trained_one_first():
    assert roi_names("inspection-1", 1) == ["inspection-1"]
    assert roi_names("inspection-1", 3) == ["inspection-1", "inspection-1-1", "inspection-1-2"]


def test_each_frame_names_its_own_roi():
    camera = RoundRobinCamera("127.0.0.1:1", "t", "rcp", "Master1", "inspection-1")
    camera.rois["f2"] = "inspection-1-1"
    one, two = (CameraFrame(i, "p", b"png", None) for i in ("f1", "f2"))
    assert dict(camera._headers(one))["roi_id"] == b"inspection-1"
    assert dict(camera._headers(two))["roi_id"] == b"inspection-1-1"
    assert dict(camera._headers(two))["recipe_id"] == b"rcp"


def test_resident_memory_of_a_process():
    mine = rss_mb(os.getpid())
    assert mine is not None and mine > 10
    assert rss_mb(2**22 + 1) is None  # no such process


@pytest.mark.kafka
@pytest.mark.slow
def test_the_model_sweep_answers_every_frame_by_its_roi(capsys):
    options = [f"--consumer-option={o}" for o in QUICK_GROUP]
    argv = ["bench", "pipeline", "--frames", "24", "--batch", "8", "--size", "96",
            "--train", "16", "--consumers", "1", "--models", "1,3", "--rounds", "2", "--json",
            *options]  # fmt: skip
    assert main(argv) == 0
    result = orjson.loads(capsys.readouterr().out)
    rows = result["models"]
    assert [r["models"] for r in rows] == [1, 3] and rows[0]["ratio_to_1"] == 1.0
    for row in rows:
        # two bursts of 24 frames per K, every one counted; the rate is the faster burst's
        assert row["frames"] == 48 and len(row["passes_img_per_s"]) == 2
        assert row["pipeline_img_per_s"] == max(row["passes_img_per_s"]) > 0
        assert row["lost"] == row["duplicates"] == row["wrong"] == row["wrong_roi"] == 0
        assert len(row["consumer_rss_mb"]) == 1 and row["consumer_rss_mb"][0] > 0
