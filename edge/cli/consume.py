"""``bdi consume``: run one member of the consumer group until SIGTERM / Ctrl-C.

Exit status: 0 after a clean stop, 2 for a start-up error (``bdi: error: ...``: missing
``BDI_KAFKA_BOOTSTRAP``, health port in use, unreachable broker, TLS or SASL refused, no
transactions in exactly-once mode), 1 when verdicts could not be delivered (the process
stops so that the frames are redelivered; a supervisor restarts it).

Every line on stderr is one JSON object, native libraries' output included
(:func:`consumers.logs.native_stderr_as_json`), up to a final ``bdi: error: ...``.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import logging
import signal

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from configs.settings import load_settings
from consumers.errors import PublishError
from consumers.health import HealthServer
from consumers.logs import json_logging
from consumers.runner import FrameConsumer
from consumers.topics import ensure_topics, service_topics

log = logging.getLogger(__name__)

# client arguments the delivery guarantees depend on, or that come from BDI_* settings
MANAGED = frozenset(
    {
        "topics",
        "loop",
        "bootstrap_servers",
        "group_id",
        "enable_auto_commit",
        "isolation_level",
        "transactional_id",
        "enable_idempotence",
        "acks",
        "key_deserializer",
        "value_deserializer",
        "key_serializer",
        "value_serializer",
    }
)


def add_consume_command(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "consume",
        help="Kafka consumer: frames in, verdicts out (BDI_KAFKA_* settings)",
        description="Join the BDI_KAFKA_GROUP consumer group, score frames from "
        "BDI_KAFKA_TOPIC_FRAMES and publish verdicts; see docs/KAFKA.md.",
    )
    p.add_argument(
        "--create-topics",
        type=int,
        default=None,
        metavar="PARTITIONS",
        help="create missing topics first, frames with PARTITIONS partitions "
        "(development and demos)",
    )
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING (JSON lines)")
    p.add_argument(
        "--consumer-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra aiokafka consumer argument, e.g. session_timeout_ms=10000 "
        "or security_protocol=SASL_PLAINTEXT (repeatable)",
    )
    p.add_argument(
        "--producer-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra aiokafka producer argument, e.g. linger_ms=5 (repeatable)",
    )
    p.set_defaults(func=cmd_consume)


def _value(text: str) -> object:
    """``KEY=VALUE`` values: integers, floats, true/false, else the string."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def client_options(items: list[str], client: type) -> dict[str, object]:
    """Parse ``KEY=VALUE`` items, refusing names the aiokafka client does not take (a typo
    must fail start-up, not be silently ignored)."""
    known = set(inspect.signature(client).parameters) - MANAGED
    out: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ValueError(f"expected KEY=VALUE, got {item!r}")
        if key in MANAGED:
            raise ValueError(f"{key!r} is set by bdi consume itself (see docs/KAFKA.md)")
        if key not in known:
            raise ValueError(f"{client.__name__} has no option {key!r}")
        out[key] = _value(value)
    return out


def cmd_consume(args: argparse.Namespace) -> int:
    settings = load_settings()
    consumer = FrameConsumer(
        settings,
        consumer_options=client_options(args.consumer_option, AIOKafkaConsumer),
        producer_options=client_options(args.producer_option, AIOKafkaProducer),
    )
    health = None
    if settings.consumer_health_port:  # taken before anything starts: a clash stops it here
        health = HealthServer(
            consumer.health, settings.consumer_health_host, settings.consumer_health_port
        ).bind()
    try:
        with json_logging(args.log_level):
            if args.create_topics is not None:
                topics = service_topics(settings, args.create_topics)
                # as the consumer connects: the settings' TLS / SASL, then --consumer-option
                options = {**consumer.security, **consumer.consumer_options}
                created = asyncio.run(ensure_topics(consumer.bootstrap, topics, options=options))
                log.info("topics created", extra={"topics": created})
            try:
                asyncio.run(_serve(consumer, health))
            except PublishError as exc:  # logged while the JSON handler is still in place
                log.error("stopping: verdicts could not be delivered", extra={"error": str(exc)})
                return 1
    finally:
        if health is not None:
            health.close()
    return 0


async def _serve(consumer: FrameConsumer, health: HealthServer | None) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, consumer.request_stop)
    if health is not None:
        await health.start()
    try:
        await consumer.run()
    finally:
        if health is not None:
            await health.stop()
