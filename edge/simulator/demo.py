"""``bdi demo``: a working line in one command.

Starts what ``bdi up`` starts unless the API already answers, trains a demo recipe from
generated OK discs through the REST API, calibrates it with generated NG discs, then runs a
synthetic camera publishing frames at ``--fps`` (a few % defective) and shows a live view
of the verdicts coming back from Kafka.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import socket
import sys
import time
from collections import Counter, deque
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

from configs.settings import Settings

DEMO_IDS = {"recipe_id": "demo", "role_id": "camera-1", "roi_id": "friction-ring"}
DEMO_MM_PER_PX = 0.05
CHUNK = 1000  # frames generated per seeded stream chunk
DRAIN_S = 30.0  # after the last frame, how long the line may take to answer what is in flight
DRAIN_AFTER_CTRL_C_S = 5.0  # the same after a Ctrl-C (a second one ends the wait)


def add_demo_command(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    demo = sub.add_parser("demo", help="train a demo recipe and stream synthetic discs through it")
    demo.add_argument("--fps", type=float, default=10.0, help="camera frames per second")
    demo.add_argument("--ng-rate", type=float, default=0.05, help="share of defective discs")
    demo.add_argument("--duration", type=float, default=0.0, help="seconds (0: until Ctrl-C)")
    demo.add_argument("--train", type=int, default=30, help="OK images to train from")
    demo.add_argument("--size", type=int, default=224, help="generated ROI size (px)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the generated discs")
    demo.add_argument("--no-live", action="store_true", help="plain status lines, no live view")
    demo.add_argument("--port", type=int, default=None, help="API port (BDI_BACKEND_PORT)")
    demo.add_argument("--broker-port", type=int, default=None, help="local broker port")
    demo.set_defaults(func=cmd_demo)


@dataclass
class LineStats:
    sent: int = 0
    verdicts: Counter[str] = field(default_factory=Counter)
    latencies_ms: deque[float] = field(default_factory=lambda: deque(maxlen=2000))
    last_ng: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=5))
    answered_at: deque[float] = field(default_factory=lambda: deque(maxlen=5000))
    lag: int | None = None
    wrong: int = 0
    interrupts: int = 0  # Ctrl-C / SIGTERM received
    failure: str | None = None  # why the line stopped early: the service went away

    def rate(self, window_s: float = 5.0) -> float:
        now = time.monotonic()
        recent = [t for t in self.answered_at if now - t <= window_s]
        return len(recent) / window_s

    def percentile(self, q: float) -> float | None:
        return float(np.percentile(list(self.latencies_ms), q)) if self.latencies_ms else None


def _service_url(settings: Settings) -> str | None:
    from edge.cli.up import api_url

    url = api_url(settings)
    try:
        return url if httpx.get(f"{url}/health", timeout=1.0).status_code == 200 else None
    except httpx.TransportError:
        return None


def train_demo(
    url: str, size: int, n_train: int, seed: int, say: Any, api_key: str | None = None
) -> float:
    """Fit from generated OK discs, calibrate with held-out OK and NG scores; the threshold.
    With named users (docs/AUTH.md) the demo trains as a machine: ``BDI_API_KEY``, whose
    role (``BDI_API_KEY_ROLE``) must be engineer."""
    from edge.simulator.discs import encode_png, make_ng, make_ok

    base = 2_000_000 + seed * 10_000
    ok = [encode_png(make_ok(base + i, size).image) for i in range(n_train)]
    say(f"training recipe {DEMO_IDS['recipe_id']!r} from {n_train} generated OK discs ...")
    headers = {"X-API-Key": api_key} if api_key else {}
    with httpx.Client(base_url=url, timeout=600, headers=headers) as http:
        # one ROI makes a demo disc: its plan gives every disc a part verdict (docs/PARTS.md)
        plan = {"rois": [{"role_id": DEMO_IDS["role_id"], "roi_id": DEMO_IDS["roi_id"]}]}
        put = http.put(f"/recipes/{DEMO_IDS['recipe_id']}/plan", json=plan)
        if put.status_code != 200:
            raise RuntimeError(f"the demo's inspection plan was refused: {put.status_code} "
                               f"{put.text}")  # fmt: skip
        fit = http.post(
            "/fit_ok", data={**DEMO_IDS, "mm_per_px": str(DEMO_MM_PER_PX)},
            files=[("images", (f"ok{i}.png", b, "image/png")) for i, b in enumerate(ok)],
        )  # fmt: skip
        if fit.status_code != 200:
            raise RuntimeError(f"training failed: {fit.status_code} {fit.text}")
        body = fit.json()
        say(f"  model {body['model_version']}: {body['memory_bank']} patches, "
            f"{body['timings_s']['fit_s']:.1f} s")  # fmt: skip
        scores: dict[str, list[float]] = {"ok_scores": [], "ng_scores": []}
        for i in range(12):
            for key, disc in (("ok_scores", make_ok(base + 5_000 + i, size)),
                              ("ng_scores", make_ng(base + 5_000 + i, size))):  # fmt: skip
                image = {"image": ("x.png", encode_png(disc.image), "image/png")}
                r = http.post("/infer", data=DEMO_IDS, files=image)
                if r.status_code != 200:
                    raise RuntimeError(f"scoring failed: {r.status_code} {r.text}")
                scores[key].append(r.json()["score"])
        cal = http.post("/calibrate_ng", json={**DEMO_IDS, **scores})
        if cal.status_code != 200:
            raise RuntimeError(f"calibration failed: {cal.status_code} {cal.text}")
        c = cal.json()
        say(f"  calibrated with 12 OK + 12 NG: threshold {c['threshold']:.3f}, NG missed "
            f"{c['ng_miss_rate']:.0%}, OK rejected {c['ok_reject_rate']:.0%}")  # fmt: skip
        return float(c["threshold"])


def cmd_demo(args: argparse.Namespace) -> int:
    from edge.cli.supervisor import shutdown
    from edge.cli.up import api_url, default_consumers, dev_settings, start_service

    settings = dev_settings(args.port)
    if not 0.0 <= args.ng_rate <= 1.0 or args.fps <= 0:
        raise ValueError("--ng-rate must be in [0, 1] and --fps positive")
    sup = None
    url = _service_url(settings)
    try:
        if url is None:
            print("starting broker, API and consumers (as bdi up) ...", flush=True)
            n = default_consumers(settings)
            sup = start_service(settings, n, max(4, n), args.broker_port, 180.0, prog="bdi demo")
            bootstrap = sup.env["BDI_KAFKA_BOOTSTRAP"]
            print(f"  API {api_url(settings)}, Kafka {bootstrap}, processes: {sup.pids()}",
                  flush=True)  # fmt: skip
            url = _service_url(settings)
            assert url is not None
        else:
            from edge.cli.up import DEFAULT_BROKER_PORT

            bootstrap = settings.kafka_bootstrap or f"127.0.0.1:{DEFAULT_BROKER_PORT}"
            print(f"using the running service at {url}, Kafka {bootstrap}", flush=True)
        key = settings.api_key.get_secret_value() if settings.api_key else None
        train_demo(url, args.size, args.train, args.seed, lambda m: print(m, flush=True), key)
        stats = asyncio.run(_run_line(args, settings, bootstrap, url, sup))
    except KeyboardInterrupt:
        print("bdi demo: interrupted before the camera started", file=sys.stderr, flush=True)
        return 130
    except RuntimeError as exc:
        print(f"bdi demo: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        if sup is not None:
            shutdown(sup, settings.shutdown_grace_s, "bdi demo")
    lost = stats.sent - sum(stats.verdicts.values())
    if not sys.stdout.isatty() or args.no_live:  # the live view already showed it otherwise
        from rich.console import Console

        Console(width=100).print(_table(stats))
    print(_summary(stats, lost), flush=True)
    if stats.failure is not None:
        return 1
    return 0 if (lost == 0 or stats.interrupts) and stats.wrong == 0 else 1


async def _run_line(args: argparse.Namespace, settings: Settings, bootstrap: str, url: str,
                    sup: Any) -> LineStats:  # fmt: skip
    from aiokafka.errors import KafkaError

    from consumers.errors import ConsumerError
    from consumers.security import security_options
    from edge.simulator.camera import Camera, VerdictReader

    # when the broker goes away the demo says so once (_watch_service); the Kafka clients
    # would log it again on every poll until they are closed
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    stats = LineStats()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def interrupt() -> None:
        stats.interrupts += 1
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, interrupt)
    ids = DEMO_IDS
    # TLS / SASL for the broker at BDI_KAFKA_BOOTSTRAP; a local one (bdi up's) is plaintext
    options = security_options(settings) if settings.kafka_bootstrap else {}
    camera = Camera(bootstrap, settings.kafka_topic_frames, ids["recipe_id"], ids["role_id"],
                    ids["roi_id"], mm_per_px=DEMO_MM_PER_PX, options=options)  # fmt: skip
    try:
        await camera.start()
        reader = await VerdictReader(bootstrap, settings.kafka_topic_verdicts,
                                     options=options).start()  # fmt: skip
    except (KafkaError, ConsumerError) as exc:
        await _bounded(camera.stop())
        raise RuntimeError(f"cannot use the broker at {bootstrap}: {exc}") from None
    expected: dict[str, str] = {}
    tasks = [
        asyncio.create_task(_publish(args, camera, stats, expected, stop)),
        asyncio.create_task(_collect(reader, camera, stats, expected, stop)),
        asyncio.create_task(_watch_lag(bootstrap, settings, options, stats, stop)),
        asyncio.create_task(_watch_service(bootstrap, url, sup, stats, stop)),
    ]
    try:
        await _show(args, stats, stop)
        # the camera has stopped: give the line a moment to answer what is in flight (less
        # after a Ctrl-C, none once the service is gone; a second Ctrl-C ends the wait)
        deadline = time.monotonic() + (DRAIN_AFTER_CTRL_C_S if stats.interrupts else DRAIN_S)
        while (sum(stats.verdicts.values()) < stats.sent and time.monotonic() < deadline
               and stats.interrupts < 2 and stats.failure is None):  # fmt: skip
            await asyncio.sleep(0.1)
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        await _bounded(asyncio.gather(*tasks, return_exceptions=True))
        await _bounded(camera.stop())
        await _bounded(reader.stop())
    return stats


async def _bounded(aw: Awaitable[Any], timeout_s: float = 2.0) -> None:
    """Clean-up that must not hold the exit when the broker is gone (a producer's close
    would otherwise wait out its request timeout for frames it cannot deliver)."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(aw, timeout_s)


