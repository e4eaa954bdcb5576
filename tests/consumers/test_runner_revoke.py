"""A commit still waiting for the broker when partitions are revoked (bug B1).

aiokafka retries a commit until the coordinator answers, each retry with the group
generation of *that* moment; after a broker restart the retry would land past the new
assignment's position check. The consumer cancels it on revoke and lets the revoke decide.
The broker-restart scenario itself runs in tests/reliability/test_broker_restart.py.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from aiokafka import TopicPartition

from consumers import FrameConsumer
from tests.helpers.settings import tiny_settings

TP = TopicPartition("frames", 0)


class _Client:
    """The two things of an aiokafka consumer that commits touch: ``commit`` and the
    coordinator's member id. The first commit waits until released, as one does while the
    broker is away; later ones answer at once."""

    def __init__(self) -> None:
        self._coordinator = SimpleNamespace(member_id="member-1")
        self.sent: list[dict[TopicPartition, int]] = []
        self.landed: list[dict[TopicPartition, int]] = []
        self.release = asyncio.Event()

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.sent.append(dict(offsets))
        if len(self.sent) == 1:
            await self.release.wait()
        self.landed.append(dict(offsets))


def _consumer_with_acknowledged_frames() -> tuple[FrameConsumer, _Client]:
    consumer = FrameConsumer(tiny_settings(kafka_bootstrap="127.0.0.1:1"))
    epoch = consumer.tracker.assign([TP])
    for offset in (7, 8, 9):
        consumer.tracker.track(TP, epoch, offset)
        consumer.tracker.ack(TP, epoch, offset)
    client = _Client()
    consumer._join(client)  # type: ignore[arg-type]
    return consumer, client


async def _revoke_during_commit(member_id: str) -> tuple[FrameConsumer, _Client]:
    consumer, client = _consumer_with_acknowledged_frames()
    commit = asyncio.create_task(consumer._commit())
    while not client.sent:
        await asyncio.sleep(0)
    client._coordinator.member_id = member_id
    assert consumer._rebalancer is not None
    await consumer._rebalancer.on_partitions_revoked([TP])
    await asyncio.wait_for(commit, 5)
    client.release.set()  # were it still alive, the waiting commit would land now
    await asyncio.sleep(0.01)
    return consumer, client


def test_a_waiting_commit_never_lands_after_membership_was_lost() -> None:
    """Broker restarted without its state: the waiting commit is abandoned and the revoke
    commits nothing (those positions may belong to a log the broker no longer has)."""
    consumer, client = asyncio.run(_revoke_during_commit(member_id=""))
    assert client.sent == [{TP: 10}]
    assert client.landed == []
    assert consumer.stats.committed == {}


def test_a_waiting_commit_is_made_by_the_revoke_in_an_ordinary_rebalance() -> None:
    """The member is still known: the acknowledged position is committed once, by the
    revoke, and recorded."""
    consumer, client = asyncio.run(_revoke_during_commit(member_id="member-1"))
    assert client.landed == [{TP: 10}]
    assert consumer.stats.committed == {"frames:0": 10}


def test_a_commit_that_answers_is_recorded() -> None:
    async def run() -> tuple[FrameConsumer, _Client]:
        consumer, client = _consumer_with_acknowledged_frames()
        client.sent.append({})  # the next commit answers at once
        await consumer._commit()
        return consumer, client

    consumer, client = asyncio.run(run())
    assert client.landed == [{TP: 10}]
    assert consumer.stats.committed == {"frames:0": 10}
    assert consumer.tracker.committable() == {}


def test_the_commit_guard_refuses_while_the_member_is_reset() -> None:
    """``refuse_commits_outside_the_group`` wraps aiokafka's send step: with generation -1
    or no member id (what aiokafka sets once the coordinator forgot the member) nothing is
    sent; as a member, the send goes through unchanged."""
    from aiokafka.errors import CommitFailedError

    from consumers.membership import refuse_commits_outside_the_group

    sent: list[object] = []

    async def send(assignment: object, offsets: object) -> str:
        sent.append(offsets)
        return "sent"

    coordinator = SimpleNamespace(generation=4, member_id="m-1", _do_commit_offsets=send)
    client = SimpleNamespace(_coordinator=coordinator)
    assert refuse_commits_outside_the_group(client)  # type: ignore[arg-type]

    async def commit() -> object:
        return await coordinator._do_commit_offsets(None, {TP: 3})

    assert asyncio.run(commit()) == "sent"
    coordinator.generation, coordinator.member_id = -1, ""
    try:
        asyncio.run(commit())
    except CommitFailedError:
        pass
    else:
        raise AssertionError("a commit went out without membership")
    assert sent == [{TP: 3}]
    assert not refuse_commits_outside_the_group(SimpleNamespace())  # type: ignore[arg-type]
