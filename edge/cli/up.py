"""``bdi up``: the whole service on one machine, on embedded defaults.

A supervisor, not a server: it starts a local Kafka-compatible broker (when
``BDI_KAFKA_BOOTSTRAP`` is unset), creates the topics, then runs ``bdi serve`` and
``bdi consume`` as child processes in their own sessions, so that Ctrl-C reaches the
supervisor alone and the children are stopped in order: consumers first (they drain
their in-flight batch), then the API, then the broker. If any child exits on its own,
everything else is stopped too and ``bdi up`` exits non-zero.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from configs.settings import Settings, load_settings

# Dev defaults applied only where the variable is unset: the packaged backbone, CPU allowed.
DEV_DEFAULTS = {"BDI_REQUIRE_CUDA": "0", "BDI_BACKBONE": "efficientnet_lite0"}
DEFAULT_BROKER_PORT = 9092


def add_up_command(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    up = sub.add_parser(
        "up",
        help="start broker (if needed), REST API and consumers on embedded defaults",
        description="Start the whole service: a local Kafka-compatible broker when "
        "BDI_KAFKA_BOOTSTRAP is unset, the REST API and the consumers. Ctrl-C stops all.",
    )
    up.add_argument(
        "--consumers", type=int, default=None,
        help="consumer processes (default: 1 on a GPU; on the CPU one per core, 1 torch thread "
        "each, which keeps up better than one process with several threads)",
    )  # fmt: skip
    up.add_argument("--partitions", type=int, default=4, help="frames topic partitions")
    up.add_argument("--port", type=int, default=None, help="API port (BDI_BACKEND_PORT)")
    up.add_argument(
        "--broker-port", type=int, default=None,
        help=f"local broker port (default {DEFAULT_BROKER_PORT}, or a free one if taken)",
    )  # fmt: skip
    up.add_argument("--ready-timeout", type=float, default=120.0, help="seconds to wait")
    up.set_defaults(func=cmd_up)


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    pump: threading.Thread | None = None


@dataclass
class Supervisor:
    env: dict[str, str]
    children: list[Child] = field(default_factory=list)
    broker: object | None = None  # consumers.LocalBroker

    def spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> Child:
        process = subprocess.Popen(
            [sys.executable, "-m", "edge.cli", *args],
            env={**self.env, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C goes to the supervisor, which stops us in order
        )
        child = Child(name, process)
        child.pump = threading.Thread(target=_prefix_output, args=(child,), daemon=True)
        child.pump.start()
        self.children.append(child)
        return child

    def pids(self) -> str:
        out = ", ".join(f"{c.name}={c.process.pid}" for c in self.children)
        if self.broker is not None:
            out += f", broker={self.broker.process.pid}"  # type: ignore[attr-defined]
        return out

    def first_exit(self) -> Child | None:
        return next((c for c in self.children if c.process.poll() is not None), None)

    def stop(self, grace_s: float) -> None:
        # consumers first (they finish or abandon their batch), then the API
        for group in (
            [c for c in self.children if c.name.startswith("consumer")],
            [c for c in self.children if not c.name.startswith("consumer")],
        ):
            for c in group:
                if c.process.poll() is None:
                    c.process.send_signal(signal.SIGTERM)
            for c in group:
                try:
                    c.process.wait(grace_s + 5)
                except subprocess.TimeoutExpired:
                    c.process.kill()
                    c.process.wait(5)
        for c in self.children:
            if c.pump is not None:
                c.pump.join(2)
        if self.broker is not None:
            self.broker.stop()  # type: ignore[attr-defined]


def _prefix_output(child: Child) -> None:
    """Each child's output on ours, one line at a time, prefixed with its name."""
    assert child.process.stdout is not None
    for raw in iter(child.process.stdout.readline, b""):
        sys.stdout.write(f"[{child.name}] {raw.decode(errors='replace')}")
        sys.stdout.flush()


def _wait_http(url: str, deadline: float, sup: Supervisor) -> None:
    import httpx

    while True:
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if (dead := sup.first_exit()) is not None:
            raise RuntimeError(f"{dead.name} exited with status {dead.process.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer in time")
        time.sleep(0.2)


def _start_broker(port: int | None) -> object:
    from consumers import LocalBroker
    from consumers.broker import answers

    if port is None:
        taken = answers("127.0.0.1", DEFAULT_BROKER_PORT)
        port = None if taken else DEFAULT_BROKER_PORT
    return LocalBroker(port=port).start()


