"""``bdi demo`` end to end: starts the service, trains and calibrates over REST, streams
synthetic discs through Kafka, and reports every frame answered and right."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest

from tests.helpers.api import free_port
from tests.helpers.processes import alive
from tests.helpers.terminal import BdiProcess, bdi_env, still_alive

pytestmark = [pytest.mark.slow, pytest.mark.kafka]
SUMMARY = (
    r"demo: \d+ frames, \d+ verdicts \(OK \d+, NG \d+, ERROR \d+, NO_MODEL \d+\), "
    r"(lost|unanswered) \d+( when stopped)?, wrong 0"
)
NOT_CLEAN = ("Traceback", "KafkaConnectionError", "CancelledError", "Unable connect")


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
    assert len(pids) >= 3 and not [p for p in pids if alive(p)]  # api, consumer(s), broker


def test_demo_stops_on_ctrl_c_and_when_the_service_goes_away(tmp_path):
    """Against a running ``bdi up`` (two terminals): a Ctrl-C ends the demo promptly with
    its summary; a demo whose service is stopped under it says so once and exits 1."""
    api_port = free_port()
    env = bdi_env(tmp_path / "models", BDI_IMAGE_SIZE=96)
    demo_args = ["demo", "--fps", "5", "--size", "96", "--train", "16", "--no-live",
                 "--port", str(api_port)]  # fmt: skip
    streaming = r"sent \d+  verdicts \{'(OK|NG)': [1-9]"
    with BdiProcess(["up", "--port", str(api_port), "--broker-port", "0", "--consumers", "1",
                     "--partitions", "2"], env) as up:  # fmt: skip
        bootstrap = up.wait_for(r"Kafka\s+: (\S+)").group(1)
        pids = up.pids()
        demo_env = {**env, "BDI_KAFKA_BOOTSTRAP": bootstrap}

        with BdiProcess(demo_args, demo_env) as demo:
            demo.wait_for(r"using the running service")
            demo.wait_for(streaming)
            demo.ctrl_c()
            assert demo.wait(60) == 0, demo.text[-3000:]
            ctrl_c_s = time.monotonic() - (demo.interrupted_at or 0.0)
        assert re.search(SUMMARY, demo.text), demo.text[-2000:]
        assert not [s for s in NOT_CLEAN if s in demo.text], demo.text[-3000:]

        with BdiProcess(demo_args, demo_env) as orphan:
            orphan.wait_for(streaming)
            up.ctrl_c()
            assert up.wait(60) == 0, up.text[-3000:]
            assert orphan.wait(60) == 1, orphan.text[-3000:]
            orphan_s = time.monotonic() - (up.interrupted_at or 0.0)
        assert orphan.text.count("bdi demo: the service went away") == 1, orphan.text[-3000:]
        assert re.search(SUMMARY, orphan.text), orphan.text[-2000:]
        assert not [s for s in NOT_CLEAN if s in orphan.text], orphan.text[-3000:]
    assert not still_alive(pids)
    # generous bounds (a loaded 2-core machine); before: 34 s of "Unable connect" lines
    assert ctrl_c_s < 20 and orphan_s < 30, (ctrl_c_s, orphan_s)
    print(f"demo stopped {ctrl_c_s:.1f} s after its Ctrl-C, {orphan_s:.1f} s after bdi up's")
