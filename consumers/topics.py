"""Broker-side helpers: the bootstrap and topic settings checked, starting a client,
creating topics (dev, demo and tests; production topics are provisioned by the platform),
partition lookups and positions, and the names partitions go by in logs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError, TopicAlreadyExistsError

from consumers.errors import ConsumerError, MissingBootstrapError
from consumers.security import connection_error, connection_options

if TYPE_CHECKING:
    from configs.settings import Settings

log = logging.getLogger(__name__)


def require_bootstrap(settings: Settings) -> str:
    """The bootstrap servers; also refuses topic settings that would feed outputs back in."""
    if not settings.kafka_bootstrap:
        raise MissingBootstrapError(
            "BDI_KAFKA_BOOTSTRAP is not set: give the Kafka bootstrap servers, "
            "e.g. BDI_KAFKA_BOOTSTRAP=localhost:9092"
        )
    s = settings
    outputs = [s.kafka_topic_verdicts, s.kafka_topic_dlq, s.kafka_topic_heatmaps]
    if s.kafka_topic_frames in outputs:
        raise ConsumerError(
            f"BDI_KAFKA_TOPIC_FRAMES={s.kafka_topic_frames!r} is also an output topic; "
            "frames, verdicts, dead letters and heatmaps need distinct topics"
        )
    return settings.kafka_bootstrap


async def start_client(
    bootstrap: str, client: Any, options: Mapping[str, Any] | None = None
) -> None:
    """Start an aiokafka client (consumer, producer or admin) made with ``options``; a
    broker that cannot be reached is :class:`BrokerUnavailableError`, one that refuses the
    TLS / SASL credentials :class:`KafkaSecurityError` naming what failed
    (:func:`consumers.security.connection_error`), with the half-started client closed."""
    try:
        await client.start()
    except KafkaConnectionError as exc:
        with contextlib.suppress(Exception):
            await (client.close() if hasattr(client, "close") else client.stop())
        raise await connection_error(bootstrap, options or {}, exc) from None


async def stop_consumer(consumer: AIOKafkaConsumer) -> None:
    """Stop a consumer. A group-less one (manual assignment) starts a background task that
    aiokafka 0.14 cancels and awaits on ``stop()``: cancelled before it first ran (no await
    between start and stop yielded to the loop), that await raises ``CancelledError`` out of
    ``stop()``. One yield first lets it run."""
    await asyncio.sleep(0)
    await consumer.stop()


async def committed_offsets(
    consumer: AIOKafkaConsumer, assigned: Iterable[TopicPartition]
) -> dict[TopicPartition, int | None]:
    """The group's committed offset of each partition (None: none committed); empty when
    the broker does not answer (the regular reset policy then applies)."""
    try:
        return {tp: await consumer.committed(tp) for tp in assigned}
    except KafkaError as exc:
        log.warning("cannot check committed offsets", extra={"error": repr(exc)})
        return {}


async def lost_logs(
    consumer: AIOKafkaConsumer, committed: Mapping[TopicPartition, int | None]
) -> list[TopicPartition]:
    """The partitions whose committed offset lies beyond their end, to be read from the
    start (the caller seeks).

    That means the broker lost or truncated the log (ephemeral storage, a topic
    recreated). Kafka would reset such a position only once the new log grew past it,
    skipping every frame below it; answered twice is better than never.
    """
    lost: list[TopicPartition] = []
    if not committed:
        return lost
    try:
        ends = await consumer.end_offsets(list(committed))
    except KafkaError as exc:  # the regular reset policy still applies
        log.warning("cannot read the ends of the logs", extra={"error": repr(exc)})
        return lost
    for tp, offset in committed.items():
        if offset is not None and tp in ends and offset > ends[tp]:
            log.warning(
                "committed offset beyond the end of the log: reading from the start",
                extra={"partition": f"{tp.topic}-{tp.partition}",
                       "committed": offset, "log_end": ends[tp]},
            )  # fmt: skip
            lost.append(tp)
    return lost


def service_topics(settings: Settings, partitions: int) -> dict[str, int]:
    """``{name: partitions}`` of the topics the service reads and writes: frames and
    verdicts with ``partitions``, dead letters and heatmaps (when set) with one."""
    topics = {
        settings.kafka_topic_frames: partitions,
        settings.kafka_topic_verdicts: partitions,
        settings.kafka_topic_dlq: 1,
    }
    if settings.kafka_topic_heatmaps:
        topics[settings.kafka_topic_heatmaps] = 1
    return topics


async def ensure_topics(
    bootstrap: str,
    partitions: Mapping[str, int],
    replication: int = 1,
    options: Mapping[str, Any] | None = None,
) -> list[str]:
    """Create the topics of ``{name: partitions}`` that do not exist yet; returns those
    created. Existing topics are left as they are (their partition count included).
    ``options``: the client's security arguments (:func:`consumers.security.security_options`)."""
    options = connection_options(options or {})
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **options)
    await start_client(bootstrap, admin, options)
    try:
        existing = set(await admin.list_topics())
        wanted = [
            NewTopic(name, n, replication) for name, n in partitions.items() if name not in existing
        ]
        if not wanted:
            return []
        with contextlib.suppress(TopicAlreadyExistsError):  # another process was faster
            await admin.create_topics(wanted)
        return [t.name for t in wanted]
    finally:
        await admin.close()


async def topic_partitions(
    consumer: AIOKafkaConsumer, topic: str, timeout_s: float = 30.0
) -> list[TopicPartition]:
    """The partitions of ``topic``, waiting for metadata a fresh client may not have yet
    (a topic just created is not in every broker's metadata at once)."""
    deadline = time.monotonic() + timeout_s
    parts = consumer.partitions_for_topic(topic)
    while not parts:
        if time.monotonic() > deadline:
            raise ConsumerError(f"topic {topic!r} has no partitions after {timeout_s:.0f} s")
        await asyncio.sleep(0.1)
        # aiokafka has no public call that refreshes the client's own metadata (``topics()``
        # fetches a copy and leaves it as it was)
        await consumer._client.force_metadata_update()
        parts = consumer.partitions_for_topic(topic)
    return [TopicPartition(topic, p) for p in sorted(parts)]


def names(tps: Sequence[TopicPartition]) -> list[str]:
    """``["topic:partition", ...]``, sorted: partitions as logs and ``/health`` name them."""
    return sorted(f"{tp.topic}:{tp.partition}" for tp in tps)


def names_offsets(offsets: Mapping[TopicPartition, int]) -> dict[str, int]:
    return {f"{tp.topic}:{tp.partition}": value for tp, value in offsets.items()}
