"""Kafka front door: frames in, verdicts (and dead letters, heatmaps) out.

``FrameConsumer(settings).run()`` is one member of the consumer group; ``bdi consume``
runs it from the command line; ``LocalBroker`` starts a local Kafka-compatible broker.
Contracts and guarantees: ``docs/KAFKA.md``.
"""

from consumers.broker import LocalBroker
from consumers.errors import (
    BrokerUnavailableError,
    ConsumerError,
    MissingBootstrapError,
    PublishError,
    TransactionsUnsupportedError,
)
from consumers.runner import FrameConsumer
from consumers.topics import ensure_topics
from consumers.verdicts import SCHEMA as VERDICT_SCHEMA

__all__ = [
    "VERDICT_SCHEMA",
    "BrokerUnavailableError",
    "ConsumerError",
    "FrameConsumer",
    "LocalBroker",
    "MissingBootstrapError",
    "PublishError",
    "TransactionsUnsupportedError",
    "ensure_topics",
]
