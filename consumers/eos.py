"""Exactly-once mode (``BDI_KAFKA_EXACTLY_ONCE=1``): verdicts, dead letters, heatmaps and the
consumed offsets of a partition commit in one Kafka transaction.

Transactional id: one per *input partition*, ``<group>.<frames topic>.<partition>``.
The alternative, one id per consumer with the consumer group's metadata (KIP-447), needs
``TxnOffsetCommit`` v3 carrying the group generation; aiokafka only sends v0, so a
zombie consumer holding a stale assignment would not be fenced by the group. With an id
per partition, the new owner of a partition calls ``InitProducerId`` for that id on
assignment, which fences the previous owner's producer and aborts its open transaction.
The price is one producer (one connection) per assigned partition.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaConnectionError, KafkaError, ProducerFenced

from consumers.errors import PublishError, TransactionsUnsupportedError
from consumers.outcome import Outcome, OutRecord
from consumers.publish import Producer, deliver_all
from consumers.security import connection_error

log = logging.getLogger(__name__)

START_TIMEOUT_S = 30.0


def transactional_id(group: str, tp: TopicPartition) -> str:
    return f"{group}.{tp.topic}.{tp.partition}"


async def check_transactions(bootstrap: str, group: str, options: dict[str, Any]) -> None:
    """Fail start-up clearly when the broker cannot run transactions (``InitProducerId``)."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, transactional_id=f"{group}.startup-check", **options
    )
    try:
        await asyncio.wait_for(producer.start(), START_TIMEOUT_S)
    except KafkaConnectionError as exc:  # unreachable, or TLS / SASL refused: named
        raise await connection_error(bootstrap, options, exc) from None
    except (KafkaError, TimeoutError) as exc:
        raise TransactionsUnsupportedError(
            f"BDI_KAFKA_EXACTLY_ONCE=1 needs a broker that supports transactions, but the "
            f"broker at {bootstrap} refused a transactional producer (InitProducerId): "
            f"{type(exc).__name__}: {exc}. Use Apache Kafka >= 2.5 (with "
            f"transaction.state.log settings that fit the cluster), or set "
            f"BDI_KAFKA_EXACTLY_ONCE=0 for at-least-once delivery."
        ) from None
    finally:
        with contextlib.suppress(Exception):
            await producer.stop()


Preview = Callable[[TopicPartition, Sequence[Outcome]], int | None]
OnCommitted = Callable[[TopicPartition, Sequence[Outcome], int], None]


class TxnProducer(Producer, Protocol):
    """What this module uses of a transactional ``AIOKafkaProducer`` (``send`` included)."""

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    def transaction(self) -> AbstractAsyncContextManager[Any]: ...
    async def send_offsets_to_transaction(
        self, offsets: dict[TopicPartition, int], group_id: str
    ) -> None: ...


