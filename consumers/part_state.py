"""The part aggregator inside the frame consumer: one :class:`~consumers.parts.PartTable`
per assigned frames partition, restored from the changelog on assignment, fed with each
batch's verdicts, and a timer that decides parts at their deadline without more traffic.

Frames are keyed by ``part_id``, so all frames of a part are on one frames partition and
its owner sees all of them (Kafka Streams' co-partitioning). Partition ``p`` of the
changelog holds the state of frames partition ``p``. A part's records and its state are
written with its frame's records: in at-least-once mode before the frame's offset is
committed, the state last (:class:`~consumers.publish.Publisher`); in exactly-once mode in
the partition's transaction. ``docs/KAFKA.md`` ("Part state and its changelog").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from consumers.errors import ConsumerError, PublishError
from consumers.outcome import Outcome, OutRecord
from consumers.part_rules import LATE_SCHEMA, SCHEMA, frame_part, recipe_of
from consumers.parts import Emit, PartStateError, PartTable
from consumers.topics import changelog_topic, stop_consumer
from store.errors import StoreError

if TYPE_CHECKING:
    from configs.settings import Settings
    from consumers.eos import TransactionalPublisher
    from consumers.offsets import OffsetTracker
    from consumers.publish import Publisher
    from store import ModelStore
    from store.plans import InspectionPlan

log = logging.getLogger(__name__)

TICK_S = 0.2  # how often the timer looks for parts past their deadline
RESTORE_TIMEOUT_S = 300.0
PlanFinder = Callable[[str], "InspectionPlan | None"]
Publish = Callable[[TopicPartition, list[OutRecord]], Awaitable[bool]]
Idle = Callable[[TopicPartition], Awaitable[bool]]


def store_plans(store: ModelStore) -> PlanFinder:
    """How the consumer reads a recipe's current plan (``None``: the recipe has none)."""
    return store.find_plan


