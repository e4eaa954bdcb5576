"""Reliability and security scenarios (``docs/RELIABILITY.md``): shared fixtures.

The shared fixtures of ``tests/conftest.py`` are reused, not copied: a real Kafka-wire
broker, unique topics and a trained model; a live uvicorn server and a TestClient factory.
``report(scenario, **figures)`` appends one JSON line per call to the file named by
``BDI_RELIABILITY_REPORT`` (when set): the measured figures that fill the table of
``docs/RELIABILITY.md`` (``python -m tests.helpers.report FILE``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers.report import Reporter

# read at import: tests/conftest.py removes every BDI_* variable around each test
REPORT_FILE = os.environ.get("BDI_RELIABILITY_REPORT", "").strip() or None


@pytest.fixture
def report(request: pytest.FixtureRequest) -> Reporter:
    """``report("S1", trials=20, lost=0, ...)``: record one scenario's measured figures."""
    return Reporter(Path(REPORT_FILE) if REPORT_FILE else None, request.node.nodeid)
