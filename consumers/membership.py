"""Group membership as aiokafka's coordinator sees it, and the commit guard built on it.

aiokafka keeps no public flag for "the coordinator forgot this member": it resets the
member to generation -1 and member id "" (on UnknownMemberId / IllegalGeneration) and
rejoins. Both helpers read those two attributes; they are the only code here that touches
aiokafka internals.
"""

from __future__ import annotations

import logging
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import CommitFailedError

log = logging.getLogger(__name__)


def _reset(coordinator: Any) -> bool:
    if getattr(coordinator, "member_id", None) == "":
        return True
    return bool(getattr(coordinator, "generation", 0) < 0)


def membership_lost(consumer: AIOKafkaConsumer | None) -> bool:
    """Whether aiokafka has reset this member (it does so before the revoke callback when
    the coordinator answers UnknownMemberId / IllegalGeneration)."""
    coordinator = getattr(consumer, "_coordinator", None)
    return coordinator is not None and _reset(coordinator)


def refuse_commits_outside_the_group(consumer: AIOKafkaConsumer) -> bool:
    """Make ``consumer`` refuse to send a commit while it is not a group member.

    Once the coordinator forgets a member (a broker restarted without its group state, a
    session expired), aiokafka resets it to generation -1 and keeps retrying any commit it
    holds; a commit with generation -1 is a stand-alone commit, which a broker accepts for
    a group it does not know. After a broker restart that lost its log, such a commit
    writes positions of the *old* log into the new one, and the rejoining consumer starts
    past frames published since (bug B1). Refusing it only means the next owner answers
    those frames again. Returns False (and logs) when this aiokafka version does not look
    as expected.
    """
    coordinator = getattr(consumer, "_coordinator", None)
    send = getattr(coordinator, "_do_commit_offsets", None)
    if coordinator is None or send is None or not hasattr(coordinator, "generation"):
        log.warning("cannot guard commits against a lost membership: unknown aiokafka layout")
        return False

    async def member_only(assignment: Any, offsets: Any) -> Any:
        if _reset(coordinator):
            raise CommitFailedError("not a member of the group (membership lost): not committed")
        return await send(assignment, offsets)

    coordinator._do_commit_offsets = member_only
    return True