class PlanCache:
    """A recipe's plan, asked of the store at most once per ``poll_s`` (like models): a
    plan stored by the REST API is in use within that period, without a restart. An
    unreadable plan keeps the last one read. Thread-safe."""

    def __init__(
        self, find: PlanFinder, poll_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.find = find
        self.poll_s = poll_s
        self.clock = clock
        self._plans: dict[str, tuple[InspectionPlan | None, float]] = {}
        self._lock = threading.Lock()

    def resolve(self, recipes: Iterable[str]) -> dict[str, InspectionPlan | None]:
        with self._lock:
            return {recipe: self._one(recipe) for recipe in set(recipes)}

    def _one(self, recipe: str) -> InspectionPlan | None:
        now = self.clock()
        known = self._plans.get(recipe)
        if known is not None and now - known[1] < self.poll_s:
            return known[0]
        previous = known[0] if known is not None else None
        try:
            plan = self.find(recipe)
        except StoreError as exc:
            log.warning("inspection plan unreadable; keeping the last one read",
                        extra={"recipe_id": recipe, "error": str(exc)})  # fmt: skip
            plan = previous
        if plan is not None and (previous is None or previous.version != plan.version):
            log.info("inspection plan loaded", extra={"recipe_id": recipe, "version": plan.version})
        self._plans[recipe] = (plan, now)
        return plan


class PartState:
    """The aggregator's tables, their restore, and the deadline timer, for one consumer.

    ``reader_options``: the consumer's aiokafka arguments (security options included): a
    client outside the group made with them reads the changelog back;
    ``check``: checks the changelog (:func:`~consumers.topics.ensure_changelog`) before the
    first restore, where the consumer could not check it at start."""

    def __init__(
        self,
        settings: Settings,
        *,
        plans: PlanCache,
        reader_options: dict[str, Any],
        code_version: str | None,
        counts: Counter[str],
        check: Callable[[], Awaitable[int | None]] | None = None,
    ) -> None:
        self.parts_topic = settings.kafka_topic_parts
        self.changelog = changelog_topic(settings)
        self.plans = plans
        client_id = f"{reader_options.get('client_id', 'bdi')}-parts"
        self.reader_options = {**reader_options, "group_id": None, "client_id": client_id,
                               "isolation_level": "read_committed"}  # fmt: skip
        self.code_version = code_version
        self.counts = counts  # part records acknowledged, per verdict (and "late")
        self.tables: dict[TopicPartition, PartTable] = {}
        self._ready: dict[TopicPartition, asyncio.Event] = {}
        self._locks: dict[TopicPartition, asyncio.Lock] = {}
        self._ticked: dict[TopicPartition, float] = {}
        self._timer: asyncio.Task[None] | None = None
        self._check = check  # the changelog's partitions, until found (ensure_changelog)

    # --- assignment ----------------------------------------------------------------------
    def expect(self, partitions: Sequence[TopicPartition]) -> None:
        """On assignment, before anything awaits: frames of these partitions fetched while
        their state is read back wait for it (see :meth:`batch`)."""
        for tp in partitions:
            self.tables.pop(tp, None)
            self._ready[tp] = asyncio.Event()

    def drop(self, partitions: Sequence[TopicPartition]) -> None:
        """On revocation (or a failed assignment): forget the tables, release the waiters."""
        for tp in partitions:
            self.tables.pop(tp, None)
            self._ticked.pop(tp, None)
            event = self._ready.pop(tp, None)
            if event is not None:
                event.set()

    async def restore(self, partitions: Sequence[TopicPartition]) -> None:
        """Rebuild the tables of ``partitions`` from their changelog partitions, read from
        the beginning to their end (read_committed); each partition is ready as soon as its
        own is read. Waiters are released whatever happens; a partition whose restore
        failed has no table, and its frames fail their batch."""
        try:
            await self._restore(list(partitions))
        finally:
            self.release(partitions)

    def release(self, partitions: Sequence[TopicPartition]) -> None:
        """Release the waiters of partitions whose restore did not finish (or never ran):
        they have no table, so their frames fail their batch rather than go uncounted."""
        for tp in partitions:
            event = self._ready.get(tp)
            if event is not None and not event.is_set():
                self.tables.pop(tp, None)
                event.set()

    async def _restore(self, partitions: list[TopicPartition]) -> None:
        if not partitions:
            return
        if self._check is not None:  # the frames topic did not exist when the consumer started
            if await self._check() is None:
                raise ConsumerError(f"cannot check the parts changelog {self.changelog!r}")
            self._check = None
        sources = {TopicPartition(self.changelog, tp.partition): tp for tp in partitions}
        reader = AIOKafkaConsumer(**self.reader_options)
        await reader.start()
        try:
            reader.assign(list(sources))
            starts = await reader.beginning_offsets(list(sources))
            ends = await reader.end_offsets(list(sources))
            tables = {tp: PartTable(code_version=self.code_version) for tp in partitions}
            read = dict.fromkeys(sources, 0)
            started = time.monotonic()
            for ctp in sources:
                reader.seek(ctp, starts[ctp])
            todo = set(sources)
            quiet: set[TopicPartition] = set()  # at their end, and a fetch found no more
            while True:
                for ctp in list(todo):
                    at_end = await reader.position(ctp) >= ends[ctp]
                    # an empty partition is done at once; else one more fetch must find
                    # nothing (Tansu answers a list-offsets short of its last batch)
                    if at_end and (ends[ctp] == starts[ctp] or ctp in quiet):
                        todo.discard(ctp)
                        self._restored(sources[ctp], tables[sources[ctp]], read[ctp], started)
                if not todo:
                    return
                if time.monotonic() - started > RESTORE_TIMEOUT_S:
                    late = sorted(t.partition for t in todo)
                    raise ConsumerError(
                        f"part state not restored from {self.changelog!r} within "
                        f"{RESTORE_TIMEOUT_S:.0f} s (partitions {late})"
                    )
                batch = await reader.getmany(*todo, timeout_ms=200)
                quiet = {ctp for ctp in todo if not batch.get(ctp)}
                for ctp, records in batch.items():
                    for record in records:
                        if record.key is not None:
                            read[ctp] += 1
                            _apply(tables[sources[ctp]], record, ctp)
        finally:
            await stop_consumer(reader)

    def _restored(self, tp: TopicPartition, table: PartTable, read: int, started: float) -> None:
        event = self._ready.get(tp)
        if event is None or event.is_set():
            return  # revoked while it was read
        self.tables[tp] = table
        self._ticked[tp] = time.monotonic()
        event.set()
        ms = round((time.monotonic() - started) * 1e3, 1)
        log.info("part state restored", extra={
            "partition": tp.partition, "changelog": self.changelog, "parts_open": table.open_parts,
            "parts_decided": table.decided_parts, "records_read": read, "ms": ms})  # fmt: skip

    # --- batches -------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def batch(
        self,
        outcomes: Sequence[Outcome],
        is_current: Callable[[TopicPartition, int], bool],
        pool: Executor,
    ) -> AsyncIterator[None]:
        """While publishing a batch: every outcome of a current assignment gets its part
        records and state records appended, its partition's lock held until the batch is
        published, so a deadline's records never interleave with it. A partition's frames
        wait for its restore first."""
        tps = sorted({_tp(o) for o in outcomes}, key=lambda tp: (tp.topic, tp.partition))
        recipes = {o.verdict.recipe_id for o in outcomes if o.verdict.part_id}
        wanted = {r for r in map(recipe_of, recipes) if r is not None}
        loop = asyncio.get_running_loop()
        plans = await loop.run_in_executor(pool, self.plans.resolve, wanted) if wanted else {}
        for tp in tps:
            event = self._ready.get(tp)
            if event is not None:
                await event.wait()
        async with contextlib.AsyncExitStack() as stack:
            for tp in tps:
                await stack.enter_async_context(self._lock(tp))
            for outcome in outcomes:
                tp = _tp(outcome)
                if not is_current(tp, outcome.frame.epoch):
                    continue  # revoked meanwhile: neither published as ours nor committed
                table = self.tables.get(tp)
                if table is None:
                    raise PublishError(f"part state of {tp.topic}:{tp.partition} not restored")
                outcome.records.extend(self._records(tp, self._add(table, outcome, plans)))
            yield

    @staticmethod
    def _add(
        table: PartTable, outcome: Outcome, plans: dict[str, InspectionPlan | None]
    ) -> list[Emit]:
        seen_ms = outcome.frame.timestamp_ms
        if seen_ms <= 0:  # no usable record timestamp: the consumer's clock
            seen_ms = _wall_ms()
        if outcome.verdict.part_id is None:
            return table.expire(seen_ms)  # every frame moves the partition's clock
        verdict = outcome.verdict.to_dict()
        ref = frame_part(verdict)
        plan = plans.get(ref.recipe_id) if ref is not None and ref.recipe_id else None
        return table.add(verdict, plan, seen_ms)

    def _records(self, tp: TopicPartition, emits: list[Emit]) -> list[OutRecord]:
        out = []
        for e in emits:
            key = e.key.encode()
            if e.kind == "changelog":
                out.append(OutRecord(self.changelog, key, e.value, partition=tp.partition,
                                     state=True))  # fmt: skip
            else:
                out.append(OutRecord(self.parts_topic, key, e.value, _headers(e)))
        return out

    def delivered(self, records: Iterable[OutRecord]) -> None:
        """Count the part records among acknowledged ``records``."""
        for r in records:
            if r.topic == self.parts_topic and not r.state:
                head = dict(r.headers)
                late = head.get("schema") == LATE_SCHEMA.encode()
                self.counts["late" if late else head.get("verdict", b"?").decode()] += 1

    def _lock(self, tp: TopicPartition) -> asyncio.Lock:
        return self._locks.setdefault(tp, asyncio.Lock())

    # --- deadlines -----------------------------------------------------------------------
    def start_timer(self, publish: Publish, idle: Idle, on_fatal: Callable[[PublishError], None]):
        """Decide parts at their deadline without more traffic: every ``TICK_S``, for each
        partition restored and idle (everything fetched is answered, nothing left to
        fetch), move its clock on and publish what that decides (``publish``: the part
        records, then the state; at-least-once or in the partition's transaction)."""
        self._timer = asyncio.create_task(self._run_timer(publish, idle, on_fatal))

    async def stop_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await timer

    async def _run_timer(
        self, publish: Publish, idle: Idle, on_fatal: Callable[[PublishError], None]
    ) -> None:
        try:
            while True:
                await asyncio.sleep(TICK_S)
                for tp in list(self.tables):
                    await self._tick(tp, publish, idle)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # parts left undecided would be silence: stop instead
            log.exception("part deadline timer failed")
            on_fatal(exc if isinstance(exc, PublishError) else PublishError(f"part timer: {exc}"))

    async def _tick(self, tp: TopicPartition, publish: Publish, idle: Idle) -> None:
        table = self.tables.get(tp)
        if table is None:
            return
        mono = time.monotonic()
        elapsed_ms = int((mono - self._ticked.get(tp, mono)) * 1e3)
        self._ticked[tp] = mono
        due = table.next_due()
        # idle: the clock moves with the wall clock, or by the time elapsed where the
        # record timestamps run ahead of it; busy: the frames' own timestamps move it
        now_ms = max(_wall_ms(), table.clock + elapsed_ms)
        if due is None or due > now_ms or not await idle(tp):
            return
        async with self._lock(tp):
            if self.tables.get(tp) is not table:
                return  # revoked meanwhile
            records = self._records(tp, table.expire(now_ms))
            if records and await publish(tp, records):
                self.delivered(records)