class TransactionalPublisher:
    """One transactional producer per assigned input partition.

    A partition's lock is held for the whole of its transaction, and revocation takes the
    lock before stopping the producer: a rebalance waits for a transaction in flight
    (milliseconds) instead of tearing its producer down mid-commit.
    """

    def __init__(
        self,
        bootstrap: str,
        group: str,
        options: dict[str, Any],
        factory: Callable[..., TxnProducer] = AIOKafkaProducer,
    ) -> None:
        self.bootstrap = bootstrap
        self.group = group
        self.options = options
        self.factory = factory
        self._producers: dict[TopicPartition, TxnProducer] = {}
        self._locks: dict[TopicPartition, asyncio.Lock] = {}
        self._fenced: set[TopicPartition] = set()  # another owner's producer took over
        # set once a partition's producer is open (or the partition is gone again): frames of
        # a partition fetched while its producer starts wait for it
        self._ready: dict[TopicPartition, asyncio.Event] = {}

    def _lock(self, tp: TopicPartition) -> asyncio.Lock:
        return self._locks.setdefault(tp, asyncio.Lock())

    def expect(self, partitions: Sequence[TopicPartition]) -> None:
        """On assignment, before anything awaits: the fetcher may hand over frames of these
        partitions while :meth:`open` still starts their producers (``InitProducerId``
        waits for the previous owner's transaction to be aborted); their transactions wait
        for the producer instead of finding none."""
        for tp in partitions:
            self._ready[tp] = asyncio.Event()

    async def open(self, partitions: Sequence[TopicPartition]) -> None:
        """On assignment: ``InitProducerId`` per partition fences the previous owner."""
        try:
            for tp in partitions:
                producer = self.factory(
                    bootstrap_servers=self.bootstrap,
                    transactional_id=transactional_id(self.group, tp),
                    **self.options,
                )
                await producer.start()
                async with self._lock(tp):
                    self._producers[tp] = producer
                    self._fenced.discard(tp)
                self._release(tp)
        finally:  # a failure stops the consumer: nobody waits for it in vain
            for tp in partitions:
                self._release(tp)

    def _release(self, tp: TopicPartition) -> None:
        event = self._ready.get(tp)
        if event is not None:
            event.set()

    async def close(self, partitions: Sequence[TopicPartition] | None = None) -> None:
        for tp in list(self._producers) if partitions is None else partitions:
            self._release(tp)  # a frame waiting for this producer finds the partition gone
            async with self._lock(tp):
                producer = self._producers.pop(tp, None)
            if producer is not None:
                with contextlib.suppress(Exception):
                    await producer.stop()

    async def publish(
        self, outcomes: Sequence[Outcome], preview: Preview, on_committed: OnCommitted
    ) -> None:
        """One transaction per partition (run concurrently): records + consumed offsets."""
        by_tp: dict[TopicPartition, list[Outcome]] = {}
        for o in outcomes:
            tp = TopicPartition(o.frame.source.topic, o.frame.source.partition)
            by_tp.setdefault(tp, []).append(o)
        await asyncio.gather(
            *(self._transaction(tp, group, preview, on_committed) for tp, group in by_tp.items())
        )

    async def _transaction(
        self,
        tp: TopicPartition,
        outcomes: Sequence[Outcome],
        preview: Preview,
        on_committed: OnCommitted,
    ) -> None:
        ready = self._ready.get(tp)
        if ready is not None:
            await ready.wait()
        async with self._lock(tp):
            producer = self._producers.get(tp)
            offset = preview(tp, outcomes)
            if offset is None or tp in self._fenced:
                return  # revoked or taken over meanwhile: the new owner redoes these frames
            if producer is None:
                raise PublishError(f"no transactional producer for {tp}")
            try:
                async with producer.transaction():
                    await deliver_all(producer, [r for o in outcomes for r in o.records])
                    await producer.send_offsets_to_transaction({tp: offset}, self.group)
            except ProducerFenced:
                await self._fenced_out(tp, producer)
                return
            except KafkaError as exc:
                message = f"transaction for {tp} failed: {type(exc).__name__}: {exc}"
                raise PublishError(message) from exc
        on_committed(tp, outcomes, offset)

    async def _fenced_out(self, tp: TopicPartition, producer: TxnProducer) -> None:
        log.warning("fenced: partition taken over", extra={"partition": tp.partition})
        self._fenced.add(tp)
        self._producers.pop(tp, None)
        with contextlib.suppress(Exception):
            await producer.stop()

    async def send(self, tp: TopicPartition, records: Sequence[OutRecord]) -> bool:
        """``records`` that belong to no frame of ``tp`` (parts decided by their deadline)
        in a transaction of ``tp``'s producer, without offsets, holding its lock so it never
        interleaves with a batch's transaction. ``False`` when ``tp`` is no longer ours."""
        ready = self._ready.get(tp)
        if ready is not None:
            await ready.wait()
        async with self._lock(tp):
            producer = self._producers.get(tp)
            if producer is None or tp in self._fenced:
                return False
            try:
                async with producer.transaction():
                    await deliver_all(producer, records)
            except ProducerFenced:
                await self._fenced_out(tp, producer)
                return False
            except KafkaError as exc:
                message = f"transaction for {tp} failed: {type(exc).__name__}: {exc}"
                raise PublishError(message) from exc
        return True
