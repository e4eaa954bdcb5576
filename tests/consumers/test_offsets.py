"""The offset tracker: commit only past contiguously acknowledged frames; revoked
partitions and stale acknowledgements never move a commit."""

from __future__ import annotations

from consumers.offsets import OffsetTracker

A, B = ("frames", 0), ("frames", 1)


def tracker(*offsets: int, tp=A) -> tuple[OffsetTracker, int]:
    t: OffsetTracker = OffsetTracker()
    epoch = t.assign([A, B])
    for o in offsets:
        assert t.track(tp, epoch, o)
    return t, epoch


def test_nothing_to_commit_before_any_ack():
    t, _ = tracker(0, 1, 2)
    assert t.committable() == {}
    assert t.pending() == 3


def test_commit_is_last_contiguous_ack_plus_one():
    t, e = tracker(0, 1, 2, 3)
    t.ack(A, e, 0)
    t.ack(A, e, 1)
    t.ack(A, e, 3)  # 2 still in flight: 3 must wait
    assert t.committable() == {A: 2}
    t.committed({A: 2})
    assert t.committable() == {}, "nothing new"
    t.ack(A, e, 2)
    assert t.committable() == {A: 4}


def test_out_of_order_acks_wait_for_the_gap():
    t, e = tracker(10, 11, 12)
    t.ack(A, e, 12)
    t.ack(A, e, 11)
    assert t.committable() == {}
    t.ack(A, e, 10)
    assert t.committable() == {A: 13}


def test_offset_gaps_of_compacted_topics_are_fine():
    t, e = tracker(5, 9, 20)
    for o in (5, 9, 20):
        t.ack(A, e, o)
    assert t.committable() == {A: 21}


def test_partitions_are_independent():
    t, e = tracker(0, 1)
    t.track(B, e, 7)
    t.ack(B, e, 7)
    t.ack(A, e, 1)
    assert t.committable() == {B: 8}


def test_revoke_returns_only_acknowledged_work_and_forgets_the_rest():
    t, e = tracker(0, 1, 2)
    t.ack(A, e, 0)
    t.ack(A, e, 2)
    assert t.revoke([A]) == {A: 1}, "frame 1 in flight: 2 is not committable"
    assert t.epoch(A) is None and t.committable() == {}
    assert not t.ack(A, e, 1), "in-flight work of a revoked partition is ignored"
    assert t.committable() == {}


def test_revoke_after_commit_returns_nothing_new():
    t, e = tracker(0)
    t.ack(A, e, 0)
    t.committed(t.committable())
    assert t.revoke([A]) == {}


def test_reassigned_partition_ignores_acks_of_the_old_epoch():
    t, old = tracker(0, 1, 2)
    t.revoke([A])
    new = t.assign([A])
    assert new != old
    assert not t.track(A, old, 3), "records stamped with the old epoch are not tracked"
    t.track(A, new, 0)  # redelivered from the committed offset
    assert not t.ack(A, old, 0) and not t.ack(A, old, 2)
    assert t.committable() == {}
    t.ack(A, new, 0)
    assert t.committable() == {A: 1}


def test_going_backwards_within_an_epoch_is_not_tracked():
    t, e = tracker(4, 5)
    assert not t.track(A, e, 5) and not t.track(A, e, 3)
    assert t.pending(A) == 2


def test_unknown_partition_is_not_tracked():
    t, e = tracker()
    assert not t.track(("other", 0), e, 0)
    assert not t.ack(("other", 0), e, 0)
    assert t.is_current(A, e) and not t.is_current(A, e + 1)


def test_preview_tells_the_commit_without_changing_anything():
    t, e = tracker(0, 1, 2)
    t.ack(A, e, 0)
    assert t.preview(A, e, [1]) == 2
    assert t.preview(A, e, [2]) == 1, "the gap at 1 still holds the commit"
    assert t.preview(A, e + 5, [1]) is None, "stale epoch"
    assert t.committable() == {A: 1}, "preview acknowledged nothing"
