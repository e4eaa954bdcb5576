"""S3: inference slower than the consumer's poll interval (an injected delay).

aiokafka leaves the group when ``getmany`` is not called for ``max_poll_interval_ms``; a
batch scored for longer than that used to be revoked under the consumer's feet (B2). Here
the interval is lowered through ``consumer_options`` and the engine sleeps longer than it:
the consumer must neither crash nor spin in rebalances, and every frame must be answered.
"""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from consumers import FrameConsumer
from tests.helpers.consumer import TOO_SLOW
from tests.helpers.images import SIZE
from tests.helpers.kafka import committed, disc_frames, produce, running
from tests.helpers.probes import EngineProxy, ProductBug, TopicLog

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

GROUP = {"session_timeout_ms": 1000, "heartbeat_interval_ms": 200, "rebalance_timeout_ms": 1000}
OBSERVE_S = 15.0
STARTUP_CHECK = ("engine warmed up", TOO_SLOW)


class SlowEngine(EngineProxy):
    def __init__(self, engine, delay_s: float) -> None:
        super().__init__(engine)
        self.delay_s = delay_s
        self.calls = 0

    def infer(self, items):
        self.calls += 1
        time.sleep(self.delay_s)  # a slow GPU, a swapped model, a stuck driver call
        return self.engine.infer(items)


def _observe(kafka_broker, make_topics, trained, caplog, delay_s: float, max_poll_ms: int):
    caplog.set_level(logging.INFO, logger="consumers")
    topics = make_topics(partitions=1)
    boot = kafka_broker.bootstrap
    settings = trained.settings(batch_max=4, **topics.settings(boot))
    frames = disc_frames(8, SIZE, seed=70, tag=f"slow{delay_s}")
    engine = SlowEngine(trained.engine, delay_s)
    options = {**GROUP, "max_poll_interval_ms": max_poll_ms}

    async def scenario():
        consumer = FrameConsumer(settings, engine=engine, consumer_options=options)
        log = await TopicLog(boot, topics.verdicts).start()
        async with running(consumer) as task:
            await produce(boot, topics.frames, frames)
            missing = await log.wait_for({f.frame_id for f in frames}, OBSERVE_S)
            alive = not task.done()
        await log.stop()
        offsets = await committed(boot, topics.group, topics.frames)
        return consumer, missing, alive, offsets

    consumer, missing, alive, offsets = asyncio.run(scenario())
    assigned = [r for r in caplog.records if r.getMessage() == "partitions assigned"]
    warnings = sorted(
        {
            r.getMessage()
            for r in caplog.records
            if r.name.startswith("consumers") and r.levelno >= logging.WARNING
        }
    )
    return {
        "delay_s": delay_s, "max_poll_interval_ms": max_poll_ms, "frames": len(frames),
        "answered": len(frames) - len(missing), "rebalances": max(0, len(assigned) - 1),
        "engine_calls": engine.calls, "scored_then_dropped": consumer.stats.dropped_revoked,
        "committed": offsets.get(0) or 0, "alive": alive, "observed_s": OBSERVE_S,
        "consumer_warnings": warnings,
    }  # fmt: skip


def test_inference_slower_than_the_batch_wait_but_within_the_poll_interval(
    kafka_broker, make_topics, trained, caplog, report
):
    """Control: a slow engine (0.5 s a batch, batch wait 20 ms) within the poll interval."""
    figures = _observe(kafka_broker, make_topics, trained, caplog, 0.5, 4000)
    holds = figures["answered"] == figures["frames"] and figures["rebalances"] == 0
    report("S3", holds=holds, **figures)
    assert holds, figures
    assert figures["committed"] == figures["frames"]


def test_inference_slower_than_the_poll_interval(
    kafka_broker, make_topics, trained, caplog, report
):
    """Fixed (B2): partitions are paused and polled empty while a long batch is scored,
    and the slow batch is logged."""
    figures = _observe(kafka_broker, make_topics, trained, caplog, 2.0, 1500)
    holds = figures["answered"] == figures["frames"] and figures["rebalances"] <= 1
    report("S3", holds=holds, **figures)
    assert figures["alive"], "the consumer crashed"
    if not holds:
        raise ProductBug(f"rebalance storm: {figures}")
    assert figures["scored_then_dropped"] == 0
    assert figures["committed"] == figures["frames"]
    assert "slow batch" in figures["consumer_warnings"]


def test_a_batch_wait_longer_than_the_poll_interval_is_harmless(
    kafka_broker, make_topics, trained, caplog, report
):
    """Start-up does not compare BDI_BATCH_WAIT_MS with the consumer's timeouts, and need
    not: the wait is spent inside ``getmany``, which aiokafka does not count as idle. Only
    the scoring of a batch runs outside it: start-up times the backbone on a warm-up
    forward and relates a full batch to ``max_poll_interval_ms`` (here it fits: no
    warning), and run time logs every slow batch (measured above)."""
    caplog.set_level(logging.INFO, logger="consumers")
    topics = make_topics(partitions=1)
    boot = kafka_broker.bootstrap
    # a full batch of 16 scores in ~0.15 s here, well inside half the 1 s poll interval
    # (64 came within 5 % of it on a loaded machine: the start-up check then warned)
    settings = trained.settings(batch_wait_ms=3000, batch_max=16, **topics.settings(boot))
    options = {**GROUP, "max_poll_interval_ms": 1000}
    frames = disc_frames(6, SIZE, seed=71, tag="wait")

    async def scenario():
        consumer = FrameConsumer(settings, engine=trained.engine, consumer_options=options)
        log = await TopicLog(boot, topics.verdicts).start()
        async with running(consumer):
            for frame in frames:  # trickled: every batch waits the full 3 s
                await produce(boot, topics.frames, [frame])
                await asyncio.sleep(0.4)
            missing = await log.wait_for({f.frame_id for f in frames}, 20)
        await log.stop()
        return consumer, missing

    consumer, missing = asyncio.run(scenario())
    assigned = [r for r in caplog.records if r.getMessage() == "partitions assigned"]
    [start_up] = [r for r in caplog.records if r.getMessage() in STARTUP_CHECK]
    figures = {
        "batch_wait_ms": 3000, "max_poll_interval_ms": 1000,
        "start_up_check": start_up.getMessage(),
        "backbone_s_per_batch": start_up.backbone_s_per_batch,
        "answered": len(frames) - len(missing), "frames": len(frames),
        "rebalances": len(assigned) - 1, "batches": consumer.stats.batches,
    }  # fmt: skip
    holds = not missing and figures["rebalances"] == 0
    report("S3", holds=holds, **figures)
    assert start_up.getMessage() == "engine warmed up", figures
    assert holds, figures