def deadline_publisher(txn: TransactionalPublisher | None, publisher: Publisher | None) -> Publish:
    """How the timer publishes what a deadline decided: in a transaction of the partition
    (exactly-once), else the part records, then their state, acknowledged."""

    async def publish(tp: TopicPartition, records: list[OutRecord]) -> bool:
        if txn is not None:
            return await txn.send(tp, records)
        assert publisher is not None
        await publisher.publish_records(records)
        return True

    return publish


async def caught_up(
    client: Callable[[], AIOKafkaConsumer | None],
    tracker: OffsetTracker[TopicPartition],
    read_committed: bool,
    tp: TopicPartition,
) -> bool:
    """Whether ``tp`` is idle: every frame fetched is answered and the last fetch found
    nothing more to read (its position is at the log's end, or the last stable offset)."""
    consumer = client()
    if consumer is None or tp not in tracker.partitions or tracker.pending(tp):
        return False
    end = consumer.last_stable_offset(tp) if read_committed else consumer.highwater(tp)
    if end is None or end < 0:
        return False  # no fetch answered yet
    try:
        return bool(await asyncio.wait_for(consumer.position(tp), 0.1) >= end)
    except Exception:  # revoked meanwhile, or no valid position yet
        return False


def _apply(table: PartTable, record: Any, tp: TopicPartition) -> None:
    try:
        table.restore(record.key, record.value)
    except PartStateError as exc:  # one unreadable record must not keep the partition down
        log.error("unreadable part state skipped", extra={"offset": record.offset,
                  "changelog": f"{tp.topic}:{tp.partition}", "error": str(exc)})  # fmt: skip


def _headers(e: Emit) -> tuple[tuple[str, bytes], ...]:
    """Routing headers of part records, so filters need not parse JSON."""
    record = e.record or {}
    schema = record.get("schema", SCHEMA)
    pairs = {"schema": schema, "part_id": e.key, "recipe_id": record.get("recipe_id")}
    if schema == SCHEMA:
        pairs["verdict"] = record.get("verdict")
    return tuple((k, str(v).encode()) for k, v in pairs.items() if v is not None)


def _tp(outcome: Outcome) -> TopicPartition:
    return TopicPartition(outcome.frame.source.topic, outcome.frame.source.partition)


def _wall_ms() -> int:
    return int(time.time() * 1e3)
