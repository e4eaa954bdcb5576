"""S1: a real ``bdi consume`` process is SIGKILLed between publishing a batch's verdicts and
committing its offsets, 20 times across one stream.

The kill is made to land in that window by a test hook run inside the consumer process
(tests/helpers/hooked.py, not product code): it logs a line once a batch's verdicts are
acknowledged by the broker and holds that batch's commit for ``HOLD_S``; the test kills the
process at the k-th such line, k drawn from 1-3 each trial, so the kills are spread across
the stream.
After every kill it checks that no committed offset lies above a frame without a verdict,
and that the killed batch's verdicts were published but not committed (the window was hit).
"""

from __future__ import annotations

import asyncio
import random

import pytest

from tests.helpers.hooked import COMMIT_HELD, HookedConsumer
from tests.helpers.images import SIZE
from tests.helpers.kafka import committed, disc_frames, produce, wait_all_committed
from tests.helpers.probes import TopicLog, differing_duplicates, early_commits
from tests.helpers.processes import env_settings

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

TRIALS = 20
FRAMES = 80
HOLD_S = 0.4
# the broker answers a JoinGroup only once the killed member's session expired: short
# sessions keep 20 kill/restart cycles within a minute or two (production default: 10 s)
GROUP = {
    "session_timeout_ms": 1000,
    "heartbeat_interval_ms": 200,
    "rebalance_timeout_ms": 1000,
}


def test_sigkill_between_publish_and_commit_20_times(
    kafka_broker, make_topics, trained, tmp_path, report
):
    topics = make_topics(partitions=2)
    boot = kafka_broker.bootstrap
    cfg = env_settings(trained, topics, boot, batch_max=4, batch_wait_ms=20)
    frames = disc_frames(FRAMES, SIZE, seed=11, tag="kill")
    expected = {f.frame_id: f.expect for f in frames}
    log = tmp_path / "consume.log"
    rng = random.Random(20261127)
    trials: list[dict[str, int]] = []

    spawned: list[HookedConsumer] = []

    def spawn() -> HookedConsumer:
        spawned.append(HookedConsumer(cfg, log, GROUP))
        return spawned[-1]

    async def scenario() -> TopicLog:
        await produce(boot, topics.frames, frames)
        mes = await TopicLog(boot, topics.verdicts).start()
        standby = spawn()
        try:
            for _ in range(TRIALS):
                current = standby
                await current.go(HOLD_S)
                standby = spawn()  # imports while this trial runs
                k = rng.randint(1, 3)
                await current.wait_marker(COMMIT_HELD, k)
                before = len(mes.values)
                current.kill()
                commits = await committed(boot, topics.group, topics.frames)
                await mes.sync()
                fresh = mes.values[before:]
                held = [
                    v for v in fresh
                    if v["source"]["offset"] >= (commits[v["source"]["partition"]] or 0)
                ]  # fmt: skip
                early = early_commits(commits, mes.answered_offsets())
                position = sum(c or 0 for c in commits.values())
                trials.append({"k": k, "held": len(held), "early": len(early), "at": position})
            final = standby
            await final.go(0.0)
            missing = await mes.wait_for(set(expected), timeout_s=120)
            assert not missing, f"{len(missing)} frames never answered"
            await wait_all_committed(boot, topics.group, topics.frames)
            assert final.stop() == 0, log.read_text()[-3000:]
            await mes.sync()
            return mes
        finally:
            for consumer in spawned:
                consumer.reap()
            await mes.stop()

    mes = asyncio.run(scenario())
    by_id = mes.by_id()
    offsets = asyncio.run(committed(boot, topics.group, topics.frames))
    lost = set(expected) - set(by_id)
    differing = differing_duplicates(by_id)
    wrong = [f for f, vs in by_id.items() if {v["verdict"] for v in vs} != {expected[f]}]
    early = sum(t["early"] for t in trials)
    in_window = sum(1 for t in trials if t["held"] > 0)
    report(
        "S1", holds=not (lost or differing or wrong or early) and in_window == TRIALS,
        trials=TRIALS, frames=FRAMES, verdict_records=len(mes.values),
        duplicates=len(mes.values) - len(by_id), lost=len(lost),
        differing_duplicates=len(differing),
        wrong_verdicts=len(wrong), early_commits=early, kills_in_window=in_window,
        kill_positions=[t["at"] for t in trials],
    )  # fmt: skip
    assert not lost, sorted(lost)[:10]
    assert not differing, differing[:10]
    assert not wrong, wrong[:10]
    assert early == 0, trials
    assert in_window == TRIALS, trials  # every kill landed between publication and commit
    assert sum(v or 0 for v in offsets.values()) == FRAMES
