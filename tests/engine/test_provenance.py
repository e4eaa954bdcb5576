"""The code version and the scoring-settings fingerprint every verdict carries."""

from __future__ import annotations

import re
import subprocess
from importlib.metadata import version
from pathlib import Path

import pytest

from engine import EngineConfig
from engine.provenance import (
    SCORING_SETTINGS,
    Provenance,
    code_version,
    git_commit,
    settings_fingerprint,
)
from tests.helpers.settings import tiny_settings


def fingerprint(**settings: object) -> str:
    return settings_fingerprint(EngineConfig.from_settings(tiny_settings(**settings)))


def test_the_fingerprint_is_stable_and_short() -> None:
    assert fingerprint() == fingerprint()
    assert re.fullmatch(r"[0-9a-f]{16}", fingerprint())


@pytest.mark.parametrize(
    "change",
    [
        {"anomaly_sigma": 2.0},
        {"score_reweight": True},
        {"area_mm2_thr": 0.5},
        {"knn_ivf_nprobe": 16},
        {"backbone": "dinov2_vits14", "image_size": 70},
        {"backbone_weights": "random"},
    ],
)
def test_a_scoring_setting_changes_the_fingerprint(change: dict[str, object]) -> None:
    assert fingerprint(**change) != fingerprint()


@pytest.mark.parametrize(
    "change",
    [
        {"backend_port": 8123},
        {"kafka_group": "other"},
        {"batch_max": 3},
        {"engine_batch_size": 2},  # speed only
        {"torch_threads": 1},
        # fitted into the model, so named by model_version / calibration_version
        {"coreset_rate": 0.25},
        {"score_percentile": 90.0},
    ],
)
def test_other_settings_leave_the_fingerprint_alone(change: dict[str, object]) -> None:
    assert fingerprint(**change) == fingerprint()


def test_every_scoring_setting_is_an_engine_setting() -> None:
    fields = set(EngineConfig.__dataclass_fields__)
    assert set(SCORING_SETTINGS) <= fields and len(set(SCORING_SETTINGS)) == len(SCORING_SETTINGS)


def test_the_code_version_is_the_package_version_and_the_checkout_commit() -> None:
    root = Path(__file__).resolve().parents[2]
    head = subprocess.run(
        ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
        capture_output=True, text=True, check=False,
    ).stdout.strip()  # fmt: skip
    expected = f"{version('bdi-edge')}+g{head}" if head else version("bdi-edge")
    assert code_version() == expected
    assert code_version() is code_version()  # computed once per process


def test_no_commit_outside_a_checkout(tmp_path: Path) -> None:
    assert git_commit(tmp_path) is None
    (tmp_path / ".git").mkdir()  # not a repository git accepts
    assert git_commit(tmp_path) is None


def test_provenance_of_a_config() -> None:
    config = EngineConfig.from_settings(tiny_settings())
    assert Provenance.of(config) == (code_version(), settings_fingerprint(config))
