"""``bdi up``: the whole service on one machine, on embedded defaults.

A supervisor, not a server: it checks that the API port and the consumers' health ports
are free, starts a local broker (when ``BDI_KAFKA_BOOTSTRAP`` is unset: the embedded Tansu,
or Apache Kafka with ``--broker kafka``),
creates the topics, then runs ``bdi serve``, ``bdi consume`` and ``bdi trace`` (the trace
store, unless ``--no-trace``) as child processes. The
children and the broker run in their own sessions, so that Ctrl-C reaches the supervisor
alone and they are stopped in order: consumers first (they finish their batch and commit),
then the API, then the broker; a summary says what stopped, how and when. "Up" is printed
only once the API child has bound its port (its banner line) and answers, and every
consumer's health endpoint reports it joined the group. If any child exits on its own,
everything else is stopped too and ``bdi up`` exits non-zero.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from configs.settings import Settings, apply_profile, load_settings
from edge.cli.serve import check_port_free
from edge.cli.supervisor import Child, Supervisor, on_interrupt, restore, shutdown

if TYPE_CHECKING:
    from consumers.apache_kafka import KafkaCluster
    from consumers.broker import LocalBroker

DEFAULT_BROKER_PORT = 9092
# consumer i (from 0) serves /health and /metrics on base + i; under ``bdi up`` the base is
# the first run of free ports from here when BDI_CONSUMER_HEALTH_PORT is unset
DEFAULT_HEALTH_PORT = 9400
HEALTH_PORT_SEARCH = 200


class Interrupted(Exception):
    """Ctrl-C (or SIGTERM) while the service was starting."""


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
        "--broker", choices=("tansu", "kafka"), default="tansu",
        help="the local broker when BDI_KAFKA_BOOTSTRAP is unset: tansu (embedded, in memory, "
        "starts at once; no transactions) or kafka (Apache Kafka from its jars, one KRaft "
        "node; needs Java 17 and Maven, fetches the jars once)",
    )  # fmt: skip
    up.add_argument(
        "--broker-port", type=int, default=None,
        help=f"local broker port (default {DEFAULT_BROKER_PORT}, or a free one if taken)",
    )  # fmt: skip
    up.add_argument(
        "--no-trace", action="store_true",
        help="do not run bdi trace (the trace store of verdicts, part records and crops)",
    )  # fmt: skip
    up.add_argument("--ready-timeout", type=float, default=120.0, help="seconds to wait")
    up.set_defaults(func=cmd_up)


def _wait_ready(sup: Supervisor, api: Child, url: str, deadline: float,
                stop: threading.Event) -> None:  # fmt: skip
    """Until our API child says it holds its port and answers ``/health``, and every
    consumer's health endpoint answers 200 (joined its group)."""
    import httpx

    pending = [f"{url}/health"] + [c.health_url for c in sup.children if c.health_url]
    while True:
        if stop.is_set():
            raise Interrupted
        if (dead := sup.first_exit()) is not None:
            raise RuntimeError(f"{dead.name} exited with status {dead.process.returncode}")
        if api.bound.is_set():  # before, whatever answers on the port is not ours
            pending = [u for u in pending if not _answers_200(httpx, u)]
            if not pending:
                return
        if time.monotonic() > deadline:
            waiting = pending[0] if api.bound.is_set() else "the api to bind its port"
            raise RuntimeError(f"gave up waiting for {waiting}")
        time.sleep(0.2)


def _answers_200(httpx: Any, url: str) -> bool:
    try:
        return bool(httpx.get(url, timeout=1.0).status_code == 200)
    except httpx.TransportError:
        return False


def _start_broker(port: int | None, kind: str = "tansu") -> LocalBroker | KafkaCluster:
    from consumers.broker import LocalBroker, answers

    if port is None:
        taken = answers("127.0.0.1", DEFAULT_BROKER_PORT)
        port = None if taken else DEFAULT_BROKER_PORT
    elif port:
        check_port_free("127.0.0.1", port, "(another bdi up?); choose another with --broker-port")
    if kind == "kafka":
        from consumers.apache_kafka import KafkaCluster

        print("bdi up: starting Apache Kafka (one KRaft node) ...", file=sys.stderr, flush=True)
        return KafkaCluster(nodes=1, port=port or None).start()
    return LocalBroker(port=port).start()