def _banner(settings: Settings, bootstrap: str, local: bool, n: int) -> str:
    url = api_url(settings)
    cpu = not settings.require_cuda
    lines = [
        "BDI Edge is up",
        f"  REST API  : {url}   (OpenAPI: {url}/docs)",
        f"  Kafka     : {bootstrap}" + ("   (local broker, in memory)" if local else ""),
        f"  topics    : frames {settings.kafka_topic_frames} -> verdicts "
        f"{settings.kafka_topic_verdicts}, dead letters {settings.kafka_topic_dlq}",
        f"  consumers : {n} in group {settings.kafka_group}",
        f"  backbone  : {settings.backbone} @ {settings.image_size}px",
        f"  models    : {Path(settings.models_dir).resolve()}",
    ]
    if cpu:
        lines.append("  device    : CPU allowed (BDI_REQUIRE_CUDA=0, development default)")
    lines.append("  Ctrl-C stops everything.")
    return "\n".join(lines)


def dev_settings(port: int | None = None) -> Settings:
    """Settings with the development defaults filled in where unset. They go into this
    process's environment, which is what the children inherit."""
    for name, value in DEV_DEFAULTS.items():
        if name == "BDI_BACKBONE" and os.environ.get("BDI_BACKBONE_WEIGHTS"):
            continue  # a weights file is given: keep the production backbone
        os.environ.setdefault(name, value)
    if port is not None:
        os.environ["BDI_BACKEND_PORT"] = str(port)
    return load_settings()  # what the children will read, validated before anything starts


def _has_cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def default_consumers(settings: Settings) -> int:
    """One per core on the CPU (each with one torch thread: measured in docs/BENCHMARKS.md,
    two 1-thread consumers keep up better than one 2-thread one), one on a GPU."""
    if _has_cuda():
        return 1
    return max(1, min(os.cpu_count() or 1, 8))


def _preflight(settings: Settings) -> None:
    """Fail here, with the engine's own message, rather than in a child after the broker
    started: no CUDA when it is required, a missing or wrong weights file."""
    from engine import Engine

    Engine.from_settings(settings).backbone()


def api_url(settings: Settings) -> str:
    host = "127.0.0.1" if settings.backend_host in ("0.0.0.0", "::") else settings.backend_host
    return f"http://{host}:{settings.backend_port}"


def start_service(
    settings: Settings, consumers: int, partitions: int, broker_port: int | None,
    ready_timeout_s: float,
) -> Supervisor:  # fmt: skip
    """Broker (when none is configured), topics, API and consumers; returns once the API
    answers. On failure everything started so far is stopped again."""
    if consumers < 1:
        raise ValueError("--consumers must be at least 1")
    _preflight(settings)
    sup = Supervisor(dict(os.environ))
    try:
        if not settings.kafka_bootstrap:
            sup.broker = _start_broker(broker_port)
            sup.env["BDI_KAFKA_BOOTSTRAP"] = sup.broker.bootstrap  # type: ignore[attr-defined]
        _create_topics(sup.env["BDI_KAFKA_BOOTSTRAP"], settings, partitions)
        deadline = time.monotonic() + ready_timeout_s
        sup.spawn("api", ["serve"])
        on_cpu = consumers > 1 and not _has_cuda() and "BDI_TORCH_THREADS" not in os.environ
        threads = {"BDI_TORCH_THREADS": str(max(1, (os.cpu_count() or 1) // consumers))}
        for i in range(consumers):
            sup.spawn(f"consumer-{i + 1}", ["consume"], threads if on_cpu else None)
        _wait_http(f"{api_url(settings)}/health", deadline, sup)
    except BaseException:
        sup.stop(settings.shutdown_grace_s)
        raise
    return sup


def cmd_up(args: argparse.Namespace) -> int:
    settings = dev_settings(args.port)
    stop = threading.Event()
    previous = {
        sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    sup: Supervisor | None = None
    consumers = args.consumers if args.consumers is not None else default_consumers(settings)
    partitions = max(args.partitions, consumers)  # a consumer without a partition idles
    try:
        sup = start_service(settings, consumers, partitions, args.broker_port, args.ready_timeout)
        bootstrap = sup.env["BDI_KAFKA_BOOTSTRAP"]
        print(_banner(settings, bootstrap, sup.broker is not None, consumers), flush=True)
        print(f"  processes : {sup.pids()}", flush=True)
        while not stop.wait(0.2):
            if (dead := sup.first_exit()) is not None:
                print(f"bdi up: {dead.name} exited ({dead.process.returncode}); stopping",
                      file=sys.stderr, flush=True)  # fmt: skip
                return 1
        print("bdi up: stopping", flush=True)
        return 0
    except RuntimeError as exc:
        print(f"bdi up: {exc}; stopping", file=sys.stderr, flush=True)
        return 1
    finally:
        if sup is not None:
            sup.stop(settings.shutdown_grace_s)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _create_topics(bootstrap: str, settings: Settings, partitions: int) -> None:
    from consumers import ensure_topics

    topics = {
        settings.kafka_topic_frames: partitions,
        settings.kafka_topic_verdicts: partitions,
        settings.kafka_topic_dlq: 1,
    }
    if settings.kafka_topic_heatmaps:
        topics[settings.kafka_topic_heatmaps] = 1
    asyncio.run(ensure_topics(bootstrap, topics))
