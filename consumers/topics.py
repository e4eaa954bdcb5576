"""Create topics (dev, demo and tests; production topics are provisioned by the platform)."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, TopicAlreadyExistsError

from consumers.errors import BrokerUnavailableError


async def ensure_topics(
    bootstrap: str, partitions: Mapping[str, int], replication: int = 1
) -> list[str]:
    """Create the topics of ``{name: partitions}`` that do not exist yet; returns those
    created. Existing topics are left as they are (their partition count included)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        await admin.start()
    except KafkaConnectionError as exc:
        with contextlib.suppress(Exception):
            await admin.close()
        raise BrokerUnavailableError(f"cannot reach Kafka at {bootstrap}: {exc}") from None
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


async def topic_partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    """The partitions of ``topic``, waiting for metadata a fresh client may not have yet."""
    parts = consumer.partitions_for_topic(topic)
    while not parts:
        await consumer.client.force_metadata_update()
        parts = consumer.partitions_for_topic(topic)
    return [TopicPartition(topic, p) for p in sorted(parts)]