async def _watch_service(bootstrap: str, url: str, sup: Any, stats: LineStats,
                         stop: asyncio.Event) -> None:  # fmt: skip
    """Stop the line, saying why in one line, when the service goes away under it: a child
    of ours exits, or the API or the broker stops answering (twice in a row)."""
    misses = 0
    while True:
        await asyncio.sleep(1.0)
        dead = sup.first_exit() if sup is not None else None
        gone = f"{dead.name} exited" if dead is not None else await _unreachable(bootstrap, url)
        misses = misses + 1 if gone else 0
        if gone and (dead is not None or misses >= 2):
            stats.failure = f"the service went away: {gone}"
            print(f"bdi demo: {stats.failure}; stopping", file=sys.stderr, flush=True)
            stop.set()
            return


async def _unreachable(bootstrap: str, url: str) -> str | None:
    try:
        async with httpx.AsyncClient(timeout=2.0) as http:
            await http.get(f"{url}/health")
    except httpx.TransportError:
        return f"the API at {url} does not answer"
    # in a thread, which closes its socket even when this task is cancelled meanwhile (a
    # socket left open here would keep the broker from stopping)
    if await asyncio.to_thread(_broker_answers, bootstrap):
        return None
    return f"the broker at {bootstrap} does not answer"


def _broker_answers(bootstrap: str) -> bool:
    for server in bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        with contextlib.suppress(OSError, ValueError):
            socket.create_connection((host, int(port)), timeout=2.0).close()
            return True
    return False


