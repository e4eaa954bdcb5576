"""Start-up of the consumer: the engine is warmed up and a full batch's backbone time is
related to the poll interval before the first frame is fetched (gap G1)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from consumers import FrameConsumer
from consumers.runner import SLOW_BATCH_SHARE, check_batch_time
from tests.consumers.conftest import GROUP_OPTIONS
from tests.consumers.kafka_io import running

TOO_SLOW = "full batch too slow for the poll interval"


def _records(caplog: pytest.LogCaptureFixture, message: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "consumers.runner" and r.getMessage() == message]


def test_a_batch_within_the_share_of_the_interval_fits(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="consumers")
    # 16 frames at 10 ms: 0.16 s, against half of a 1 s interval
    assert check_batch_time(0.010, 16, 1000)
    [record] = _records(caplog, "engine warmed up")
    assert record.levelno == logging.INFO
    assert record.backbone_s_per_batch == pytest.approx(0.16)
    assert not _records(caplog, TOO_SLOW)


def test_a_batch_past_the_share_of_the_interval_is_warned_with_what_fits(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="consumers")
    # 64 frames at 20 ms: 1.28 s, against half of a 2 s interval: 50 frames fit
    assert not check_batch_time(0.020, 64, 2000)
    [record] = _records(caplog, TOO_SLOW)
    assert record.levelno == logging.WARNING
    assert record.frames == 64 and record.max_poll_interval_ms == 2000
    assert record.frames_that_fit == 50 == int(SLOW_BATCH_SHARE * 2.0 / 0.020)
    assert not _records(caplog, "engine warmed up")


@pytest.mark.kafka
@pytest.mark.parametrize(("batch_max", "max_poll_ms", "slow"), [(16, 300_000, False),
                                                                 (4096, 1000, True)])  # fmt: skip
def test_start_up_measures_the_engine_and_warns_when_a_full_batch_cannot_fit(
    kafka_broker, make_topics, trained, caplog, batch_max: int, max_poll_ms: int, slow: bool
) -> None:
    """The real engine is timed at start-up: 4,096 frames cannot run through the backbone
    in half a second on any CPU, 16 frames fit five minutes."""
    caplog.set_level(logging.INFO, logger="consumers")
    topics = make_topics(partitions=1)
    settings = trained.settings(batch_max=batch_max, **topics.settings(kafka_broker.bootstrap))
    options = {**GROUP_OPTIONS, "max_poll_interval_ms": max_poll_ms}

    async def scenario() -> None:
        consumer = FrameConsumer(settings, engine=trained.engine, consumer_options=options)
        async with running(consumer):
            pass

    asyncio.run(scenario())
    [record] = _records(caplog, TOO_SLOW if slow else "engine warmed up")
    assert record.frames == batch_max and record.max_poll_interval_ms == max_poll_ms
    assert record.backbone_ms_per_frame > 0
    if slow:
        assert record.frames_that_fit < batch_max
    assert not _records(caplog, "engine warmed up" if slow else TOO_SLOW)
