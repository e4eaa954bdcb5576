"""Processes under test: a ``bdi consume`` subprocess and its settings, and whether a pid
is still alive."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.helpers.consumer import ENGINE_SETTINGS, GROUP_OPTIONS, Trained
from tests.helpers.kafka import Topics
from tests.helpers.paths import REPO
from tests.helpers.settings import TINY


def consume_process(env_settings: dict[str, object], log: Path) -> subprocess.Popen[bytes]:
    """``python -m edge.cli consume`` with ``BDI_*`` from ``env_settings`` only."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BDI_", "BRAKEDISC_"))}
    env.update({f"BDI_{k.upper()}": str(v) for k, v in env_settings.items()})
    with log.open("ab") as out:
        options = [f"--consumer-option={k}={v}" for k, v in GROUP_OPTIONS.items()]
        cmd = [sys.executable, "-m", "edge.cli", "consume", *options]
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)


def env_settings(
    trained: Trained, topics: Topics, bootstrap: str, **extra: object
) -> dict[str, object]:
    """The settings of a consumer process: tiny engine, the trained store, these topics."""
    return {
        **TINY,
        **ENGINE_SETTINGS,
        "models_dir": trained.models_dir,
        **topics.settings(bootstrap),
        **extra,
    }


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not reaped by its parent yet) counts as gone
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False
