"""Collect a batch: up to ``BDI_BATCH_MAX`` records, or whatever arrived within
``BDI_BATCH_WAIT_MS`` of the first one.

``getmany`` alone returns as soon as *any* record is buffered, which on a quiet line means
batches of one; waiting a few milliseconds after the first record fills the engine's
batch without delaying a lone frame by more than ``BDI_BATCH_WAIT_MS``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)

SLOW_BATCH_SHARE = 0.5  # warn when scoring a batch takes this share of max_poll_interval_ms
DEFAULT_MAX_POLL_INTERVAL_MS = 300_000  # aiokafka's


def _slow_s(max_poll_interval_ms: int) -> float:
    """Scoring time past which a batch counts as slow."""
    return SLOW_BATCH_SHARE * max_poll_interval_ms / 1000


def check_batch_time(per_frame_s: float, batch_max: int, max_poll_interval_ms: int) -> bool:
    """At start-up, relate the backbone's measured time per frame (:meth:`Engine.warm_up`)
    to the poll interval: a full batch whose backbone alone takes more than
    ``SLOW_BATCH_SHARE`` of ``max_poll_interval_ms`` will be a "slow batch" every time.
    Logs the estimate, warns when it does not fit; True when it fits."""
    batch_s = per_frame_s * batch_max
    limit_s = _slow_s(max_poll_interval_ms)
    fits = batch_s <= limit_s
    figures = {"frames": batch_max, "backbone_ms_per_frame": round(per_frame_s * 1e3, 2),
               "backbone_s_per_batch": round(batch_s, 3),
               "max_poll_interval_ms": max_poll_interval_ms}  # fmt: skip
    if fits:
        log.info("engine warmed up", extra=figures)
    else:
        log.warning(
            "full batch too slow for the poll interval",
            extra={**figures, "frames_that_fit": int(limit_s / per_frame_s)},
        )
    return fits


def note_batch_time(scoring_s: float, frames: int, max_poll_interval_ms: int) -> None:
    """At run time, warn of a batch scored for more than ``SLOW_BATCH_SHARE`` of the poll
    interval: :func:`keep_polling` keeps the member in the group, but the line is falling
    behind its camera."""
    if scoring_s > _slow_s(max_poll_interval_ms):
        log.warning(
            "slow batch",
            extra={"frames": frames, "scoring_s": round(scoring_s, 3),
                   "max_poll_interval_ms": max_poll_interval_ms},
        )  # fmt: skip


class RecordSource(Protocol):
    """``AIOKafkaConsumer.getmany``."""

    async def getmany(
        self, *partitions: Any, timeout_ms: int = 0, max_records: int | None = None
    ) -> Mapping[Any, Sequence[Any]]: ...


async def collect(
    source: RecordSource,
    accept: Callable[[Any], T | None],
    max_records: int,
    wait_ms: float,
    idle_ms: int = 500,
) -> list[T]:
    """One batch, in fetch order per partition (empty after ``idle_ms`` without records).

    ``accept`` runs synchronously right after each ``getmany`` returns, before anything
    else can run on the event loop: that is where a record is stamped with its
    partition's current assignment epoch, so a rebalance between two fetches of one
    batch cannot mislabel a record. It returns ``None`` to drop a record.
    """
    loop = asyncio.get_running_loop()
    out: list[T] = []
    deadline: float | None = None
    while len(out) < max_records:
        if deadline is None:
            timeout_ms = idle_ms
        else:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            timeout_ms = max(1, int(remaining * 1000))
        fetched = await source.getmany(timeout_ms=timeout_ms, max_records=max_records - len(out))
        for records in fetched.values():
            for record in records:
                item = accept(record)
                if item is not None:
                    out.append(item)
        if deadline is None:
            if not out:
                return out  # idle: let the caller check for a stop request
            deadline = loop.time() + wait_ms / 1000.0
    return out


class PausableSource(RecordSource, Protocol):
    """The parts of ``AIOKafkaConsumer`` that :func:`keep_polling` uses."""

    def assignment(self) -> set[Any]: ...

    def paused(self) -> set[Any]: ...

    def pause(self, *partitions: Any) -> None: ...

    def resume(self, *partitions: Any) -> None: ...


async def keep_polling(
    source: PausableSource,
    until: asyncio.Future[Any],
    accept: Callable[[Any], T | None],
    carry: list[T],
    poll_ms: int,
) -> None:
    """Poll ``source`` with its partitions paused until ``until`` is done.

    aiokafka leaves the group when nothing has fetched for ``max_poll_interval_ms``; a
    batch scored for longer (a slow model, a busy device) would lose the partitions under
    it. Paused partitions return no records, so nothing is read ahead of the batch already
    waiting; anything that comes back anyway (a partition assigned meanwhile) is accepted
    into ``carry`` for the next batch. The partitions paused here are resumed at the end.
    """
    paused = set(source.assignment()) - set(source.paused())
    source.pause(*paused)
    try:
        while not until.done():
            fetched = await source.getmany(timeout_ms=poll_ms)
            for records in fetched.values():
                for record in records:
                    item = accept(record)
                    if item is not None:
                        carry.append(item)
    finally:
        still = paused & set(source.assignment())
        if still:
            source.resume(*still)