def _broker_note(sup: Supervisor) -> str:
    from consumers.apache_kafka import KAFKA_VERSION, KafkaCluster

    if sup.broker is None:
        return ""
    if isinstance(sup.broker, KafkaCluster):
        return f" (local Apache Kafka {KAFKA_VERSION}, KRaft, logs in {sup.broker.root})"
    return " (local broker Tansu, in memory)"


def _local(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::") else host


def _banner(settings: Settings, sup: Supervisor) -> str:
    url = api_url(settings)
    consumers = [c for c in sup.children if c.name.startswith("consumer")]
    local = _broker_note(sup)
    lines = [
        "BDI Edge is up",
        f"  REST API  : {url}   (OpenAPI: {url}/docs)",
        f"  Kafka     : {sup.env['BDI_KAFKA_BOOTSTRAP']}{local}",
        f"  topics    : frames {settings.kafka_topic_frames} -> verdicts "
        f"{settings.kafka_topic_verdicts}, dead letters {settings.kafka_topic_dlq}",
        f"  consumers : {len(consumers)} in group {settings.kafka_group}"
        + (", health and metrics:" if any(c.health_url for c in consumers) else ""),
    ]
    lines += [
        f"              {c.name}  {c.health_url}  /metrics" for c in consumers if c.health_url
    ]
    if any(c.name == "trace" for c in sup.children):
        lines.append(f"  trace     : bdi trace in group {settings.trace_group} -> "
                     f"{trace_db(settings)} (GET /parts/{{part_id}}, /verdicts)")  # fmt: skip
    lines += [
        f"  backbone  : {settings.backbone} @ {settings.image_size}px",
        f"  models    : {Path(settings.models_dir).resolve()}",
    ]
    if not settings.require_cuda:
        why = "dev profile" if settings.profile == "dev" else "BDI_REQUIRE_CUDA=0"
        lines.append(f"  device    : CPU allowed ({why})")
    lines.append("  Ctrl-C stops everything.")
    return "\n".join(lines)


def trace_db(settings: Settings) -> str:
    """Where ``bdi trace`` stores (a PostgreSQL URL without its password); a bad
    ``BDI_TRACE_DB_URL`` raises here, before anything starts."""
    from store.trace.db import target

    where = target(settings.trace_db_url, Path(settings.models_dir).resolve())
    return f"{'SQLite' if where.dialect == 'sqlite' else 'PostgreSQL'} {where.shown}"


def dev_settings(port: int | None = None) -> Settings:
    """Settings of the dev profile (the CPU allowed, the packaged backbone, where unset),
    unless BDI_PROFILE or bdi.env chose one. It goes into this process's environment, which
    is what the children inherit."""
    apply_profile("dev")
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
    return f"http://{_local(settings.backend_host)}:{settings.backend_port}"


def health_ports(settings: Settings, n: int) -> list[int]:
    """Consumer i's health port: ``BDI_CONSUMER_HEALTH_PORT`` + i when the variable is set
    (0: none), else the first run of ``n`` free ports from ``DEFAULT_HEALTH_PORT``."""
    host, hint = settings.consumer_health_host, "(another bdi up?)"
    if os.environ.get("BDI_CONSUMER_HEALTH_PORT", "").strip():
        base = settings.consumer_health_port
        if base and base + n - 1 > 65535:
            raise ValueError(f"BDI_CONSUMER_HEALTH_PORT {base} + {n} consumers passes 65535")
        ports = list(range(base, base + n)) if base else []
        for port in ports:
            check_port_free(host, port, f"{hint}; set BDI_CONSUMER_HEALTH_PORT to a free base")
        return ports
    from edge.cli.serve import PortInUse

    for base in range(DEFAULT_HEALTH_PORT, DEFAULT_HEALTH_PORT + HEALTH_PORT_SEARCH):
        try:
            for port in range(base, base + n):
                check_port_free(host, port, hint)
        except PortInUse:
            continue
        return list(range(base, base + n))
    raise ValueError(f"no {n} free ports from {DEFAULT_HEALTH_PORT} for the consumers' health "
                     "endpoints; set BDI_CONSUMER_HEALTH_PORT")  # fmt: skip


def start_service(
    settings: Settings, consumers: int, partitions: int, broker_port: int | None,
    ready_timeout_s: float, *, stop: threading.Event | None = None, prog: str = "bdi up",
    broker: str = "tansu", trace: bool = False,
) -> Supervisor:  # fmt: skip
    """Broker (when none is configured), topics, API, consumers and, with ``trace``, the
    trace store's feed; returns once the API and consumers are ready. Ports are checked
    before anything starts; on failure or ``stop`` everything started so far is stopped
    again (and the summary printed)."""
    if consumers < 1:
        raise ValueError("--consumers must be at least 1")
    stop = stop or threading.Event()
    hint = "(another bdi up or bdi serve?); choose another with --port or BDI_BACKEND_PORT"
    check_port_free(settings.backend_host, settings.backend_port, hint)
    ports = health_ports(settings, consumers)
    if trace:
        trace_db(settings)  # a bad BDI_TRACE_DB_URL is refused before anything starts
    _preflight(settings)
    sup = Supervisor(dict(os.environ))
    try:
        if stop.is_set():
            raise Interrupted
        if not settings.kafka_bootstrap:
            sup.broker = _start_broker(broker_port, broker)
            sup.env["BDI_KAFKA_BOOTSTRAP"] = sup.broker.bootstrap
        _create_topics(sup.env["BDI_KAFKA_BOOTSTRAP"], settings, partitions)
        deadline = time.monotonic() + ready_timeout_s
        from edge.cli.serve import BANNER

        api = sup.spawn("api", ["serve"], ready_line=BANNER)
        on_cpu = consumers > 1 and not _has_cuda() and "BDI_TORCH_THREADS" not in os.environ
        threads = {"BDI_TORCH_THREADS": str(max(1, (os.cpu_count() or 1) // consumers))}
        for i in range(consumers):
            env = dict(threads) if on_cpu else {}
            url = None
            if ports:
                env["BDI_CONSUMER_HEALTH_PORT"] = str(ports[i])
                url = f"http://{_local(settings.consumer_health_host)}:{ports[i]}/health"
            sup.spawn(f"consumer-{i + 1}", ["consume"], env, health_url=url)
        if trace:
            sup.spawn("trace", ["trace"])
        _wait_ready(sup, api, api_url(settings), deadline, stop)
    except BaseException:
        shutdown(sup, settings.shutdown_grace_s, prog)
        raise
    return sup


def cmd_up(args: argparse.Namespace) -> int:
    settings = dev_settings(args.port)
    stop = threading.Event()
    previous = on_interrupt(stop.set)
    sup: Supervisor | None = None
    consumers = args.consumers if args.consumers is not None else default_consumers(settings)
    partitions = max(args.partitions, consumers)  # a consumer without a partition idles
    code = 0
    try:
        sup = start_service(settings, consumers, partitions, args.broker_port,
                            args.ready_timeout, stop=stop, broker=args.broker,
                            trace=not args.no_trace)  # fmt: skip
        print(_banner(settings, sup), flush=True)
        print(f"  processes : {sup.pids()}", flush=True)
        while not stop.wait(0.2):
            if (dead := sup.first_exit()) is not None:
                print(f"bdi up: {dead.name} exited ({dead.process.returncode})",
                      file=sys.stderr, flush=True)  # fmt: skip
                code = 1
                break
    except Interrupted:
        print("bdi up: interrupted while starting", file=sys.stderr, flush=True)
        return 130
    except RuntimeError as exc:
        print(f"bdi up: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        if sup is not None and not shutdown(sup, settings.shutdown_grace_s, "bdi up"):
            code = code or 1
        restore(previous)
    return code


def _create_topics(bootstrap: str, settings: Settings, partitions: int) -> None:
    from consumers.security import security_options
    from consumers.topics import ensure_topics, service_topics

    protocol = settings.kafka_security_protocol
    if not settings.kafka_bootstrap and protocol != "PLAINTEXT":
        raise ValueError(
            f"BDI_KAFKA_SECURITY_PROTOCOL={protocol} is for the broker at BDI_KAFKA_BOOTSTRAP; "
            "the local broker of bdi up is plaintext: set BDI_KAFKA_BOOTSTRAP, or unset the "
            "BDI_KAFKA_SECURITY_PROTOCOL, BDI_KAFKA_SSL_* and BDI_KAFKA_SASL_* settings"
        )
    # a failure comes back as one error; the client would log each retry on its way
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    topics = service_topics(settings, partitions)
    asyncio.run(ensure_topics(bootstrap, topics, options=security_options(settings)))
