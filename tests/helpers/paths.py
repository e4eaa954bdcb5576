"""Where the repository is: subprocesses run from its root, deployment files live in it."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
