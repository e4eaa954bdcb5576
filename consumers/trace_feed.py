"""The trace feed: ``bdi.verdicts``, ``bdi.parts`` and ``bdi.frames`` into the trace store
(``store/trace``, docs/TRACE.md), as one member of the ``BDI_TRACE_GROUP`` group.

Loop: fetch a batch → decode → store it in one database transaction (off the event loop)
→ commit ``{tp: last_offset + 1}``. Offsets are committed only once the rows below them
are committed in the database, and every row is keyed, so a kill at any point or a
rebalance redelivers records that change nothing: at-least-once into an idempotent sink.
Records of transactions still open or aborted are never read (``read_committed``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from consumers.security import security_options
from consumers.topics import require_bootstrap, start_client
from store.trace import Batch, FrameImage, Ingested, TraceStore

if TYPE_CHECKING:
    from aiokafka.structs import ConsumerRecord

    from configs.settings import Settings

log = logging.getLogger(__name__)

POLL_MS = 500
MAX_RECORDS = 500
MAINTAIN_EVERY_S = 10.0
WARN_EVERY_S = 600.0  # how often an unmet disk budget is logged again
GB = 1 << 30


def parts_topic(settings: Settings) -> str:
    """``BDI_KAFKA_TOPIC_PARTS`` (``bdi.parts``)."""
    return settings.kafka_topic_parts


def _headers(record: ConsumerRecord) -> dict[str, str]:
    """Text headers, the first of each name (the frame consumer refuses contradictions)."""
    out: dict[str, str] = {}
    for name, raw in record.headers or ():
        text = bytes(raw or b"").decode("utf-8", errors="replace").strip()
        if text:
            out.setdefault(str(name), text)
    return out


def frame_image(record: ConsumerRecord) -> FrameImage | None:
    """A frame record's image and ids; a frame without ``frame_id`` gets the id its verdict
    got (``topic:partition:offset``, as ``consumers.frames.Source.derived_frame_id``)."""
    if record.value is None:
        return None
    h = _headers(record)
    frame_id = h.get("frame_id") or f"{record.topic}:{record.partition}:{record.offset}"
    return FrameImage(
        frame_id, bytes(record.value), h.get("part_id"), h.get("recipe_id"), h.get("role_id"),
        h.get("roi_id"), record.topic, record.partition, record.offset,
    )  # fmt: skip


def _document(record: ConsumerRecord) -> dict[str, Any] | None:
    if record.value is None:
        return None
    try:
        doc = orjson.loads(record.value)
    except orjson.JSONDecodeError:
        doc = None
    if not isinstance(doc, dict):
        log.warning(
            "not a JSON object: skipped",
            extra={"topic": record.topic, "partition": record.partition, "offset": record.offset},
        )
        return None
    return doc


class TraceFeed:
    """One member of the trace group. ``run()`` until :meth:`request_stop`."""

    def __init__(self, settings: Settings, consumer_options: Mapping[str, Any] | None = None):
        self.settings = settings
        self.bootstrap = require_bootstrap(settings)
        self.security = security_options(settings)
        self.consumer_options = dict(consumer_options or {})
        self.topics = {
            "verdicts": settings.kafka_topic_verdicts,
            "parts": parts_topic(settings),
            "frames": settings.kafka_topic_frames,
        }
        self.client_id = f"bdi-trace-{socket.gethostname()}-{os.getpid()}"
        self.totals = Ingested()
        self._stopping = asyncio.Event()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="bdi-trace-db")
        self._store: TraceStore | None = None
        self._warned_at = 0.0

    def request_stop(self) -> None:
        self._stopping.set()

    def consumer_kwargs(self) -> dict[str, Any]:
        s = self.settings
        kwargs: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap,
            "group_id": s.trace_group,
            "client_id": self.client_id,
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",  # a new group stores the whole backlog
            "isolation_level": "read_committed",
            "max_poll_records": MAX_RECORDS,
        }
        return {**kwargs, **self.security, **self.consumer_options}

    async def _db(self, func: Any, *args: Any) -> Any:
        """The store's work runs on its own thread: heartbeats keep flowing meanwhile."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, func, *args)

    async def run(self) -> None:
        try:
            store = self._store = await self._db(TraceStore.open, self.settings)
            try:
                await self._consume(store)
            finally:
                await self._db(store.close)
        finally:
            self._executor.shutdown(wait=False)

    async def _consume(self, store: TraceStore) -> None:
        consumer = AIOKafkaConsumer(**self.consumer_kwargs())
        consumer.subscribe(sorted(set(self.topics.values())))
        await start_client(self.bootstrap, consumer, self.consumer_kwargs())
        log.info(
            "trace feed started",
            extra={"group": self.settings.trace_group, "topics": self.topics,
                   "database": store.db.shown, "crops": str(store.files.folder)},
        )  # fmt: skip
        try:
            await self._loop(consumer, store)
        finally:
            await consumer.stop()
            log.info("trace feed stopped", extra=_totals(self.totals))

    async def _loop(self, consumer: AIOKafkaConsumer, store: TraceStore) -> None:
        maintained = 0.0
        while not self._stopping.is_set():
            fetched = await consumer.getmany(timeout_ms=POLL_MS)
            if fetched:
                done = await self._db(store.ingest, self.decode(fetched.values()))
                _add(self.totals, done)
                await self._commit(consumer, fetched)
            if time.monotonic() - maintained > MAINTAIN_EVERY_S:
                maintained = time.monotonic()
                self._report(await self._db(store.maintain))

    def decode(self, fetched: Any) -> Batch:
        batch = Batch(int(time.time() * 1000))
        for records in fetched:
            for record in records:
                if record.topic == self.topics["frames"]:
                    image = frame_image(record)
                    if image is not None:
                        batch.frames.append(image)
                    continue
                doc = _document(record)
                if doc is None:
                    continue
                if record.topic == self.topics["parts"]:
                    batch.parts.append(doc)
                else:
                    batch.verdicts.append(doc)
        return batch

    async def _commit(
        self, consumer: AIOKafkaConsumer, fetched: Mapping[TopicPartition, Sequence[Any]]
    ) -> None:
        """Commit past what was stored. A rebalance may have taken partitions meanwhile:
        the commit is then refused, and their new owner stores those records again, which
        changes nothing."""
        offsets = {tp: records[-1].offset + 1 for tp, records in fetched.items() if records}
        try:
            await consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError, KafkaError) as exc:
            log.warning("offsets not committed (rebalance?)", extra={"error": repr(exc)})

    def _report(self, done: Any) -> None:
        if done.dropped or done.evicted:
            log.info("crops let go", extra={"dropped": done.dropped, "evicted": done.evicted})
        now = time.monotonic()
        if done.over_budget_bytes and now - self._warned_at > WARN_EVERY_S:
            self._warned_at = now
            log.warning(
                "crops over BDI_TRACE_MAX_GB: NG crops younger than BDI_TRACE_NG_DAYS are "
                "never evicted",
                extra={"stored_gb": round(done.stored_bytes / GB, 3),
                       "max_gb": self.settings.trace_max_gb,
                       "ng_days": self.settings.trace_ng_days},
            )  # fmt: skip


def _add(total: Ingested, done: Ingested) -> None:
    for name in ("frames", "verdicts", "parts", "late", "ignored", "conflicts", "bad"):
        setattr(total, name, getattr(total, name) + getattr(done, name))
    total.crops_written += done.crops_written


def _totals(total: Ingested) -> dict[str, int]:
    names = ("frames", "verdicts", "parts", "late", "ignored", "conflicts", "bad", "crops_written")
    return {name: getattr(total, name) for name in names}
