"""The live feed: the line as it happens, for the operator's Line page (docs/UI.md).

:class:`LiveFeed` tails ``bdi.verdicts`` and ``bdi.parts`` without a consumer group (every
partition assigned by hand, nothing committed, so it takes nothing from the line's groups),
starting a short backlog before the end so that a fresh page shows the last verdicts. It
keeps what ``consumers/live_stats.py`` says, bounded, and hands each fetched batch to its
subscribers' bounded queues: a slow reader loses its oldest batches, never holds the feed
up. Every ~2 s it reads the consumers' lag on the frames topic (the group's committed
offsets against the ends of the logs). A broker that cannot be reached is reported
(``unreachable``) and tried again with a growing pause; nothing here ever raises into the
API that runs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    NodeNotReadyError,
    RequestTimedOutError,
)

from consumers.errors import ConsumerError
from consumers.live_stats import (
    KEEP_PARTS,
    QUEUE_BATCHES,
    Compact,
    Fanout,
    Feed,
    LineState,
    Subscription,
    compact_part,
    compact_verdict,
)
from consumers.security import connection_options, security_options
from consumers.topics import require_bootstrap, start_client, stop_consumer, topic_partitions

if TYPE_CHECKING:
    from aiokafka.structs import ConsumerRecord

    from configs.settings import Settings

log = logging.getLogger(__name__)

BACKLOG_VERDICTS = 100  # read at start, spread over the partitions
POLL_MS = 200
MAX_RECORDS = 500
LAG_EVERY_S = 2.0
LAG_TIMEOUT_S = 5.0
RETRY_FIRST_S, RETRY_MAX_S = 1.0, 30.0
TOPIC_WAIT_S = 10.0  # a missing topic: tried again later (bdi consume may create it)
# what a broker that cannot be reached makes a request raise
UNREACHABLE = (KafkaConnectionError, NodeNotReadyError, RequestTimedOutError,
               KafkaTimeoutError, TimeoutError, OSError)  # fmt: skip


class LiveFeed:
    """``start()`` once (idempotent), ``subscribe()`` per reader, ``stop()`` at the end."""

    def __init__(self, settings: Settings, *, queue_batches: int = QUEUE_BATCHES) -> None:
        self.settings = settings
        self.topics = {"verdicts": settings.kafka_topic_verdicts,
                       "parts": settings.kafka_topic_parts}  # fmt: skip
        self.state = LineState()
        self.fanout = Fanout(queue_batches)
        self.feed: Feed = "idle"
        self.message: str | None = None
        self.lag: int | None = None
        self.client_id = f"bdi-live-{socket.gethostname()}-{os.getpid()}"
        self._positions: dict[TopicPartition, int] = {}  # next offset, kept over reconnects
        self._live_from: dict[TopicPartition, int] = {}  # below: the backlog read at start
        self._frames: list[TopicPartition] = []  # the frames topic's, for the lag
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # --- the API side -----------------------------------------------------------------
    def start(self) -> None:
        """Start tailing in the background (once; later calls do nothing)."""
        if self._task is None and not self._stopping.is_set():
            self._task = asyncio.create_task(self._run(), name="bdi-live-feed")

    async def stop(self) -> None:
        """End every subscriber's stream, then the tailer."""
        self._stopping.set()
        self.fanout.close()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), 10.0)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task

    def subscribe(self) -> Subscription:
        self.start()
        return self.fanout.subscribe()

    def unsubscribe(self, sub: Subscription) -> None:
        self.fanout.unsubscribe(sub)

    def snapshot(self) -> dict[str, Any]:
        return {**self.state.snapshot(), "stats": self.stats()}

    def stats(self, dropped: int = 0) -> Compact:
        stats = self.state.stats(time.monotonic(), self.feed, self.lag, self.message)
        return {**stats, "dropped": dropped}

    # --- the tailer -------------------------------------------------------------------
    async def _run(self) -> None:
        pause = RETRY_FIRST_S
        while not self._stopping.is_set():
            try:
                await self._session()
                pause = RETRY_FIRST_S
            except (KafkaError, ConsumerError, OSError, TimeoutError) as exc:
                self._unreachable(exc)
            except Exception as exc:  # noqa: BLE001 - the API goes on; the page says why
                log.exception("live feed failed")
                self._unreachable(exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), pause)
            pause = min(pause * 2, RETRY_MAX_S)

    def _unreachable(self, exc: BaseException) -> None:
        self.feed, self.lag = "unreachable", None
        self.message = str(exc) or type(exc).__name__
        log.warning("live feed: broker not reached", extra={"error": self.message})

    def consumer_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "bootstrap_servers": self.settings.kafka_bootstrap,
            "group_id": None,  # manual assignment: no group joined, nothing committed
            "client_id": self.client_id,
            "enable_auto_commit": False,
            "isolation_level": "read_committed",  # aborted verdicts were never given
            "max_poll_records": MAX_RECORDS,
        }
        return {**kwargs, **security_options(self.settings)}

    async def _session(self) -> None:
        """Connect, assign, seek, then read until stopped. Raises when the broker fails."""
        bootstrap = require_bootstrap(self.settings)
        kwargs = self.consumer_kwargs()
        consumer = AIOKafkaConsumer(**kwargs)
        await start_client(bootstrap, consumer, kwargs)
        admin: AIOKafkaAdminClient | None = None
        try:
            await self._assign(consumer)
            options = connection_options(kwargs)
            admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **options)
            await start_client(bootstrap, admin, options)
            self.feed, self.message = "live", None
            if self.state.live_since is None:
                self.state.live_since = time.monotonic()
            log.info("live feed started", extra={"topics": self.topics})
            await self._tail(consumer, admin)
        finally:
            if admin is not None:
                with contextlib.suppress(Exception):
                    await admin.close()
            with contextlib.suppress(Exception):
                await stop_consumer(consumer)

    async def _assign(self, consumer: AIOKafkaConsumer) -> None:
        """Every partition of both topics; each read from where this feed left it, else a
        short backlog before its end (the last ~100 verdicts and ~50 parts in all)."""
        tps: list[TopicPartition] = []
        backlog: dict[str, int] = {}
        for kind, topic in self.topics.items():
            found = await topic_partitions(consumer, topic, TOPIC_WAIT_S)
            wanted = BACKLOG_VERDICTS if kind == "verdicts" else KEEP_PARTS
            backlog[topic] = math.ceil(wanted / len(found))
            tps += found
        consumer.assign(tps)
        starts = await consumer.beginning_offsets(tps)
        ends = await consumer.end_offsets(tps)
        for tp in tps:
            if tp not in self._live_from:
                self._live_from[tp] = ends[tp]
            begin = max(starts[tp], ends[tp] - backlog[tp.topic])
            position = self._positions.get(tp, begin)
            consumer.seek(tp, position if starts[tp] <= position <= ends[tp] else begin)

    async def _tail(self, consumer: AIOKafkaConsumer, admin: AIOKafkaAdminClient) -> None:
        next_lag = 0.0
        while not self._stopping.is_set():
            fetched = await consumer.getmany(timeout_ms=POLL_MS)
            if fetched:
                self.take(fetched)
            if time.monotonic() >= next_lag:
                next_lag = time.monotonic() + LAG_EVERY_S
                await self._read_lag(consumer, admin)

    def take(self, fetched: Mapping[TopicPartition, list[ConsumerRecord]]) -> None:
        """One fetched batch into the state, then to every subscriber."""
        now = time.monotonic()
        verdicts: list[Compact] = []
        parts: list[Compact] = []
        for tp, records in fetched.items():
            for record in records:
                self._positions[tp] = record.offset + 1
                doc = _document(record.value)
                if doc is None:
                    continue
                if tp.topic == self.topics["verdicts"]:
                    item = compact_verdict(doc, record.timestamp)
                    if item is not None:
                        live = record.offset >= self._live_from.get(tp, 0)
                        self.state.add_verdict(item, now, live)
                        verdicts.append(item)
                else:
                    item = compact_part(doc, record.timestamp)
                    if item is not None:
                        self.state.add_part(item)
                        parts.append(item)
        self.fanout.publish("verdicts", verdicts)
        self.fanout.publish("parts", parts)

    async def _read_lag(self, consumer: AIOKafkaConsumer, admin: AIOKafkaAdminClient) -> None:
        """The frames the consumers' group has not committed yet, over the partitions of the
        frames topic it has committed on (None: no commit yet, or no frames topic). A broker
        that does not answer marks the feed unreachable until it does again."""
        frames, group = self.settings.kafka_topic_frames, self.settings.kafka_group
        try:
            async with asyncio.timeout(LAG_TIMEOUT_S):
                if not self._frames:
                    # every topic: a Metadata request naming a missing one may create it
                    found = {t["topic"]: t["partitions"] for t in await admin.describe_topics()}
                    self._frames = [TopicPartition(frames, p["partition"])
                                    for p in found.get(frames, [])]  # fmt: skip
                # the partitions named: some brokers cannot answer "all of the group's"
                offsets = (
                    await admin.list_consumer_group_offsets(group, partitions=self._frames)
                    if self._frames
                    else {}
                )
                committed = {tp: o.offset for tp, o in offsets.items() if o.offset >= 0}
                ends = await consumer.end_offsets(list(committed)) if committed else {}
        except UNREACHABLE as exc:
            self.feed, self.lag = "unreachable", None
            self.message = f"Kafka at {self.settings.kafka_bootstrap} does not answer: {exc!r}"
            return
        except KafkaError as exc:  # the broker answered: no coordinator yet, and the like
            log.debug("live feed: lag unknown", extra={"error": repr(exc)})
            committed = {}
        self.feed, self.message = "live", None
        self.lag = sum(max(0, ends[tp] - o) for tp, o in committed.items()) if committed else None


def _document(value: bytes | None) -> dict[str, Any] | None:
    if value is None:
        return None
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    return doc if isinstance(doc, dict) else None