async def _publish(args: Any, camera: Any, stats: LineStats, expected: dict[str, str],
                   stop: asyncio.Event) -> None:  # fmt: skip
    from edge.simulator.camera import CameraFrame
    from edge.simulator.discs import encode_png, stream

    def discs() -> Any:  # endless when no duration: chunks of a seeded stream
        total = int(args.duration * args.fps) if args.duration else None
        chunk = 0
        while total is None or chunk * CHUNK < total:
            n = CHUNK if total is None else min(CHUNK, total - chunk * CHUNK)
            yield from stream(args.seed * 100_003 + chunk, n, args.size, args.ng_rate)
            chunk += 1

    start = time.monotonic()
    for i, disc in enumerate(discs()):
        if stop.is_set():
            break
        delay = start + i / args.fps - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        frame = CameraFrame(
            f"demo-{args.seed}-{i:07d}", f"disc-{i:07d}", encode_png(disc.image), disc.defect
        )
        expected[frame.frame_id] = "NG" if disc.defect else "OK"
        await camera.send(frame)
        stats.sent += 1
    stop.set()


async def _collect(reader: Any, camera: Any, stats: LineStats, expected: dict[str, str],
                   stop: asyncio.Event) -> None:  # fmt: skip
    seen: set[str] = set()
    while True:
        for v in await reader.poll(100):
            fid = v.get("frame_id")
            if fid in seen or fid not in expected:
                continue  # a duplicate (at-least-once), or not one of ours
            seen.add(fid)
            stats.verdicts[v["verdict"]] += 1
            stats.answered_at.append(time.monotonic())
            if fid in camera.sent_at:
                stats.latencies_ms.append((reader.received_at[fid] - camera.sent_at[fid]) * 1e3)
            if v["verdict"] in ("OK", "NG") and v["verdict"] != expected[fid]:
                stats.wrong += 1
            if v["verdict"] == "NG":
                stats.last_ng.appendleft(v)


