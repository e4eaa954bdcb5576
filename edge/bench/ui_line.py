"""``bdi bench ui``: the Line page at a verdict rate for minutes, in a real browser. Does
it keep up, and does the tab's memory stay flat?

Starts an embedded broker, ``bdi serve`` with a user, and Debian's Chromium (Playwright,
headless) on ``/ui#/line``; after ``--idle`` seconds with no traffic (the baseline), a
producer writes ``bdi.verdict/1`` records to the verdicts topic at ``--rate`` per second for
``--duration`` seconds: 10 % NG with a region, 1 % ERROR, frame ids numbered in order. The
verdicts are synthetic because the subject is the page (the CPU here scores far below
50 frames/s); the path is the real one: Kafka -> the API's live feed -> server-sent events
-> the page. Every ``--sample`` seconds, after a forced garbage collection, the tab's JS heap,
DOM node and listener counts (Chrome DevTools ``Performance.getMetrics``), how far the
newest frame id in the page's table trails the newest one produced, and the page's long
tasks (main thread busy > 50 ms: what a user feels as a freeze) are recorded.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson

LONG_TASKS_JS = """
window.__bdiLongTasks = [];
new PerformanceObserver((list) => {
  for (const e of list.getEntries()) window.__bdiLongTasks.push(e.duration);
}).observe({ entryTypes: ["longtask"] });
"""
NEWEST_JS = """() => {
  const rows = document.querySelector('[data-testid=line-rows]');
  const ids = (rows ? rows.innerText : '').match(/bench-(\\d+)/g) || [];
  return ids.reduce((m, id) => Math.max(m, parseInt(id.slice(6))), -1);
}"""
ARGS = ["--no-sandbox", "--headless=new", "--disable-gpu", "--disable-dev-shm-usage"]
PASSWORD = "bench-password-1"


def verdict_record(seq: int, now_ms: int) -> dict[str, Any]:
    """A ``bdi.verdict/1`` record as a consumer writes it (docs/KAFKA.md)."""
    from consumers.verdicts import SCHEMA

    ng, error = seq % 10 == 3, seq % 100 == 57
    verdict = "ERROR" if error else "NG" if ng else "OK"
    score = None if error else (31.5 + seq % 7 if ng else 12.0 + seq % 5)
    region = {"bbox": [40, 30, 12, 20], "area_px": 180, "area_mm2": 0.45,
              "max_score": 30.1, "mean_score": 26.0}  # fmt: skip
    return {
        "schema": SCHEMA, "frame_id": f"bench-{seq:09d}", "frame_id_derived": False,
        "part_id": f"SN-{seq // 4:08d}", "recipe_id": "bench", "role_id": "camera-1",
        "roi_id": f"roi-{seq % 4}", "verdict": verdict, "score": score,
        "threshold": None if error else 30.0, "p_value": None if error else 0.5,
        "drift": False, "regions": [region] if ng else [], "regions_total": int(ng),
        "model_version": None if error else "0123456789abcdef",
        "calibration_version": None if error else "fedcba9876543210",
        "image_sha256": "0" * 64, "code_version": "bench", "settings_fingerprint": "bench",
        "source": {"topic": "bdi.frames", "partition": 0, "offset": seq},
        "timings": {"queue_ms": 1.0, "decode_ms": 1.0, "inference_ms": 20.0, "total_ms": 22.0},
        "error_class": "InferenceError" if error else None,
        "error": "synthetic error" if error else None, "dead_lettered": error,
        "produced_at": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now_ms / 1000))
        + f".{now_ms % 1000:03d}+00:00",
    }  # fmt: skip


class RateProducer(threading.Thread):
    """Writes verdict records at ``rate`` per second on its own event loop until stopped."""

    def __init__(self, bootstrap: str, topic: str, rate: float) -> None:
        super().__init__(daemon=True)
        self.bootstrap, self.topic, self.rate = bootstrap, topic, rate
        self.sent = 0
        self.error: BaseException | None = None
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()
        self.join(30)

    def run(self) -> None:
        try:
            asyncio.run(self._produce())
        except BaseException as exc:  # reported in the result, never a silent stop
            self.error = exc

    async def _produce(self) -> None:
        from aiokafka import AIOKafkaProducer

        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=5)
        await producer.start()
        try:
            t0 = time.monotonic()
            while not self._halt.is_set():
                due = t0 + self.sent / self.rate
                if (wait := due - time.monotonic()) > 0:
                    await asyncio.sleep(wait)
                record = verdict_record(self.sent, int(time.time() * 1000))
                key = record["part_id"].encode()
                await producer.send(self.topic, orjson.dumps(record), key=key)
                self.sent += 1
            await producer.flush()
        finally:
            await producer.stop()


def _slope_per_min(ts: list[float], ys: list[float]) -> float:
    if len(ts) < 2:
        return 0.0
    return float(np.polyfit(np.asarray(ts) / 60.0, np.asarray(ys), 1)[0])


def _start_api(models: Path, bootstrap: str, port: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BDI_", "BRAKEDISC_"))}
    env.update(BDI_MODELS_DIR=str(models), BDI_KAFKA_BOOTSTRAP=bootstrap,
               BDI_BACKEND_PORT=str(port), BDI_REQUIRE_CUDA="0")  # fmt: skip
    api = subprocess.Popen([sys.executable, "-m", "edge.cli", "serve"], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return api
        except httpx.TransportError:
            pass
        if api.poll() is not None:
            break
        time.sleep(0.5)
    api.kill()
    raise RuntimeError(f"bdi serve did not answer on port {port} (exit {api.poll()})")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_ui_benchmark(args: argparse.Namespace) -> int:
    chromium = args.chromium or shutil.which("chromium")
    if chromium is None:
        print("bdi bench ui: no chromium (apt-get install chromium, or --chromium PATH)",
              file=sys.stderr)  # fmt: skip
        return 2
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        print("bdi bench ui: no playwright (pip install -e '.[dev]')", file=sys.stderr)
        return 2
    from configs.settings import Settings
    from consumers.broker import LocalBroker
    from consumers.topics import ensure_topics, service_topics
    from store.users import Users

    topic = Settings().kafka_topic_verdicts
    with tempfile.TemporaryDirectory() as tmp, LocalBroker() as broker:
        models = Path(tmp) / "models"
        models.mkdir()
        Users(models).add("bench", "operator", PASSWORD)
        asyncio.run(ensure_topics(broker.bootstrap, service_topics(Settings(), 4)))
        port = _free_port()
        api = _start_api(models, broker.bootstrap, port)
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=chromium, args=ARGS)
                result = _measure(browser, f"http://127.0.0.1:{port}", broker.bootstrap,
                                  topic, args)  # fmt: skip
                browser.close()
        finally:
            api.terminate()
            api.wait(30)
    result["machine"] = {"cpu": platform.processor() or platform.machine(),
                         "cores": os.cpu_count(), "chromium": chromium}  # fmt: skip
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    return 0 if result["kept_up"] and result["producer_error"] is None else 1


def _measure(browser: Any, url: str, bootstrap: str, topic: str,
             args: argparse.Namespace) -> dict[str, Any]:  # fmt: skip
    page = browser.new_page(viewport={"width": 1440, "height": 900})
    page.add_init_script(LONG_TASKS_JS)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{url}/ui/login?next=%23%2Fline")
    page.fill("[data-testid=login-user]", "bench")
    page.fill("[data-testid=login-password]", PASSWORD)
    page.click("[data-testid=login-submit]")
    page.wait_for_selector("[data-testid=line-feed-state]")
    cdp = page.context.new_cdp_session(page)
    cdp.send("Performance.enable")
    producer = RateProducer(bootstrap, topic, args.rate)
    samples: list[dict[str, Any]] = []
    t0 = time.monotonic()

    def sample(phase: str) -> None:
        cdp.send("HeapProfiler.collectGarbage")
        metrics = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
        newest = int(page.evaluate(NEWEST_JS))
        long_tasks = page.evaluate("() => window.__bdiLongTasks.splice(0)")
        samples.append({
            "t_s": round(time.monotonic() - t0, 1), "phase": phase,
            "heap_mb": round(metrics["JSHeapUsedSize"] / 2**20, 3),
            "nodes": int(metrics["Nodes"]), "listeners": int(metrics["JSEventListeners"]),
            "produced": producer.sent, "behind": max(0, producer.sent - 1 - newest),
            "long_task_max_ms": round(max(long_tasks, default=0.0), 1),
            "long_tasks": len(long_tasks),
        })  # fmt: skip

    while time.monotonic() - t0 < args.idle:
        time.sleep(args.sample)
        sample("idle")
    producer.start()
    load_start = time.monotonic()
    while time.monotonic() - load_start < args.duration and producer.is_alive():
        time.sleep(args.sample)
        sample("load")
    producer.stop()
    time.sleep(2)
    sample("drained")
    return _summary(args, samples, producer, errors)


def _summary(args: argparse.Namespace, samples: list[dict[str, Any]],
             producer: RateProducer, errors: list[str]) -> dict[str, Any]:  # fmt: skip
    idle = [s for s in samples if s["phase"] == "idle"]
    load = [s for s in samples if s["phase"] == "load"]
    # the first minute fills the page's bounded buffers; flat means flat after that
    steady = [s for s in load if s["t_s"] - load[0]["t_s"] >= 60] if load else []
    steady = steady if len(steady) >= 3 else load
    heap = [s["heap_mb"] for s in steady]
    behind = [s["behind"] for s in load]
    tolerance = max(10, int(args.rate * 2))  # two seconds of verdicts: the page's batching
    return {
        "bench": "ui-line", "rate_per_s": args.rate, "duration_s": args.duration,
        "produced": producer.sent,
        "producer_error": None if producer.error is None else repr(producer.error),
        "achieved_rate_per_s": round(producer.sent / max(args.duration, 1e-9), 2),
        "baseline_idle_heap_mb": idle[-1]["heap_mb"] if idle else None,
        "heap_mb": {"steady_first": heap[0] if heap else None,
                    "steady_last": heap[-1] if heap else None,
                    "max": max(heap, default=None),
                    "slope_mb_per_min": round(_slope_per_min(
                        [s["t_s"] for s in steady], heap), 4)},
        "heap_last_over_idle": round(heap[-1] / idle[-1]["heap_mb"], 3) if heap and idle else None,
        "heap_last_over_steady_first": round(heap[-1] / heap[0], 3) if heap else None,
        "nodes": {"steady_first": steady[0]["nodes"] if steady else None,
                  "steady_last": steady[-1]["nodes"] if steady else None},
        "behind_frames": {"max": max(behind, default=None),
                          "median": sorted(behind)[len(behind) // 2] if behind else None,
                          "drained": samples[-1]["behind"]},
        "long_task_max_ms": max((s["long_task_max_ms"] for s in samples), default=0.0),
        "long_tasks": sum(s["long_tasks"] for s in samples),
        "kept_up": bool(load) and max(behind) <= tolerance and samples[-1]["behind"] <= tolerance,
        "page_errors": errors[:5], "samples": samples,
    }  # fmt: skip
