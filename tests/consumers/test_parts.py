"""Part aggregation state: when parts are decided, deadlines, late and redelivered frames,
the changelog; and a property test over interleaving, duplication, lateness and crashes."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from consumers.part_rules import LATE_SCHEMA, SCHEMA, SEVERITY
from consumers.parts import Emit, PartStateError, PartTable
from store.plans import InspectionPlan, PlanRoi
from tests.helpers.parts import PLAN3, T0, apply, feed, make_plan, records, replay, verdict


def test_all_required_ok_decides_ok_on_the_last_frame():
    table = PartTable()
    first = feed(table, PLAN3, [(verdict("M1/a"), T0), (verdict("M1/b"), T0 + 10)])
    assert records(first) == [] and [e.kind for e in first] == ["changelog", "changelog"]
    emits = table.add(verdict("M2/c"), PLAN3, T0 + 25)
    (rec,) = records(emits)
    assert rec["schema"] == SCHEMA and rec["verdict"] == "OK"
    assert rec["reason"] == "all 3 required ROIs OK"
    assert (rec["part_id"], rec["recipe_id"], rec["plan_version"]) == ("SN-1", "disc-a", "plan-v1")
    assert [f["frame_id"] for f in rec["frames"]] == ["SN-1-M1/a", "SN-1-M1/b", "SN-1-M2/c"]
    assert rec["missing"] == [] and rec["unexpected"] == []
    assert rec["first_frame_at"] == "2025-11-24T16:00:00.000+00:00"
    assert rec["last_frame_at"] == rec["decided_at"] == "2025-11-24T16:00:00.025+00:00"
    assert orjson.loads(emits[0].value) == rec and emits[0].key == "SN-1"
    assert emits[1].kind == "changelog" and orjson.loads(emits[1].value)["state"] == "decided"
    assert (table.open_parts, table.decided_parts) == (0, 1)


def test_ng_waits_for_the_other_rois_so_the_record_is_whole():
    table = PartTable()
    assert records(table.add(verdict("M1/a", "NG"), PLAN3, T0)) == []
    (rec,) = records(feed(table, PLAN3, [(verdict("M1/b"), T0 + 1), (verdict("M2/c"), T0 + 2)]))
    assert rec["verdict"] == "NG" and len(rec["frames"]) == 3


def test_deadline_with_a_required_roi_missing_is_incomplete():
    table = PartTable()
    feed(table, PLAN3, [(verdict("M1/a"), T0), (verdict("M1/b"), T0 + 300)])
    assert table.next_due() == T0 + 1000
    assert table.expire(T0 + 999) == []
    emits = table.expire(T0 + 5000)
    (rec,) = records(emits)
    assert rec["verdict"] == "INCOMPLETE"
    assert rec["reason"] == "deadline 1000 ms passed, missing M2/c"
    assert rec["missing"] == [{"role_id": "M2", "roi_id": "c", "required": True}]
    assert rec["decided_at"] == "2025-11-24T16:00:01.000+00:00"  # the deadline, not the call
    assert rec["last_frame_at"] == "2025-11-24T16:00:00.300+00:00"
    assert table.expire(T0 + 6000) == []


def test_the_deadline_is_met_by_traffic_of_other_parts_and_a_frame_at_it_is_late():
    table = PartTable()
    table.add(verdict("M1/a"), PLAN3, T0)
    emits = table.add(verdict("M1/a", part="SN-2"), PLAN3, T0 + 1000)
    assert [r["part_id"] for r in records(emits)] == ["SN-1"]
    late = table.add(verdict("M1/b"), PLAN3, T0 + 1000)
    assert records(late) == [] and records(late, "late")[0]["part_verdict"] == "INCOMPLETE"


def test_a_frame_without_part_id_still_advances_the_clock():
    table = PartTable()
    table.add(verdict("M1/a"), PLAN3, T0)
    (rec,) = records(table.add(verdict("M1/a", part=""), PLAN3, T0 + 2000))
    assert rec["verdict"] == "INCOMPLETE"


def test_a_frame_stamped_before_the_clock_is_timed_by_the_clock():
    table = PartTable()
    table.add(verdict("M1/a", part="SN-0"), PLAN3, T0 + 900)
    table.add(verdict("M1/a"), PLAN3, T0)  # a camera whose clock lags: opens at T0 + 900
    assert table.clock == T0 + 900
    assert [r["part_id"] for r in records(table.expire(T0 + 1900))] == ["SN-0", "SN-1"]


def test_optional_rois_are_awaited_until_the_deadline_then_listed_missing():
    plan = make_plan("M1/a", optional=("M9/x",))
    table = PartTable()
    assert records(table.add(verdict("M1/a"), plan, T0)) == []
    (rec,) = records(table.expire(T0 + 1000))
    assert rec["verdict"] == "OK"
    assert rec["reason"] == "the 1 required ROI OK, optional M9/x not received"
    assert rec["missing"] == [{"role_id": "M9", "roi_id": "x", "required": False}]


def test_a_redelivered_frame_counts_once_before_and_after_the_decision():
    table = PartTable()
    a = verdict("M1/a")
    feed(table, PLAN3, [(a, T0), (a, T0 + 1), (verdict("M1/b"), T0 + 2)])
    assert table.add(a, PLAN3, T0 + 3) == []  # nothing changed: not even the changelog
    (rec,) = records(table.add(verdict("M2/c"), PLAN3, T0 + 4))
    assert [f["frame_id"] for f in rec["frames"]].count("SN-1-M1/a") == 1
    assert table.add(a, PLAN3, T0 + 5) == []


def test_a_late_frame_gives_one_late_record_and_never_changes_the_verdict():
    table = PartTable()
    feed(table, PLAN3, [(verdict(r), T0) for r in ("M1/a", "M1/b", "M2/c")])
    late = verdict("M1/a", "NG", fid="retake")
    emits = table.add(late, PLAN3, T0 + 50)
    assert records(emits) == []
    (rec,) = records(emits, "late")
    assert rec["schema"] == LATE_SCHEMA and rec["part_verdict"] == "OK"
    assert rec["frame"]["frame_id"] == "retake" and rec["frame"]["verdict"] == "NG"
    assert rec["decided_at"] == "2025-11-24T16:00:00.000+00:00"
    assert table.add(late, PLAN3, T0 + 60) == []  # redelivered late frame: once


def test_decided_parts_are_forgotten_after_the_horizon_with_a_tombstone():
    table = PartTable()
    feed(table, PLAN3, [(verdict(r), T0) for r in ("M1/a", "M1/b", "M2/c")])
    assert table.next_due() == T0 + 600_000  # max(10 x 1000 ms, 10 min)
    assert table.expire(T0 + 599_999) == []
    assert table.expire(T0 + 600_000) == [Emit("changelog", "SN-1", None)]
    assert table.decided_parts == 0 and table.next_due() is None


def test_decided_parts_are_bounded_in_number():
    table = PartTable(max_decided=2, horizon_ms=50)
    plan = make_plan("M1/a")
    emits = feed(table, plan, [(verdict("M1/a", part=f"SN-{i}"), T0 + i) for i in range(3)])
    assert Emit("changelog", "SN-0", None) in emits and table.decided_parts == 2
    assert table.expire(T0 + 51) == [Emit("changelog", "SN-1", None)]


def test_the_changelog_restores_open_and_decided_parts():
    changelog: dict[str, bytes | None] = {}
    table = PartTable()
    apply(changelog, feed(table, PLAN3, [(verdict("M1/a"), T0), (verdict("M1/b", "NG"), T0 + 5)]))
    apply(changelog, feed(table, make_plan("M1/a"), [(verdict("M1/a", part="SN-2"), T0 + 7)]))
    restored = replay(changelog)
    assert (restored.open_parts, restored.decided_parts, restored.clock) == (1, 1, T0 + 7)
    assert restored.add(verdict("M1/a", part="SN-2"), PLAN3, T0 + 8) == []  # still known
    (rec,) = records(restored.add(verdict("M2/c"), PLAN3, T0 + 9))
    assert rec["verdict"] == "NG" and rec["first_frame_at"] == "2025-11-24T16:00:00.000+00:00"
    assert restored.next_due() == T0 + 7 + 600_000
    restored.restore("SN-2", None)
    assert restored.decided_parts == 1  # SN-1 decided now


@pytest.mark.parametrize(
    "value",
    [b"not json", b"[]", b'{"schema": "other/1"}', b'{"schema": "bdi.part_state/1"}'],
)
def test_an_unreadable_changelog_record_is_a_clear_error(value):
    with pytest.raises(PartStateError):
        PartTable().restore("SN-1", value)


def test_a_changelog_record_under_another_key_is_refused():
    (state,) = PartTable().add(verdict("M1/a"), PLAN3, T0)
    with pytest.raises(PartStateError, match="holds part 'SN-1'"):
        PartTable().restore("SN-9", state.value)


# -- property test ----------------------------------------------------------------------
DEADLINE = 100


VERDICTS = sorted(SEVERITY)


@st.composite
def scenarios(draw):
    """Plans of 1-8 ROIs (some optional); per part and ROI a frame or none, each with a
    verdict and a time (some after the deadline); redeliveries; one unexpected frame."""
    n = draw(st.integers(1, 8))
    required = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    plan = InspectionPlan(
        "disc-a",
        "v1",
        tuple(PlanRoi(f"R{i % 3}", f"roi{i}", req) for i, req in enumerate(required)),
        DEADLINE,
    )
    parts = []
    for p in range(draw(st.integers(1, 3))):
        start = draw(st.integers(0, 150))
        frames = []
        for r in plan.rois:
            if draw(st.integers(0, 4)) == 0:
                continue  # never sent
            v = draw(st.sampled_from(VERDICTS))
            frames.append((f"{r.role_id}/{r.roi_id}", v, start + draw(st.integers(0, 130))))
        if draw(st.booleans()):
            frames.append(("X/unplanned", "NG", start + draw(st.integers(0, 130))))
        if frames:
            parts.append((f"SN-{p}", frames))
    events = []
    for part_id, frames in parts:
        for roi, v, t in frames:
            copies = draw(st.integers(1, 3))  # 1 = sent once
            for c in range(copies):
                events.append((t + (c and draw(st.integers(0, 80))), part_id, roi, v))
    order = draw(st.permutations(range(len(events))))
    # the partition is in time order; equal times in any order; duplicates anywhere after
    events = [events[i] for i in sorted(order, key=lambda i: (events[i][0], order.index(i)))]
    crash_at = draw(st.integers(0, len(events)))
    ticks = draw(st.lists(st.integers(0, len(events)), max_size=3))
    return plan, parts, events, crash_at, set(ticks)


def expected(plan: InspectionPlan, frames: list[tuple[str, str, int]]) -> str:
    """The rules, written out independently: what counts is each plan ROI's frame seen
    before first + deadline."""
    first = min(t for _, _, t in frames)
    got = {roi: v for roi, v, t in frames if t < first + plan.deadline_ms and roi != "X/unplanned"}
    req = [f"{r.role_id}/{r.roi_id}" for r in plan.rois if r.required]
    if "NG" in got.values():
        return "NG"
    if not got or any(r not in got for r in req):
        return "INCOMPLETE"
    for v in ("ERROR", "NO_MODEL"):
        if v in got.values():
            return v
    return "OK"


@hsettings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_the_part_verdict_is_a_function_of_what_came_by_the_deadline(scenario):
    plan, parts, events, crash_at, ticks = scenario
    changelog: dict[str, bytes | None] = {}
    table = PartTable(horizon_ms=1000)
    out: list[Emit] = []
    for i, (t, part_id, roi, v) in enumerate(events):
        if i == crash_at:  # crash or rebalance: what the changelog holds is all that is left
            table = replay(changelog, horizon_ms=1000)
        if i in ticks:  # an idle partition's clock moving on, up to this frame's time
            emits = table.expire(t)
            apply(changelog, emits)
            out += emits
        emits = table.add(verdict(roi, v, part=part_id), plan, t)
        apply(changelog, emits)
        out += emits
    emits = table.expire(10**9)
    apply(changelog, emits)
    out += emits

    part_records = records(out)
    assert sorted(r["part_id"] for r in part_records) == sorted(p for p, _ in parts)
    late = records(out, "late")
    for rec in part_records:
        part_id, frames = rec["part_id"], dict(parts)[rec["part_id"]]
        assert rec["verdict"] == expected(plan, frames)
        if rec["verdict"] == "OK":
            oks = {(f["role_id"], f["roi_id"]) for f in rec["frames"] if f["verdict"] == "OK"}
            assert set(plan.required) <= oks and len(oks) == len(rec["frames"])
        # every frame of the part once: in the record, or (after the decision) a late record
        first = min(t for _, _, t in frames)
        planned = [t for roi, _, t in frames if roi != "X/unplanned" and t < first + DEADLINE]
        full = len(planned) == len(plan.rois)
        decided = max(planned) if full else first + DEADLINE
        listed = {f["frame_id"] for f in rec["frames"] + rec["unexpected"]}
        lates = [r["frame"]["frame_id"] for r in late if r["part_id"] == part_id]
        assert sorted([*listed, *lates]) == sorted(f"{part_id}-{roi}" for roi, _, _ in frames)
        for roi, _, t in frames:
            if t < decided or (roi != "X/unplanned" and t < first + DEADLINE):
                assert f"{part_id}-{roi}" in listed
            elif t > decided or t >= first + DEADLINE:
                assert f"{part_id}-{roi}" in lates
        assert all(r["part_verdict"] == rec["verdict"] for r in late if r["part_id"] == part_id)
    assert all(v is None for v in changelog.values())  # every part forgotten in the end