async def _watch_lag(bootstrap: str, settings: Settings, options: dict[str, Any],
                     stats: LineStats, stop: asyncio.Event) -> None:  # fmt: skip
    from aiokafka import AIOKafkaConsumer

    from consumers.topics import topic_partitions

    client = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=settings.kafka_group,
                              enable_auto_commit=False, **options)  # fmt: skip
    await client.start()
    try:
        # waits for the metadata: a fresh client may not know the topic's partitions yet
        tps = await topic_partitions(client, settings.kafka_topic_frames)
        while not stop.is_set():
            ends = await client.end_offsets(tps)
            committed = [await client.committed(tp) or 0 for tp in tps]
            stats.lag = int(sum(ends[tp] for tp in tps) - sum(committed))
            await asyncio.sleep(1.0)
    finally:
        await _bounded(client.stop())


def _fmt(value: float | None, unit: str = "ms") -> str:
    return "-" if value is None else f"{value:.0f} {unit}"


def _table(stats: LineStats) -> Any:
    from rich.table import Table

    t = Table(title="BDI Edge demo line", show_header=False, min_width=60)
    t.add_row("frames sent", str(stats.sent))
    t.add_row("verdicts/s (5 s)", f"{stats.rate():.1f}")
    t.add_row("OK / NG / ERROR / NO_MODEL", " / ".join(
        str(stats.verdicts[k]) for k in ("OK", "NG", "ERROR", "NO_MODEL")))  # fmt: skip
    t.add_row("latency p50 / p99", f"{_fmt(stats.percentile(50))} / {_fmt(stats.percentile(99))}")
    t.add_row("consumer lag", "-" if stats.lag is None else str(stats.lag))
    for v in list(stats.last_ng)[:3]:
        regions = v.get("regions") or []
        area = sum((r.get("area_mm2") or 0.0) for r in regions)
        t.add_row(f"NG {v['frame_id']}", f"score {v['score']:.2f}, {len(regions)} region(s), "
                  f"{area:.1f} mm²")  # fmt: skip
    return t


async def _show(args: Any, stats: LineStats, stop: asyncio.Event) -> None:
    live_view = sys.stdout.isatty() and not args.no_live
    if live_view:
        from rich.live import Live

        with Live(_table(stats), refresh_per_second=4) as live:
            while not stop.is_set():
                live.update(_table(stats))
                await asyncio.sleep(0.25)
            live.update(_table(stats))
        return
    last = 0.0
    while not stop.is_set():
        if time.monotonic() - last >= 2.0:
            last = time.monotonic()
            print(f"sent {stats.sent}  verdicts {dict(stats.verdicts)}  "
                  f"p50 {_fmt(stats.percentile(50))}  p99 {_fmt(stats.percentile(99))}  "
                  f"lag {stats.lag}", flush=True)  # fmt: skip
        await asyncio.sleep(0.1)


def _summary(stats: LineStats, lost: int) -> str:
    counts = ", ".join(f"{k} {stats.verdicts[k]}" for k in ("OK", "NG", "ERROR", "NO_MODEL"))
    stopped = stats.interrupts or stats.failure  # not lost: still in Kafka, unanswered yet
    missing = f"unanswered {lost} when stopped" if stopped else f"lost {lost}"
    return (f"demo: {stats.sent} frames, {sum(stats.verdicts.values())} verdicts ({counts}), "
            f"{missing}, wrong {stats.wrong}, latency p50 {_fmt(stats.percentile(50))} "
            f"p99 {_fmt(stats.percentile(99))}")  # fmt: skip
