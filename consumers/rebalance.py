"""What a member of the group does when partitions move: on revoke, commit what is
acknowledged (never as a member the group forgot); on assignment, check each committed
position against its log and read from the start where it belongs to a lost one."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from consumers.eos import TransactionalPublisher
from consumers.errors import PublishError
from consumers.lineage import Lineage, replaced_logs
from consumers.membership import membership_lost
from consumers.offsets import OffsetTracker
from consumers.publish import Publisher
from consumers.topics import committed_offsets, lost_logs

log = logging.getLogger(__name__)


class Rebalancing:
    """The rebalance callbacks of :class:`consumers.runner.FrameConsumer`, which holds the
    state below and the three methods this mixin calls."""

    client_id: str
    tracker: OffsetTracker[TopicPartition]
    lineage: Lineage[TopicPartition]
    _consumer: AIOKafkaConsumer | None
    _publisher: Publisher | None
    _txn: TransactionalPublisher | None
    _pending_commit: asyncio.Future[None] | None
    _fatal: PublishError | None

    def request_stop(self) -> None:
        raise NotImplementedError

    def _note_commit(self, offsets: dict[TopicPartition, int]) -> None:
        raise NotImplementedError

    def _consumer_kwargs(self) -> dict[str, Any]:
        raise NotImplementedError

    def listener(self) -> ConsumerRebalanceListener:
        return _Listener(self)

    async def _on_revoked(self, revoked: list[TopicPartition]) -> None:
        pending = self._pending_commit
        if pending is not None and not pending.done():
            pending.cancel()  # see _commit: what it held is returned by revoke() below
        offsets = self.tracker.revoke(revoked)
        if offsets and membership_lost(self._consumer):
            # The coordinator no longer knows this member (session expired, or a broker
            # restarted without its state): these positions may belong to a log the broker
            # no longer has, and a real Kafka refuses the commit anyway. Not committing
            # only means the next owner answers these frames again (identical verdicts).
            log.warning(
                "group membership lost: acknowledged offsets not committed",
                extra={"offsets": names_offsets(offsets)},
            )
            offsets = {}
        if offsets and self._consumer is not None and self._publisher is not None:
            try:  # acknowledged work is kept; in-flight work is abandoned (redelivered)
                self.lineage.committing(offsets)
                await self._consumer.commit(offsets)
                self._note_commit(offsets)
            except KafkaError as exc:
                log.warning("commit on revoke failed", extra={"error": repr(exc)})
        self.lineage.forget_fetched(revoked)
        if self._txn is not None:
            await self._txn.close(revoked)
        log.info(
            "partitions revoked",
            extra={"partitions": names(revoked), "committed": names_offsets(offsets)},
        )

    async def _on_assigned(self, assigned: list[TopicPartition]) -> None:
        epoch = self.tracker.assign(assigned)
        log.info("partitions assigned", extra={"partitions": names(assigned), "epoch": epoch})
        if self._consumer is not None:
            committed = await committed_offsets(self._consumer, assigned)
            rewind = await lost_logs(self._consumer, committed)
            rest = {tp: c for tp, c in committed.items() if tp not in rewind}
            rewind += await replaced_logs(rest, self.lineage, self._reader)
            if rewind:
                await self._rewind(rewind)
        if self._txn is None:
            return
        try:
            await self._txn.open(assigned)
        except Exception as exc:  # aiokafka would only log it: the partitions would stall
            message = f"cannot open transactional producers: {type(exc).__name__}: {exc}"
            self._fatal = PublishError(message)
            log.error("stopping", extra={"error": message})
            self.request_stop()

    async def _rewind(self, tps: list[TopicPartition]) -> None:
        """Read ``tps`` from their start. The fetcher may already have returned records
        from the committed position: they keep the epoch they were fetched in, which ends
        here, so they are dropped and fetched again in order. The seek and the new epoch
        happen with no await between them: no record fetched after the seek carries the
        old epoch, and none from before it the new one."""
        assert self._consumer is not None
        try:
            starts = await self._consumer.beginning_offsets(tps)
        except KafkaError as exc:
            log.warning("cannot rewind", extra={"error": repr(exc), "partitions": names(tps)})
            return
        for tp in tps:
            self._consumer.seek(tp, starts[tp])
        epoch = self.tracker.assign(tps)
        self.lineage.forget_fetched(tps)
        log.info("partitions read from their start", extra={"partitions": names(tps),
                                                             "epoch": epoch})  # fmt: skip

    def _reader(self) -> AIOKafkaConsumer:
        """A client outside the group, as this one connects (see consumers.lineage)."""
        kwargs = {**self._consumer_kwargs(), "client_id": f"{self.client_id}-check"}
        return AIOKafkaConsumer(**{**kwargs, "group_id": None})


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, owner: Rebalancing) -> None:
        self.owner = owner

    async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        await self.owner._on_revoked(list(revoked))

    async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        await self.owner._on_assigned(list(assigned))


def names(tps: Sequence[TopicPartition]) -> list[str]:
    return sorted(f"{tp.topic}:{tp.partition}" for tp in tps)


def names_offsets(offsets: dict[TopicPartition, int]) -> dict[str, int]:
    return {f"{tp.topic}:{tp.partition}": value for tp, value in offsets.items()}
