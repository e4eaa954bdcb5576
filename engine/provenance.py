"""What, besides the model and its calibration, decides a verdict: the code that ran and the
settings it scored with. Both front doors stamp every verdict with them (``docs/KAFKA.md``).

Same ``model_version``, ``calibration_version``, ``settings_fingerprint`` and
``code_version`` and the same image bytes give the same verdict, up to the device's
floating-point rounding.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import NamedTuple

import orjson

from engine.config import EngineConfig

DISTRIBUTION = "bdi-edge"
SOURCE_ROOT = Path(__file__).resolve().parent.parent  # the checkout, in an editable install
_COMMIT = re.compile(r"[0-9a-f]{7,40}")

# The settings that change a frame's score or verdict once its model and calibration are
# given; the others that would are recorded in the model when it is fitted (backbone and
# input size, kNN index kind, coreset, per-position baseline, shortlist, compute dtype,
# mm_per_px: model_version) or in its calibration (score_percentile: calibration_version).
# Input bounds (BDI_MAX_IMAGE_PIXELS) refuse a frame rather than score it otherwise.
SCORING_SETTINGS = (
    "backbone",  # with backbone_weights: the weights file a model's backbone is loaded from
    "backbone_weights",
    "knn_ivf_nprobe",  # IVF lists searched per patch: an approximate kNN distance
    "anomaly_sigma",  # smoothing of the anomaly map: the regions and their areas
    "score_reweight",  # the paper's reweighting of the image score (eq. 7)
    "area_mm2_thr",  # regions smaller than this do not make a frame NG
)


class Provenance(NamedTuple):
    """The process's part of every verdict's provenance."""

    code_version: str
    settings_fingerprint: str

    @classmethod
    def of(cls, config: EngineConfig) -> Provenance:
        return cls(code_version(), settings_fingerprint(config))


@lru_cache(maxsize=8)
def settings_fingerprint(config: EngineConfig) -> str:
    """Short hash of the :data:`SCORING_SETTINGS` (names and values) of ``config``."""
    values = {name: getattr(config, name) for name in SCORING_SETTINGS}
    data = orjson.dumps(values, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(data).hexdigest()[:16]


@lru_cache(maxsize=1)
def code_version() -> str:
    """The package version, plus the git commit when running from a checkout, as a PEP 440
    local version: ``0.1.0+g1a2b3c4d5e6f``. Computed once per process."""
    try:
        release = version(DISTRIBUTION)
    except PackageNotFoundError:  # a source tree that was never installed
        release = "0+unknown"
    commit = git_commit(SOURCE_ROOT)
    if commit is None:
        return release
    return f"{release}{'.' if '+' in release else '+'}g{commit}"


def git_commit(root: Path) -> str | None:
    """The short commit ``root`` (a git checkout) is at; ``None`` when it is none, or git
    is absent or refuses (an installed wheel, a container without ``.git``)."""
    if not (root / ".git").exists():
        return None
    try:
        done = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
            capture_output=True, text=True, timeout=10, check=False,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and _COMMIT.fullmatch(commit) else None
