"""The bdi.part/1 rules: precedence, optional and unexpected ROIs, retakes, which frames
get a part, what a part record keeps of a frame."""

from __future__ import annotations

import pytest

from consumers.part_rules import frame_part
from consumers.parts import PartTable
from tests.helpers.parts import PLAN3, T0, feed, make_plan, records, verdict


def test_frame_entry_keeps_a_fixed_list_of_fields_with_provenance():
    table = PartTable(code_version="1.2.3+gabc")
    extra = {"calibration_version": "c-9", "image_sha256": "ab" * 32, "error": "ignored"}
    plan = make_plan("M1/a")
    (rec,) = records(table.add(verdict("M1/a", "NG", **extra), plan, T0))
    (frame,) = rec["frames"]
    assert list(frame) == [
        "frame_id", "role_id", "roi_id", "verdict", "score", "threshold", "regions",
        "error_class", "model_version", "calibration_version", "image_sha256",
        "code_version", "settings_fingerprint", "seen_at",
    ]  # fmt: skip
    assert (frame["calibration_version"], frame["image_sha256"]) == ("c-9", "ab" * 32)
    assert frame["settings_fingerprint"] is None and frame["seen_at"] == rec["first_frame_at"]
    assert rec["code_version"] == "1.2.3+gabc"


@pytest.mark.parametrize(
    ("verdicts", "expected", "reason"),
    [
        (("OK", "NG", "ERROR"), "NG", "NG on M1/b; ERROR on M2/c"),
        (("NO_MODEL", "ERROR", "OK"), "ERROR", "ERROR on M1/b; NO_MODEL on M1/a"),
        (("OK", "NO_MODEL", "OK"), "NO_MODEL", "NO_MODEL on M1/b"),
        (("NG", "NG", "OK"), "NG", "NG on M1/a, M1/b"),
        (("OK", "garbage", "OK"), "ERROR", "ERROR on M1/b"),
    ],
)
def test_precedence_ng_then_error_then_no_model(verdicts, expected, reason):
    frames = [
        (verdict(f"{r.role_id}/{r.roi_id}", v), T0 + i)
        for i, (r, v) in enumerate(zip(PLAN3.rois, verdicts, strict=True))
    ]
    (rec,) = records(feed(PartTable(), PLAN3, frames))
    assert (rec["verdict"], rec["reason"]) == (expected, reason)


def test_ng_beats_incomplete_and_the_reason_says_both():
    table = PartTable()
    feed(table, PLAN3, [(verdict("M1/a", "NG"), T0), (verdict("M1/b", "ERROR"), T0 + 1)])
    (rec,) = records(table.expire(T0 + 1000))
    assert rec["verdict"] == "NG"
    assert rec["reason"] == "NG on M1/a; deadline 1000 ms passed, missing M2/c; ERROR on M1/b"


def test_incomplete_beats_error():
    table = PartTable()
    table.add(verdict("M1/a", "ERROR"), PLAN3, T0)
    (rec,) = records(table.expire(T0 + 1000))
    assert rec["verdict"] == "INCOMPLETE" and rec["reason"].endswith("; ERROR on M1/a")


@pytest.mark.parametrize(("v", "expected"), [("NG", "NG"), ("ERROR", "ERROR"), ("OK", "OK")])
def test_an_optional_roi_that_is_received_counts(v, expected):
    plan = make_plan("M1/a", optional=("M9/x",))
    (rec,) = records(feed(PartTable(), plan, [(verdict("M1/a"), T0), (verdict("M9/x", v), T0)]))
    assert rec["verdict"] == expected


def test_a_plan_of_optional_rois_only_is_never_ok_without_one_of_them():
    plan = make_plan(optional=("M1/a", "M1/b"))
    table = PartTable()
    table.add(verdict("M7/zz"), plan, T0)  # unexpected: opens the part, counts for nothing
    (rec,) = records(table.expire(T0 + 1000))
    assert rec["verdict"] == "INCOMPLETE"
    assert rec["reason"] == "deadline 1000 ms passed, missing every ROI of the plan"
    assert [f["roi_id"] for f in rec["unexpected"]] == ["zz"]


def test_two_frames_of_one_roi_count_with_the_worse_verdict():
    table = PartTable()
    emits = feed(
        table,
        PLAN3,
        [
            (verdict("M1/a", "ERROR", fid="shot-1"), T0),
            (verdict("M1/a", "OK", fid="shot-2"), T0 + 1),  # a retake does not clear it
            (verdict("M1/b"), T0 + 2),
            (verdict("M2/c"), T0 + 3),
        ],
    )
    (rec,) = records(emits)
    assert rec["verdict"] == "ERROR"
    assert [f["frame_id"] for f in rec["frames"]][:2] == ["shot-1", "shot-2"]


def test_frames_outside_the_plan_or_of_another_recipe_are_unexpected():
    table = PartTable()
    emits = feed(
        table,
        PLAN3,
        [
            (verdict("M1/a"), T0),
            (verdict("M5/q", "NG"), T0 + 1),
            (verdict("M1/b", "NG", fid="other", recipe_id="disc-b"), T0 + 2),
            (verdict("M1/b"), T0 + 3),
            (verdict("M2/c"), T0 + 4),
        ],
    )
    (rec,) = records(emits)
    assert rec["verdict"] == "OK"
    assert [f["frame_id"] for f in rec["unexpected"]] == ["SN-1-M5/q", "other"]


def test_which_frames_get_no_part():
    table = PartTable()
    assert frame_part(verdict("M1/a", part="")) is None
    assert frame_part({"part_id": None}) is None
    assert frame_part(verdict("M1/a", recipe_id="../x")).recipe_id is None
    assert frame_part(verdict("M1/a")).recipe_id == "disc-a"
    assert table.add(verdict("M1/a", part=""), PLAN3, T0) == []
    assert table.add(verdict("M1/a"), None, T0) == []  # no plan for the recipe
    assert table.open_parts == 0 and table.expire(T0 + 10_000) == []


def test_a_frame_without_recipe_joins_an_open_part_and_counts():
    table = PartTable()
    table.add(verdict("M1/a"), PLAN3, T0)
    bad = verdict("M1/b", "ERROR", recipe_id=None, error_class="MissingHeaderError")
    assert frame_part(bad).recipe_id is None
    (rec,) = records(feed(table, None, [(bad, T0 + 1), (verdict("M2/c"), T0 + 2)]))
    assert rec["verdict"] == "ERROR" and rec["frames"][1]["error_class"] == "MissingHeaderError"
