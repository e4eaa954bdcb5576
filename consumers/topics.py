"""Broker-side helpers: the bootstrap and topic settings checked, starting a client,
creating topics (dev, demo and tests; production topics are provisioned by the platform),
partition lookups and positions, and the names partitions go by in logs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    TopicAlreadyExistsError,
    for_code,
)

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
    outputs = [s.kafka_topic_verdicts, s.kafka_topic_dlq, s.kafka_topic_heatmaps,
               s.kafka_topic_parts, changelog_topic(s), s.kafka_topic_alerts]  # fmt: skip
    if s.kafka_topic_frames in outputs:
        raise ConsumerError(
            f"BDI_KAFKA_TOPIC_FRAMES={s.kafka_topic_frames!r} is also an output topic; "
            "frames, verdicts, dead letters, heatmaps, parts, the parts changelog and alerts need "
            "distinct topics"
        )
    if s.kafka_topic_parts == changelog_topic(s):
        raise ConsumerError(
            f"BDI_KAFKA_TOPIC_PARTS={s.kafka_topic_parts!r} is also the parts changelog; "
            "part verdicts and the aggregator's state need distinct topics"
        )
    return settings.kafka_bootstrap


def changelog_topic(settings: Settings) -> str:
    """The part aggregator's changelog: ``BDI_KAFKA_TOPIC_PARTS_CHANGELOG``, else
    ``<BDI_KAFKA_GROUP>.parts.changelog`` (the state belongs to the group)."""
    return settings.kafka_topic_parts_changelog or f"{settings.kafka_group}.parts.changelog"


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


@dataclass(frozen=True)
class TopicSpec:
    """A topic to create with settings of its own (``config``: topic configs)."""

    partitions: int
    config: Mapping[str, str] = field(default_factory=dict)


COMPACTED = {"cleanup.policy": "compact"}


def service_topics(settings: Settings, partitions: int) -> dict[str, int | TopicSpec]:
    """``{name: partitions}`` of the topics the service reads and writes: frames, verdicts
    and parts with ``partitions``, the parts changelog with as many (compacted), dead
    letters, drift alerts and heatmaps (when set) with one."""
    topics: dict[str, int | TopicSpec] = {
        settings.kafka_topic_frames: partitions,
        settings.kafka_topic_verdicts: partitions,
        settings.kafka_topic_dlq: 1,
        settings.kafka_topic_alerts: 1,
        settings.kafka_topic_parts: partitions,
        changelog_topic(settings): TopicSpec(partitions, COMPACTED),
    }
    if settings.kafka_topic_heatmaps:
        topics[settings.kafka_topic_heatmaps] = 1
    return topics


async def ensure_topics(
    bootstrap: str,
    partitions: Mapping[str, int | TopicSpec],
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
            _new_topic(name, spec, replication)
            for name, spec in partitions.items()
            if name not in existing
        ]
        if not wanted:
            return []
        with contextlib.suppress(TopicAlreadyExistsError):  # another process was faster
            await admin.create_topics(wanted)
        return [t.name for t in wanted]
    finally:
        await admin.close()


def _new_topic(name: str, spec: int | TopicSpec, replication: int) -> NewTopic:
    if isinstance(spec, int):
        return NewTopic(name, spec, replication)
    return NewTopic(name, spec.partitions, replication, topic_configs=dict(spec.config))


async def ensure_changelog(
    bootstrap: str, frames: str, changelog: str, options: Mapping[str, Any] | None = None
) -> int | None:
    """Check that the parts changelog has at least as many partitions as the frames topic
    (partition ``p`` holds the state of frames partition ``p``); create it, compacted, with
    as many partitions and the frames topic's replication, when missing (as Kafka Streams
    creates its internal topics). Returns its partition count, ``None`` when the frames
    topic does not exist (yet); :class:`ConsumerError` when it has fewer partitions."""
    options = connection_options(options or {})
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **options)
    await start_client(bootstrap, admin, options)
    try:
        for _ in range(METADATA_TRIES):  # a topic just created may not be listed at once
            # every topic: a Metadata request naming a missing one may auto-create it
            topics = {t["topic"]: t["partitions"] for t in await admin.describe_topics(None)}
            if frames in topics and changelog in topics:
                return _enough(changelog, len(topics[changelog]), frames, len(topics[frames]))
            if frames in topics:
                replicas = len(topics[frames][0].get("replicas") or [None])
                spec = TopicSpec(len(topics[frames]), COMPACTED)
                answer = await admin.create_topics([_new_topic(changelog, spec, replicas)])
                code = answer.topic_errors[0][1]  # (name, error code, ...): not raised
                if code == 0:
                    log.info("parts changelog created", extra={"topic": changelog,
                             "partitions": spec.partitions, "replication": replicas})  # fmt: skip
                    return spec.partitions
                if code != TopicAlreadyExistsError.errno:  # else: there, not yet listed
                    detail = " ".join(str(x) for x in answer.topic_errors[0][2:] if x)
                    raise ConsumerError(f"cannot create the parts changelog {changelog!r}: "
                                        f"{for_code(code).__name__} {detail}".strip())  # fmt: skip
            await asyncio.sleep(0.2)
        return None
    finally:
        await admin.close()


METADATA_TRIES = 10


def _enough(changelog: str, have: int, frames: str, wanted: int) -> int:
    if have < wanted:
        raise ConsumerError(
            f"the parts changelog {changelog!r} has {have} partition(s), fewer than the "
            f"{wanted} of the frames topic {frames!r}: give it {wanted} (kafka-topics "
            "--alter --partitions), or name another one with BDI_KAFKA_TOPIC_PARTS_CHANGELOG"
        )
    return have


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
