"""Batch collection: up to BDI_BATCH_MAX records, waiting at most BDI_BATCH_WAIT_MS after
the first; records stamped as they arrive."""

from __future__ import annotations

import asyncio
import logging

import pytest

from consumers.batcher import SLOW_BATCH_SHARE, check_batch_time, note_batch_time
from tests.helpers.consumer import TOO_SLOW, batcher_logs


class Source:
    """Scripted ``getmany``: each call returns the next dict (``{}`` when exhausted)."""

    def __init__(self, *answers: dict) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[int, int | None]] = []

    async def getmany(self, *partitions, timeout_ms=0, max_records=None):
        self.calls.append((timeout_ms, max_records))
        await asyncio.sleep(0)
        if not self.answers:
            return {}
        got = self.answers.pop(0)
        return {tp: recs[:max_records] for tp, recs in got.items()}


def run(source, max_records=4, wait_ms=50.0, accept=lambda r: r):
    from consumers.batcher import collect

    return asyncio.run(collect(source, accept, max_records, wait_ms, idle_ms=10))


def test_idle_returns_empty_after_one_poll():
    src = Source()
    assert run(src) == []
    assert src.calls == [(10, 4)]


def test_keeps_collecting_after_the_first_record_until_full():
    src = Source({"p0": [1]}, {"p1": [2, 3]}, {"p0": [4, 5, 6]})
    assert run(src) == [1, 2, 3, 4]
    assert [c[1] for c in src.calls] == [4, 3, 1], "asks only for what still fits"


def test_stops_waiting_when_nothing_more_arrives():
    src = Source({"p0": [1, 2]})
    assert run(src, max_records=16, wait_ms=30.0) == [1, 2]


def test_zero_wait_returns_the_first_fetch():
    src = Source({"p0": [1]}, {"p0": [2]})
    assert run(src, wait_ms=0.0) == [1]
    assert len(src.calls) == 1


def test_order_within_a_partition_is_kept():
    src = Source({"p0": [1, 2], "p1": [10, 11]})
    out = run(src, max_records=8, wait_ms=0.0)
    assert out.index(1) < out.index(2) and out.index(10) < out.index(11)


def test_accept_stamps_each_record_right_after_its_fetch_and_may_drop_it():
    seen: list[tuple[int, int]] = []
    src = Source({"p0": [1, 2]}, {"p0": [3]})

    def accept(record):
        seen.append((record, len(src.calls)))  # which fetch it came from
        return None if record == 2 else record * 10

    assert run(src, accept=accept) == [10, 30]
    assert seen == [(1, 1), (2, 1), (3, 2)]


class _PausableSource:
    """Records per partition, like aiokafka: paused partitions return nothing."""

    def __init__(self, records: dict[str, list[int]]) -> None:
        self.records = records
        self._paused: set[str] = set()
        self.polls = 0

    def assignment(self) -> set[str]:
        return set(self.records)

    def paused(self) -> set[str]:
        return set(self._paused)

    def pause(self, *partitions: str) -> None:
        self._paused.update(partitions)

    def resume(self, *partitions: str) -> None:
        self._paused.difference_update(partitions)

    async def getmany(self, *partitions, timeout_ms=0, max_records=None):
        self.polls += 1
        await asyncio.sleep(timeout_ms / 1000)
        return {tp: recs for tp, recs in self.records.items() if tp not in self._paused}


def test_keep_polling_pauses_polls_empty_and_resumes() -> None:
    from consumers.batcher import keep_polling

    source = _PausableSource({"p0": [1, 2], "p1": [3]})
    source.pause("p1")  # paused by someone else: stays paused

    async def scenario() -> list[int]:
        carry: list[int] = []
        until = asyncio.ensure_future(asyncio.sleep(0.05))
        await keep_polling(source, until, lambda r: r, carry, poll_ms=5)
        return carry

    carry = asyncio.run(scenario())
    assert carry == []  # nothing read ahead while paused
    assert source.polls >= 2  # it kept fetching: the membership clock runs
    assert source.paused() == {"p1"}  # what it paused is resumed, nothing else


def test_a_batch_within_the_share_of_the_interval_fits(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="consumers")
    # 16 frames at 10 ms: 0.16 s, against half of a 1 s interval
    assert check_batch_time(0.010, 16, 1000)
    [record] = batcher_logs(caplog, "engine warmed up")
    assert record.levelno == logging.INFO
    assert record.backbone_s_per_batch == pytest.approx(0.16)
    assert not batcher_logs(caplog, TOO_SLOW)


def test_a_batch_past_the_share_of_the_interval_is_warned_with_what_fits(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="consumers")
    # 64 frames at 20 ms: 1.28 s, against half of a 2 s interval: 50 frames fit
    assert not check_batch_time(0.020, 64, 2000)
    [record] = batcher_logs(caplog, TOO_SLOW)
    assert record.levelno == logging.WARNING
    assert record.frames == 64 and record.max_poll_interval_ms == 2000
    assert record.frames_that_fit == 50 == int(SLOW_BATCH_SHARE * 2.0 / 0.020)
    assert not batcher_logs(caplog, "engine warmed up")


def test_a_batch_scored_past_the_share_of_the_interval_is_a_slow_batch(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="consumers")
    note_batch_time(0.4, 16, 1000)  # within half of 1 s
    assert not batcher_logs(caplog, "slow batch")
    note_batch_time(0.6, 16, 1000)
    [record] = batcher_logs(caplog, "slow batch")
    assert record.levelno == logging.WARNING and record.frames == 16
    assert record.scoring_s == 0.6 and record.max_poll_interval_ms == 1000
