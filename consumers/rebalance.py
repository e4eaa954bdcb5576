"""What a member of the group does when partitions move: on revoke, commit what is
acknowledged (never as a member the group forgot); on assignment, check each committed
position against its log and read from the start where it belongs to a lost one."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from consumers.commits import Committer
from consumers.eos import TransactionalPublisher
from consumers.errors import PublishError
from consumers.lineage import Lineage, replaced_logs
from consumers.membership import membership_lost
from consumers.offsets import OffsetTracker
from consumers.part_state import PartState
from consumers.topics import committed_offsets, lost_logs, names, names_offsets

log = logging.getLogger(__name__)


class Rebalancer(ConsumerRebalanceListener):  # type: ignore[misc]
    """The rebalance listener of one group member (``client``).

    ``txn`` is the exactly-once publisher (None: at-least-once, where the revoke commits
    through ``committer``); ``reader_options`` are the aiokafka arguments of a client
    outside the group that reads committed positions back (see consumers.lineage);
    ``on_fatal`` is called with the error that must stop the consumer; ``parts`` is the
    part aggregator, whose state is read back on assignment and dropped on revocation.
    """

    def __init__(
        self,
        client: AIOKafkaConsumer,
        tracker: OffsetTracker[TopicPartition],
        lineage: Lineage[TopicPartition],
        committer: Committer,
        *,
        txn: TransactionalPublisher | None,
        reader_options: dict[str, Any],
        on_fatal: Callable[[PublishError], None],
        parts: PartState | None = None,
    ) -> None:
        self.client = client
        self.tracker = tracker
        self.lineage = lineage
        self.committer = committer
        self.txn = txn
        self.reader_options = reader_options
        self.on_fatal = on_fatal
        self.parts = parts

    async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        revoked = list(revoked)
        if self.parts is not None:
            self.parts.drop(revoked)
        self.committer.cancel_pending()  # what it held is returned by revoke() below
        offsets = self.tracker.revoke(revoked)
        if offsets and membership_lost(self.client):
            # The coordinator no longer knows this member (session expired, or a broker
            # restarted without its state): these positions may belong to a log the broker
            # no longer has, and a real Kafka refuses the commit anyway. Not committing
            # only means the next owner answers these frames again (identical verdicts).
            log.warning(
                "group membership lost: acknowledged offsets not committed",
                extra={"offsets": names_offsets(offsets)},
            )
            offsets = {}
        if offsets and self.txn is None:
            # acknowledged work is kept; in-flight work is abandoned (redelivered)
            await self.committer.commit_revoked(offsets)
        self.lineage.forget_fetched(revoked)
        if self.txn is not None:
            await self.txn.close(revoked)
        log.info(
            "partitions revoked",
            extra={"partitions": names(revoked), "committed": names_offsets(offsets)},
        )

    async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        assigned = list(assigned)
        epoch = self.tracker.assign(assigned)
        if self.txn is not None:
            self.txn.expect(assigned)  # frames fetched from now on wait for the producers
        if self.parts is not None:
            self.parts.expect(assigned)  # ... and for their part state
        log.info("partitions assigned", extra={"partitions": names(assigned), "epoch": epoch})
        try:
            committed = await committed_offsets(self.client, assigned)
            rewind = await lost_logs(self.client, committed)
            rest = {tp: c for tp, c in committed.items() if tp not in rewind}
            rewind += await replaced_logs(rest, self.lineage, self._reader)
            if rewind:
                await self._rewind(rewind)
            if self.txn is not None:
                try:
                    await self.txn.open(assigned)
                except Exception as exc:  # aiokafka would only log it: the partitions stall
                    message = f"cannot open transactional producers: {type(exc).__name__}: {exc}"
                    log.error("stopping", extra={"error": message})
                    self.on_fatal(PublishError(message))
                    return
            # after the producers: opening them aborts the previous owner's open transaction,
            # which a read_committed read of the changelog would otherwise wait for
            await self._restore_parts(assigned)
        finally:
            if self.parts is not None:
                self.parts.release(assigned)  # nobody waits in vain

    async def _restore_parts(self, assigned: list[TopicPartition]) -> None:
        if self.parts is None:
            return
        try:
            await self.parts.restore(assigned)
        except Exception as exc:  # frames without their part state must not be answered
            message = f"cannot restore the part state: {type(exc).__name__}: {exc}"
            log.error("stopping", extra={"error": message})
            self.on_fatal(PublishError(message))

    async def _rewind(self, tps: list[TopicPartition]) -> None:
        """Read ``tps`` from their start. The fetcher may already have returned records
        from the committed position: they keep the epoch they were fetched in, which ends
        here, so they are dropped and fetched again in order. The seek and the new epoch
        happen with no await between them: no record fetched after the seek carries the
        old epoch, and none from before it the new one."""
        try:
            starts = await self.client.beginning_offsets(tps)
        except KafkaError as exc:
            log.warning("cannot rewind", extra={"error": repr(exc), "partitions": names(tps)})
            return
        for tp in tps:
            self.client.seek(tp, starts[tp])
        epoch = self.tracker.assign(tps)
        self.lineage.forget_fetched(tps)
        log.info(
            "partitions read from their start", extra={"partitions": names(tps), "epoch": epoch}
        )

    def _reader(self) -> AIOKafkaConsumer:
        """A client outside the group, as this one connects (see consumers.lineage)."""
        return AIOKafkaConsumer(**self.reader_options)
