"""``bdi demo`` end to end: starts the service, trains and calibrates over REST, streams
synthetic discs through Kafka, and reports every frame answered and right."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.edge.cli.test_up import _alive
from tests.edge.conftest import free_port

pytestmark = [pytest.mark.slow, pytest.mark.kafka]


def test_demo_streams_a_line_and_cleans_up(tmp_path):
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("BDI_", "BRAKEDISC_"))},
        "BDI_MODELS_DIR": str(tmp_path / "models"),
        "BDI_IMAGE_SIZE": "96",
    }
    done = subprocess.run(
        [sys.executable, "-m", "edge.cli", "demo", "--duration", "6", "--fps", "5",
         "--ng-rate", "0.2", "--size", "96", "--train", "16", "--no-live",
         "--port", str(free_port()), "--broker-port", "0"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    out = done.stdout
    assert done.returncode == 0, out[-3000:] + done.stderr[-2000:]
    summary = re.search(r"demo: (\d+) frames, (\d+) verdicts \(OK (\d+), NG (\d+), ERROR (\d+), "
                        r"NO_MODEL (\d+)\), lost (\d+), wrong (\d+)", out)  # fmt: skip
    assert summary, out[-2000:]
    sent, verdicts, ok, ng, error, no_model, lost, wrong = map(int, summary.groups())
    assert sent == 30 and verdicts == sent and lost == 0 and wrong == 0
    assert ng == 6 and ok == 24 and error == 0 and no_model == 0
    pids = [int(p) for p in re.findall(r"=(\d+)", re.search(r"processes: .*", out).group(0))]
    assert len(pids) >= 3 and not [p for p in pids if _alive(p)]  # api, consumer(s), broker
