"""Error types of the Kafka front door.

Two families: start-up/configuration errors (:class:`ConsumerError`, a ``ValueError`` so that
``bdi``'s main prints ``bdi: error: ...`` and exits 2) and per-frame input errors
(:class:`FrameError`), which never stop the consumer: they become a dead letter and an
``ERROR`` verdict.
"""

from __future__ import annotations


class ConsumerError(ValueError):
    """The consumer cannot start: a setting is missing or the broker cannot do what we need."""


class MissingBootstrapError(ConsumerError):
    """``BDI_KAFKA_BOOTSTRAP`` is not set."""


class BrokerUnavailableError(ConsumerError):
    """No broker answered at the bootstrap address."""


class KafkaSecurityError(ConsumerError):
    """The broker refused the client's TLS or SASL credentials, or the security settings do
    not fit its listener (``BDI_KAFKA_SECURITY_PROTOCOL``, ``BDI_KAFKA_SSL_*``, ``_SASL_*``)."""


class TransactionsUnsupportedError(ConsumerError):
    """Exactly-once mode was asked for, but the broker refuses transactional producers."""


class IdempotenceUnsupportedError(ConsumerError):
    """``BDI_KAFKA_IDEMPOTENCE=on``, but the broker refuses an idempotent producer."""


class PublishError(RuntimeError):
    """Verdicts could not be delivered after retries. The consumer stops without committing,
    so the frames are redelivered to whoever owns their partitions next."""


class FrameError(Exception):
    """A frame breaks the input contract (headers, size). Dead-lettered, answered ``ERROR``."""


class MissingHeaderError(FrameError):
    """A required header (``recipe_id``, ``role_id``, ``roi_id``, ``frame_id``) is absent."""


class InvalidHeaderError(FrameError):
    """A header is present but unusable: not UTF-8, contradictory duplicates, bad number."""


class FrameTooLargeError(FrameError):
    """The frame's value exceeds ``BDI_MAX_FRAME_MB``."""


class ChecksumMismatchError(FrameError):
    """The frame's bytes do not match its ``content_sha256`` header: damaged on the way."""
