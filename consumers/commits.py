"""Sending commits: the positions :class:`~consumers.offsets.OffsetTracker` allows, one
request at a time, recorded in :class:`~consumers.health.Stats` once the broker took them.

aiokafka retries a commit until the coordinator answers, and each retry carries the group
generation current *then*: a commit that waited through a broker restart would land after
the rejoin, past the new assignment's check of its positions (bug B1). So the request
still waiting when partitions are revoked is cancelled (:meth:`Committer.cancel_pending`)
and the revoke decides instead (:meth:`Committer.commit_revoked`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from consumers.health import Stats
from consumers.lineage import Lineage
from consumers.offsets import OffsetTracker
from consumers.topics import names_offsets

log = logging.getLogger(__name__)


class Committer:
    """Commits for the group member ``client``; every position sent is first handed to
    ``lineage`` (a commit may land even when its answer is lost)."""

    def __init__(
        self,
        client: AIOKafkaConsumer,
        tracker: OffsetTracker[TopicPartition],
        lineage: Lineage[TopicPartition],
        stats: Stats,
    ) -> None:
        self.client = client
        self.tracker = tracker
        self.lineage = lineage
        self.stats = stats
        self._pending: asyncio.Future[None] | None = None

    async def commit(self) -> None:
        """Commit every partition whose safe position moved. A rebalance meanwhile (the
        request cancelled, or refused by the broker) leaves the positions to the revoke and
        to the new owner; other errors are raised."""
        offsets = self.tracker.committable()
        if not offsets:
            return
        self.lineage.committing(offsets)
        task = asyncio.ensure_future(self.client.commit(offsets))
        self._pending = task
        try:
            await asyncio.wait({task})
        finally:
            self._pending = None
            if not task.done():
                task.cancel()  # this coroutine was cancelled (stop's grace ran out)
        if task.cancelled():
            log.warning(
                "commit abandoned: partitions revoked while it waited",
                extra={"offsets": names_offsets(offsets)},
            )
            return
        exc = task.exception()
        if isinstance(exc, KafkaError):  # rebalanced meanwhile: the new owner redoes them
            log.warning(
                "commit failed", extra={"error": repr(exc), "offsets": names_offsets(offsets)}
            )
            return
        if exc is not None:
            raise exc
        self.tracker.committed(offsets)
        self.stats.note_commit(offsets)

    def cancel_pending(self) -> None:
        """Drop the request still waiting for the broker (what it held stays committable)."""
        if self._pending is not None and not self._pending.done():
            self._pending.cancel()

    async def commit_revoked(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Commit what was acknowledged on partitions being revoked; a failure is logged
        (the next owner answers those frames again)."""
        try:
            self.lineage.committing(offsets)
            await self.client.commit(dict(offsets))
            self.stats.note_commit(offsets)
        except KafkaError as exc:
            log.warning("commit on revoke failed", extra={"error": repr(exc)})

    def committed_in_transaction(self, tp: TopicPartition, offset: int) -> None:
        """Exactly-once mode: the transaction that published a batch committed ``offset``."""
        self.tracker.committable()  # advance past the acknowledged frames
        self.lineage.committing({tp: offset})
        self.tracker.committed({tp: offset})
        self.stats.note_commit({tp: offset})
