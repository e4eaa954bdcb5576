"""``bdi up`` as a real process: broker, API and consumers come up on free ports, frames
published to Kafka get verdicts, SIGINT stops every process it started."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest

from edge.simulator.discs import encode_png, make_ng, make_ok
from tests.consumers.kafka_io import ROI, ROLE, answered, disc_frames, parse, produce, read_until
from tests.edge.conftest import free_port

pytestmark = [pytest.mark.slow, pytest.mark.kafka]
SIZE = 96
IDS = {"recipe_id": "disc-a", "role_id": ROLE, "roi_id": ROI}


def _alive(pid: int) -> bool:
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


class Output:
    """The process's output lines, collected in a thread; ``wait_for(pattern)``."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._pump, args=(proc,), daemon=True)
        self._thread.start()

    def _pump(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.lines.append(line)

    def wait_for(self, pattern: str, timeout_s: float = 120) -> re.Match[str]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for line in self.lines:
                if m := re.search(pattern, line):
                    return m
            time.sleep(0.1)
        raise AssertionError(f"{pattern!r} not seen:\n{''.join(self.lines[-40:])}")


def _train(api: str) -> None:
    ok = [encode_png(make_ok(s, SIZE).image) for s in range(20)]
    r = httpx.post(
        f"{api}/fit_ok",
        data={**IDS, "mm_per_px": "0.1"},
        files=[("images", (f"{i}.png", b)) for i, b in enumerate(ok)],
        timeout=120,
    )
    assert r.status_code == 200, r.text
    scores: dict[str, list[float]] = {"ok_scores": [], "ng_scores": []}
    for seed in range(100, 106):
        for key, disc in (("ok_scores", make_ok(seed, SIZE)), ("ng_scores", make_ng(seed, SIZE))):
            res = httpx.post(
                f"{api}/infer",
                data=IDS,
                files={"image": ("f.png", encode_png(disc.image))},
                timeout=60,
            )
            scores[key].append(res.json()["score"])
    cal = httpx.post(f"{api}/calibrate_ng", json={**IDS, **scores}, timeout=60)
    assert cal.status_code == 200, cal.text


def test_bdi_up_runs_the_line_and_stops_cleanly(tmp_path):
    api_port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("BDI_", "BRAKEDISC_"))},
        "BDI_MODELS_DIR": str(tmp_path / "models"),
        "BDI_IMAGE_SIZE": str(SIZE),
        "BDI_MODEL_POLL_S": "0.5",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge.cli", "up", "--port", str(api_port), "--broker-port", "0",
         "--partitions", "2", "--consumers", "2"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    out = Output(proc)
    pids: list[int] = []
    try:
        bootstrap = out.wait_for(r"Kafka\s+: (\S+)").group(1)
        assert f"http://127.0.0.1:{api_port}" in "".join(out.lines)
        assert "CPU allowed" in "".join(out.lines)
        pids = [int(p) for p in re.findall(r"=(\d+)", out.wait_for(r"processes : .*").group(0))]
        assert len(pids) == 4  # api, two consumers, the broker
        out.wait_for(r"consumer-2\].*partitions assigned")
        _train(f"http://127.0.0.1:{api_port}")

        frames = disc_frames(20, SIZE, ng_every=5, tag="up")
        asyncio.run(produce(bootstrap, "bdi.frames", frames))
        records = asyncio.run(
            read_until(bootstrap, "bdi.verdicts", answered({f.frame_id for f in frames}))
        )
        verdicts = {v["frame_id"]: v["verdict"] for v in parse(records)}
        assert verdicts == {f.frame_id: f.expect for f in frames}
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 0, "".join(out.lines[-30:])
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in pids if _alive(p)], "bdi up left processes running"
