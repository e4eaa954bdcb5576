"""What the live feed keeps (consumers/live_stats.py), without a broker: compact records
from whatever a topic holds, bounds that hold however long the line runs, the rate, and
the subscribers' bounded queues."""

from __future__ import annotations

import asyncio

from consumers.live_stats import (
    KEEP_PARTS,
    KEEP_ROIS,
    KEEP_VERDICTS,
    Fanout,
    LineState,
    compact_part,
    compact_verdict,
)
from tests.helpers.live import part, verdict


def v(frame_id: str, *args: object, **fields: object) -> dict:
    """A compact verdict (never None here)."""
    item = compact_verdict(verdict(frame_id, *args, **fields))  # type: ignore[arg-type]
    assert item is not None
    return item


def p(part_id: str) -> dict:
    item = compact_part(part(part_id))
    assert item is not None
    return item


def test_a_compact_verdict_takes_what_the_record_has_and_nothing_unsafe():
    doc = verdict("f1", "NG", score=float("nan"), p_value=True, drift=True, part_id="x" * 999)
    item = compact_verdict(doc, record_ms=5)
    assert item is not None
    assert item["score"] is None and item["p_value"] is None and item["drift"] is True
    assert len(item["part_id"]) == 256 and item["regions"] == 2 and item["area_mm2"] == 0.75
    assert item["ts_ms"] != 5  # produced_at wins over the record's timestamp
    unscaled = v("f2", "NG", regions=[{"area_mm2": None}], regions_total=40)
    assert unscaled["area_mm2"] is None and unscaled["regions"] == 40
    unreadable = compact_verdict(verdict("f3", produced_at="yesterday"), 7)
    assert unreadable is not None and unreadable["ts_ms"] == 7
    assert compact_verdict(verdict("f4", "MAYBE")) is None
    assert compact_verdict({**verdict("f5"), "schema": "bdi.verdict/2"}) is None
    assert compact_part({"schema": "bdi.part_late/1", "part_id": "p"}) is None
    assert p("SN-1")["frames"] == 1


def test_the_state_stays_bounded_however_long_the_line_runs():
    state = LineState()
    for i in range(5000):
        state.add_verdict(v(f"f{i}", roi=f"roi{i}"), i / 50, True)
        state.add_part(p(f"SN-{i}"))
    assert len(state.verdicts) == KEEP_VERDICTS and len(state.parts) == KEEP_PARTS
    assert len(state.rois) == KEEP_ROIS and ("disc-a", "Master1", "roi4999") in state.rois
    assert ("disc-a", "Master1", "roi0") not in state.rois  # the least recently judged went
    assert len(state.arrivals) <= 11 and sum(state.counts.values()) == 5000


def test_the_rate_counts_live_arrivals_over_the_last_ten_seconds():
    state = LineState()
    state.live_since = 0.0
    for i in range(100):  # the backlog: read, not arrived
        state.add_verdict(v(f"b{i}"), 0.0, False)
    assert state.rate(0.5) == 0.0
    for i in range(200):  # 20 s at 10/s
        state.add_verdict(v(f"l{i}", "NG" if i % 4 else "OK"), i / 10, True)
    assert 9.0 <= state.rate(20.0) <= 10.0
    assert state.rate(40.0) == 0.0
    assert state.ng_pct() == round(100 * 150 / 300, 2)
    assert state.stats(40.0, "live", None, None)["feed"] == "idle"  # nothing for 5 s


def test_a_full_queue_loses_its_oldest_batches_and_closing_ends_the_wait():
    async def scenario() -> None:
        fanout = Fanout(max_batches=3)
        sub = fanout.subscribe()
        for n in range(10):
            fanout.publish("verdicts", [{"n": n}, {"n": n}])
        assert [items[0]["n"] for _, items in sub.take()] == [7, 8, 9]
        assert sub.dropped == 14
        waiter = asyncio.create_task(sub.wait(60))
        await asyncio.sleep(0)
        fanout.close()
        await asyncio.wait_for(waiter, 1)
        assert sub.closed and fanout.subscribe().closed and len(fanout) == 0

    asyncio.run(scenario())
