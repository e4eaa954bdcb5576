"""Start-up of the consumer: the engine is warmed up and a full batch's backbone time is
related to the poll interval before the first frame is fetched (gap G1)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from consumers import FrameConsumer
from tests.helpers.consumer import GROUP_OPTIONS, TOO_SLOW, batcher_logs
from tests.helpers.kafka import running


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
    [record] = batcher_logs(caplog, TOO_SLOW if slow else "engine warmed up")
    assert record.frames == batch_max and record.max_poll_interval_ms == max_poll_ms
    assert record.backbone_ms_per_frame > 0
    if slow:
        assert record.frames_that_fit < batch_max
    assert not batcher_logs(caplog, "engine warmed up" if slow else TOO_SLOW)
