"""The consumer loop: fetch a batch -> decode -> infer -> publish -> await acks -> commit.

Two stages overlap: while batch N is scored (inference thread) and published, batch N+1
is fetched and decoded (decode threads). Offsets move only through the
:class:`~consumers.offsets.OffsetTracker`, i.e. only past frames whose every record the
broker acknowledged. ``request_stop`` (SIGTERM) stops fetching, lets the in-flight batch
finish within ``BDI_SHUTDOWN_GRACE_S``, commits, and leaves the group.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from consumers.batcher import (
    DEFAULT_MAX_POLL_INTERVAL_MS,
    check_batch_time,
    collect,
    keep_polling,
    note_batch_time,
)
from consumers.commits import Committer
from consumers.eos import TransactionalPublisher, check_transactions
from consumers.errors import PublishError
from consumers.frames import Decoded, Frame, KafkaRecord, frame_from_record
from consumers.health import Stats, health_report
from consumers.lineage import Lineage
from consumers.membership import refuse_commits_outside_the_group
from consumers.offsets import OffsetTracker
from consumers.outcome import Outcome
from consumers.part_state import PartState, PlanCache, caught_up, deadline_publisher, store_plans
from consumers.pipeline import BatchProcessor
from consumers.publish import Publisher, start_producer
from consumers.rebalance import Rebalancer
from consumers.security import security_options
from consumers.topics import changelog_topic, ensure_changelog, require_bootstrap, start_client

if TYPE_CHECKING:
    from configs.settings import Settings
    from engine import Engine
    from store import ModelStore

log = logging.getLogger(__name__)

HEADROOM = 256 * 1024  # dead letters carry the frame plus error headers
KEEPALIVE_POLL_MS = 100  # empty polls of paused partitions while a long batch is scored


def _tp(frame: Frame) -> TopicPartition:
    return TopicPartition(frame.source.topic, frame.source.partition)


class FrameConsumer:
    """One member of the ``BDI_KAFKA_GROUP`` consumer group.

    ``engine`` / ``store`` default to ones built from ``settings``; ``consumer_options`` /
    ``producer_options`` override aiokafka client arguments (tests shorten timeouts).
    Commits go through a :class:`~consumers.commits.Committer`, rebalances through a
    :class:`~consumers.rebalance.Rebalancer`, both made for the group member in
    :meth:`start`; :meth:`health` is what the health port reports.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        engine: Engine | None = None,
        store: ModelStore | None = None,
        consumer_options: dict[str, Any] | None = None,
        producer_options: dict[str, Any] | None = None,
    ) -> None:
        self.settings = settings
        self.bootstrap = require_bootstrap(settings)
        self.engine = engine
        self.store = store
        self.client_id = f"bdi-{socket.gethostname()}-{os.getpid()}"
        self.consumer_options = consumer_options or {}
        self.producer_options = producer_options or {}
        self.security = security_options(settings)  # TLS / SASL: every client it makes
        self._max_poll_interval_ms = int(
            self._consumer_kwargs().get("max_poll_interval_ms", DEFAULT_MAX_POLL_INTERVAL_MS)
        )
        self.tracker: OffsetTracker[TopicPartition] = OffsetTracker()
        self.lineage: Lineage[TopicPartition] = Lineage()  # what each commit follows
        self.stats = Stats()
        self.idempotent = False  # the verdict producer's (transactional ones are, too)
        self._stopping = asyncio.Event()
        self._consumer: AIOKafkaConsumer | None = None
        self._committer: Committer | None = None
        self._rebalancer: Rebalancer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._publisher: Publisher | None = None
        self._txn: TransactionalPublisher | None = None
        self._processor: BatchProcessor | None = None
        self._parts: PartState | None = None  # the part aggregator
        self._fatal: PublishError | None = None  # raised by run() after a clean stop
        self._carry: list[Frame] = []  # records a keep-alive poll returned, for the next batch
        self._infer_pool = ThreadPoolExecutor(1, thread_name_prefix="bdi-infer")
        self._decode_pool = ThreadPoolExecutor(
            min(4, os.cpu_count() or 1), thread_name_prefix="bdi-decode"
        )

    # --- life cycle ----------------------------------------------------------------------
    def request_stop(self) -> None:
        """Signal-handler safe: only sets a flag the loop checks."""
        self._stopping.set()

    @property
    def assignment(self) -> set[TopicPartition]:
        return set(self._consumer.assignment()) if self._consumer is not None else set()

    async def run(self) -> None:
        """Start, consume until :meth:`request_stop`, stop. One run per instance."""
        try:
            await self.start()
            await self._loop()
        finally:
            await self.stop()
        if self._fatal is not None:
            raise self._fatal

    async def start(self) -> None:
        s = self.settings
        if s.kafka_exactly_once:
            await check_transactions(self.bootstrap, s.kafka_group, self._producer_kwargs())
            self._txn = TransactionalPublisher(
                self.bootstrap, s.kafka_group, self._producer_kwargs()
            )
            self.idempotent = True
        else:
            self._producer, self.idempotent = await start_producer(
                self.bootstrap, self._producer_kwargs(), s.kafka_idempotence
            )
            self._publisher = Publisher(self._producer)
        self._processor = await self._build_processor()
        await self._start_parts()
        client = AIOKafkaConsumer(**self._consumer_kwargs())
        client.subscribe([s.kafka_topic_frames], listener=self._join(client))
        await start_client(self.bootstrap, client, self._consumer_kwargs())
        refuse_commits_outside_the_group(client)
        self.stats.started_at = time.time()
        log.info(
            "consumer started",
            extra={
                "bootstrap": self.bootstrap,
                "group": s.kafka_group,
                "frames": s.kafka_topic_frames,
                "verdicts": s.kafka_topic_verdicts,
                "dlq": s.kafka_topic_dlq,
                "heatmaps": s.kafka_topic_heatmaps,
                "parts": s.kafka_topic_parts,
                "parts_changelog": changelog_topic(s),
                "exactly_once": s.kafka_exactly_once,
                "idempotent": self.idempotent,
                "client_id": self.client_id,
            },
        )

    def _join(self, client: AIOKafkaConsumer) -> Rebalancer:
        """Make ``client`` this consumer's group member, with its committer; returns the
        rebalance listener to subscribe with."""
        self._consumer = client
        self._committer = Committer(client, self.tracker, self.lineage, self.stats)
        reader = {**self._consumer_kwargs(), "client_id": f"{self.client_id}-check"}
        self._rebalancer = Rebalancer(
            client,
            self.tracker,
            self.lineage,
            self._committer,
            txn=self._txn,
            reader_options={**reader, "group_id": None},
            on_fatal=self._fail,
            parts=self._parts,
        )
        return self._rebalancer

    async def _start_parts(self) -> None:
        """The part aggregator: its changelog checked (created when missing), its timer."""
        s, options = self.settings, {**self.security, **self.consumer_options}
        assert self.store is not None and self._processor is not None
        check = partial(ensure_changelog, self.bootstrap, s.kafka_topic_frames,
                        changelog_topic(s), options)  # fmt: skip
        self._parts = PartState(
            s,
            plans=PlanCache(store_plans(self.store), s.model_poll_s),
            reader_options=self._consumer_kwargs(),
            code_version=self._processor.provenance.code_version,
            counts=self.stats.parts,
            check=None if await check() else check,  # no frames topic yet: at assignment
        )
        idle = partial(caught_up, lambda: self._consumer, self.tracker, s.kafka_exactly_once)
        self._parts.start_timer(deadline_publisher(self._txn, self._publisher), idle, self._fail)

    def _fail(self, error: PublishError) -> None:
        """Stop, and have :meth:`run` raise ``error`` once stopped."""
        self._fatal = error
        self.request_stop()

    async def stop(self) -> None:
        """Commit what is acknowledged, leave the group, flush the producer. Idempotent."""
        self._stopping.set()
        if self._parts is not None:
            await self._parts.stop_timer()
        if self._consumer is not None and self._publisher is not None:
            # bounded: with the broker gone, aiokafka would retry the commit forever
            grace = max(1.0, self.settings.shutdown_grace_s)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._commit(), grace)
        for client in (self._consumer, self._producer):
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.stop()
        if self._txn is not None:
            await self._txn.close()
        self._consumer = self._producer = None
        self._committer = self._rebalancer = None
        if self._processor is not None:
            self._processor.drift.close()  # its report for GET /state taken back
        self._infer_pool.shutdown(wait=False, cancel_futures=True)
        self._decode_pool.shutdown(wait=False, cancel_futures=True)
        counts = {"verdicts": dict(self.stats.verdicts), "parts": dict(self.stats.parts)}
        log.info("consumer stopped", extra={**counts, "batches": self.stats.batches})

    async def _build_processor(self) -> BatchProcessor:
        from engine import Engine
        from store import ModelStore

        loop = asyncio.get_running_loop()
        if self.engine is None:
            self.engine = await loop.run_in_executor(
                self._infer_pool, Engine.from_settings, self.settings
            )
        # load the backbone now: missing weights fail start-up, not the first frame
        await loop.run_in_executor(self._infer_pool, self.engine.backbone)
        per_frame_s = await loop.run_in_executor(
            self._infer_pool, self.engine.warm_up, self.settings.batch_max
        )
        check_batch_time(per_frame_s, self.settings.batch_max, self._max_poll_interval_ms)
        self.store = self.store or ModelStore(self.settings, use_gpu=self.engine.spec.is_cuda)
        p = BatchProcessor.for_consumer(self.settings, self.engine, self.store, self.client_id)
        return await loop.run_in_executor(self._infer_pool, p.preload, self.store)

    def _producer_kwargs(self) -> dict[str, Any]:
        max_bytes = int(self.settings.max_frame_mb * 1024 * 1024) + HEADROOM
        kwargs: dict[str, Any] = {
            "client_id": self.client_id,
            "max_request_size": max(1024 * 1024, max_bytes),
        }
        return {**kwargs, **self.security, **self.producer_options}

    def _consumer_kwargs(self) -> dict[str, Any]:
        s = self.settings
        kwargs: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap,
            "group_id": s.kafka_group,
            "client_id": self.client_id,
            "enable_auto_commit": False,
            # a new group answers the backlog rather than skipping it: never silence
            "auto_offset_reset": "earliest",
            "isolation_level": "read_committed" if s.kafka_exactly_once else "read_uncommitted",
        }
        return {**kwargs, **self.security, **self.consumer_options}

    # --- the loop ------------------------------------------------------------------------
    async def _loop(self) -> None:
        prefetch = asyncio.create_task(self._next_batch())
        try:
            while not self._stopping.is_set():
                if not await self._wait_or_stop(prefetch):
                    break
                batch = prefetch.result()
                prefetch = asyncio.create_task(self._next_batch())  # overlaps this batch
                if batch:
                    handle = asyncio.create_task(self._handle(batch))
                    keepalive = asyncio.create_task(self._keep_membership(handle, prefetch))
                    try:
                        await self._drain(handle)
                    finally:
                        keepalive.cancel()
                        with contextlib.suppress(asyncio.CancelledError, Exception):
                            await keepalive
        finally:
            prefetch.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await prefetch

    async def _keep_membership(
        self, handle: asyncio.Task[None], prefetch: asyncio.Task[Any]
    ) -> None:
        """Keep polling while a batch is scored, once the next one is prefetched (aiokafka
        leaves the group after ``max_poll_interval_ms`` without a fetch)."""
        await asyncio.wait({handle, prefetch}, return_when=asyncio.FIRST_COMPLETED)
        if not handle.done() and self._consumer is not None:
            await keep_polling(self._consumer, handle, self._accept, self._carry, KEEPALIVE_POLL_MS)

    async def _wait_or_stop(self, task: asyncio.Task[Any]) -> bool:
        """Wait for ``task``; ``False`` if a stop was requested first."""
        stop = asyncio.create_task(self._stopping.wait())
        done, _ = await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        return task in done and not self._stopping.is_set()

    async def _drain(self, task: asyncio.Task[None]) -> None:
        """Run a batch; on a stop request give it ``BDI_SHUTDOWN_GRACE_S`` to finish."""
        if not await self._wait_or_stop(task) and not task.done():
            grace = self.settings.shutdown_grace_s
            done, _ = await asyncio.wait({task}, timeout=grace)
            if not done:
                log.warning(
                    "shutdown grace exceeded: in-flight batch abandoned (redelivered)",
                    extra={"grace_s": grace},
                )
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                return
        task.result()

    async def _next_batch(self) -> list[Decoded]:
        assert self._consumer is not None and self._processor is not None
        s = self.settings
        frames, self._carry = self._carry, []
        if len(frames) < s.batch_max:
            more = s.batch_max - len(frames)
            frames += await collect(self._consumer, self._accept, more, s.batch_wait_ms)
        return await self._processor.decode(frames, self._decode_pool) if frames else []

    def _accept(self, record: KafkaRecord) -> Frame | None:
        """Stamp a record with its partition's epoch and track it, or drop it when the
        partition is no longer ours (runs synchronously right after the fetch)."""
        tp = TopicPartition(record.topic, record.partition)
        epoch = self.tracker.epoch(tp)
        if epoch is None or not self.tracker.track(tp, epoch, record.offset):
            return None
        self.lineage.fetched(tp, record)
        return frame_from_record(record, epoch)

    async def _handle(self, batch: list[Decoded]) -> None:
        assert self._processor is not None
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        outcomes = await loop.run_in_executor(self._infer_pool, self._processor.infer, batch)
        note_batch_time(time.monotonic() - started, len(batch), self._max_poll_interval_ms)
        live = [o for o in outcomes if self.tracker.is_current(_tp(o.frame), o.frame.epoch)]
        self.stats.dropped_revoked += len(outcomes) - len(live)
        self.stats.batches += 1
        assert self._parts is not None
        async with self._parts.batch(live, self.tracker.is_current, self._infer_pool):
            if self._txn is not None:
                await self._txn.publish(live, self._preview, self._on_committed)
            else:
                assert self._publisher is not None
                await self._publisher.publish(live, self._on_delivered)
        if self._txn is None:
            await self._commit()

    def _on_delivered(self, outcome: Outcome) -> None:
        frame = outcome.frame
        if self.tracker.ack(_tp(frame), frame.epoch, frame.source.offset):
            self.stats.verdicts[outcome.verdict.verdict] += 1
            self.stats.partitions.add(frame.source.partition)
            if self._parts is not None:
                self._parts.delivered(outcome.records)

    def _preview(self, tp: TopicPartition, outcomes: Sequence[Outcome]) -> int | None:
        epoch = outcomes[0].frame.epoch
        return self.tracker.preview(tp, epoch, [o.frame.source.offset for o in outcomes])

    def _on_committed(self, tp: TopicPartition, outcomes: Sequence[Outcome], offset: int) -> None:
        for outcome in outcomes:
            self._on_delivered(outcome)
        if self._committer is not None:
            self._committer.committed_in_transaction(tp, offset)

    async def _commit(self) -> None:
        if self._committer is not None:
            await self._committer.commit()

    # --- health --------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        """What ``/health`` of the consumer's health port reports (``docs/KAFKA.md``)."""
        p = self._processor
        return health_report(
            client=self._consumer,
            running=not self._stopping.is_set(),
            stats=self.stats,
            group=self.settings.kafka_group,
            client_id=self.client_id,
            **(p.report() if p is not None else {"models": {}, "drift": {}}),
        )
