"""At-least-once publication: send every record of a batch, wait for the broker's
acknowledgement (``acks=all``), and report each frame whose records all made it.

A frame is reported (``on_delivered``) only when *all* its records are acknowledged, and
only reported frames may have their offsets committed. Failed frames are resent a few
times; if they still fail, :class:`PublishError` stops the consumer without committing
them, so they are redelivered rather than lost. State records (the part aggregator's
changelog) go last, in the batch's order, once every other record of the batch is
acknowledged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, Protocol

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, MessageSizeTooLargeError

from consumers.errors import IdempotenceUnsupportedError, PublishError
from consumers.outcome import Outcome, OutRecord
from consumers.topics import start_client

log = logging.getLogger(__name__)

VALUE_DROPPED = "bdi.dlq.value_dropped"


START_TIMEOUT_S = 30.0


async def start_producer(
    bootstrap: str, options: dict[str, Any], idempotence: str = "auto"
) -> tuple[AIOKafkaProducer, bool]:
    """The at-least-once verdict producer (``acks=all``), started; and whether it is
    idempotent. An idempotent producer gets a producer id at start (``InitProducerId``) and
    numbers its batches, so the broker drops the copy a retry after a lost acknowledgement
    would append. ``idempotence`` is ``BDI_KAFKA_IDEMPOTENCE``: ``auto`` asks for it and
    falls back to a plain producer, with a warning, on a broker that refuses (Tansu);
    ``on`` makes a refusal a start-up error; ``off`` never asks."""
    if idempotence != "off":
        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, **options
        )
        try:
            await asyncio.wait_for(start_client(bootstrap, producer, options), START_TIMEOUT_S)
            return producer, True
        except (KafkaError, TimeoutError) as exc:  # unreachable, TLS, SASL: raised named
            await producer.stop()
            reason = f"{type(exc).__name__}: {exc}"
            if idempotence == "on":
                raise IdempotenceUnsupportedError(
                    f"BDI_KAFKA_IDEMPOTENCE=on, but the broker at {bootstrap} refused an "
                    f"idempotent producer (InitProducerId): {reason}. Use Apache Kafka >= 0.11 "
                    f"(with IdempotentWrite allowed to this user), or set "
                    f"BDI_KAFKA_IDEMPOTENCE=auto to accept a plain producer."
                ) from None
            log.warning(
                "broker refused an idempotent producer: verdicts use a plain one (a retry "
                "after a lost acknowledgement may publish a frame's verdict twice, identical)",
                extra={"bootstrap": bootstrap, "error": reason},
            )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", **options)
    await start_client(bootstrap, producer, options)
    return producer, False


class Producer(Protocol):
    """``AIOKafkaProducer.send``: enqueue, return a future of the broker's answer."""

    async def send(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> asyncio.Future[Any]: ...


async def deliver(producer: Producer, record: OutRecord) -> None:
    """Send one record and wait for its acknowledgement, applying its too-large policy."""
    await deliver_all(producer, [record])


async def deliver_all(producer: Producer, records: Sequence[OutRecord]) -> None:
    """Send ``records`` and wait for every acknowledgement. They are handed to the producer
    one after the other, in their order, so records of one partition are appended in that
    order (a part's state records must be: the last one is the state)."""
    sent: list[tuple[OutRecord, asyncio.Future[Any] | MessageSizeTooLargeError]] = []
    try:
        for record in records:
            try:
                sent.append((record, await _send(producer, record)))
            except MessageSizeTooLargeError as exc:  # the client's own size check
                sent.append((record, exc))
    except BaseException:
        for _, answer in sent:  # no "exception never retrieved" for those left behind
            if isinstance(answer, asyncio.Future):
                answer.add_done_callback(_retrieve)
        raise
    await asyncio.gather(*(_settle(producer, record, answer) for record, answer in sent))


async def _send(producer: Producer, record: OutRecord) -> asyncio.Future[Any]:
    return await producer.send(
        record.topic,
        value=record.value,
        key=record.key,
        partition=record.partition,
        headers=list(record.headers),
    )


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


async def _settle(
    producer: Producer, record: OutRecord, answer: asyncio.Future[Any] | MessageSizeTooLargeError
) -> None:
    try:
        if isinstance(answer, MessageSizeTooLargeError):
            raise answer
        await answer
    except MessageSizeTooLargeError:
        if record.too_large == "fail":
            raise
        log.warning(
            "record too large for the broker",
            extra={
                "topic": record.topic,
                "policy": record.too_large,
                "frame_id": (record.key or b"").decode(errors="replace"),
            },
        )
        if record.too_large == "drop_value":
            headers = (*record.headers, (VALUE_DROPPED, b"message too large"))
            key = b"" if record.key is None else record.key  # Kafka needs a key or a value
            smaller = replace(record, key=key, value=None, headers=headers, too_large="fail")
            await deliver(producer, smaller)


class Publisher:
    """Publishes batches of outcomes (:meth:`publish`) and the part aggregator's own
    records (:meth:`publish_records`), retrying ``attempts`` times."""

    def __init__(self, producer: Producer, attempts: int = 5, backoff_s: float = 0.5) -> None:
        self.producer = producer
        self.attempts = attempts
        self.backoff_s = backoff_s

    async def publish(
        self, outcomes: Sequence[Outcome], on_delivered: Callable[[Outcome], None]
    ) -> None:
        """Every record of every outcome, ``on_delivered`` for each frame whose records are
        all acknowledged. State records (``OutRecord.state``) go last: once every other
        record of the batch is acknowledged, in the batch's order; the frames are then
        reported together."""
        state = [r for o in outcomes for r in o.records if r.state]
        if not state:
            await self._publish(outcomes, on_delivered, lambda o: o.records)
            return
        done: list[Outcome] = []
        await self._publish(outcomes, done.append, lambda o: [r for r in o.records if not r.state])
        await self._in_order(state, "part state record(s)")
        for outcome in done:
            on_delivered(outcome)

    async def publish_records(self, records: Sequence[OutRecord]) -> None:
        """Records that belong to no frame (parts decided by their deadline): the others
        first, then the state records, each group resent whole, in order, on failure."""
        await self._in_order([r for r in records if not r.state], "part record(s)")
        await self._in_order([r for r in records if r.state], "part state record(s)")

    async def _in_order(self, records: Sequence[OutRecord], what: str) -> None:
        error: BaseException | None = None
        for attempt in range(1, self.attempts + 1):
            if not records:
                return
            try:
                await deliver_all(self.producer, records)
                return
            except Exception as exc:
                error = exc
            log.warning(
                "delivery failed; retrying",
                extra={"attempt": attempt, "records": len(records), "what": what,
                       "error": f"{type(error).__name__}: {error}"},
            )  # fmt: skip
            if attempt < self.attempts:
                await asyncio.sleep(self.backoff_s * attempt)
        raise PublishError(
            f"{len(records)} {what} not acknowledged after {self.attempts} attempts: "
            f"{type(error).__name__}: {error}"
        )

    async def _publish(
        self,
        outcomes: Sequence[Outcome],
        on_delivered: Callable[[Outcome], None],
        records_of: Callable[[Outcome], Sequence[OutRecord]],
    ) -> None:
        pending = list(outcomes)
        error: BaseException | None = None
        for attempt in range(1, self.attempts + 1):
            results = await asyncio.gather(
                *(deliver_all(self.producer, records_of(o)) for o in pending),
                return_exceptions=True,
            )
            failed: list[tuple[Outcome, BaseException]] = []
            for outcome, result in zip(pending, results, strict=True):
                if isinstance(result, BaseException):
                    failed.append((outcome, result))
                else:
                    on_delivered(outcome)
            if not failed:
                return
            error = failed[0][1]
            if isinstance(error, asyncio.CancelledError):
                raise error
            log.warning(
                "verdict delivery failed; retrying",
                extra={
                    "attempt": attempt,
                    "frames": len(failed),
                    "frame_id": failed[0][0].verdict.frame_id,
                    "error": f"{type(error).__name__}: {error}",
                },
            )
            pending = [o for o, _ in failed]
            if attempt < self.attempts:
                await asyncio.sleep(self.backoff_s * attempt)
        raise PublishError(
            f"{len(pending)} verdict(s) not acknowledged after {self.attempts} attempts "
            f"(first frame_id {pending[0].verdict.frame_id!r}): {type(error).__name__}: {error}"
        )
