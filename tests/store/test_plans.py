"""Inspection plans (store/plans.py): validation, content versions, atomic versioned storage,
reading any stored version back, crash safety, and the warnings for ROIs without a model."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import orjson
import pytest

from store import (
    CorruptPlanError,
    InspectionPlan,
    InvalidIdError,
    InvalidPlanError,
    ModelStore,
    PlanNotFoundError,
    PlanRoi,
    atomic,
    plans,
)
from tests.helpers.paths import REPO as REPO_ROOT
from tests.helpers.store import Trained

ROIS = [PlanRoi("Master1", "inner-ring"), PlanRoi("Master1", "outer-ring", required=False)]


def _rois(n: int) -> list[PlanRoi]:
    return [PlanRoi("cam", f"roi-{i}") for i in range(n)]


# --- validation and versions -----------------------------------------------------------------
def test_a_valid_plan_gets_its_canonical_recipe_and_a_content_version() -> None:
    plan = plans.make_plan("Disc-A", ROIS, 4000)
    assert isinstance(plan, InspectionPlan)
    assert (plan.recipe_id, plan.deadline_ms, plan.rois) == ("disc-a", 4000, tuple(ROIS))
    assert len(plan.version) == 16 and int(plan.version, 16) >= 0
    assert plan.required == (("Master1", "inner-ring"),)
    assert plan.roi("Master1", "outer-ring") == ROIS[1]
    assert plans.make_plan(None, ROIS).recipe_id == "default"
    assert plans.make_plan("x", ROIS).deadline_ms == plans.DEFAULT_DEADLINE_MS


def test_the_version_names_the_content() -> None:
    version = plans.make_plan("a", ROIS, 4000).version
    assert plans.make_plan("A", list(ROIS), 4000).version == version
    assert plans.make_plan("b", ROIS, 4000).version == version  # content, not recipe
    assert plans.make_plan("a", ROIS, 4001).version != version
    assert plans.make_plan("a", ROIS[::-1], 4000).version != version  # order is content
    flipped = [ROIS[0], PlanRoi("Master1", "outer-ring", required=True)]
    assert plans.make_plan("a", flipped, 4000).version != version


@pytest.mark.parametrize(
    ("rois", "deadline", "message"),
    [
        ([], 5000, "at least one ROI"),
        ([ROIS[0], PlanRoi("Master1", "inner-ring", False)], 5000, "named twice"),
        (_rois(plans.MAX_ROIS + 1), 5000, f"at most {plans.MAX_ROIS} ROIs"),
        (ROIS, 0, "between 1 and"),
        (ROIS, -5, "between 1 and"),
        (ROIS, plans.MAX_DEADLINE_MS + 1, "between 1 and"),
        (ROIS, 1.5, "whole number"),
        (ROIS, "5000", "whole number"),
        (ROIS, True, "whole number"),
        ([PlanRoi("a", "b", "yes")], 5000, "true or false"),  # type: ignore[arg-type]
    ],
)
def test_unusable_plans_are_refused(rois: list[PlanRoi], deadline: object, message: str) -> None:
    with pytest.raises(InvalidPlanError, match=message):
        plans.make_plan("r", rois, deadline)  # type: ignore[arg-type]


def test_edge_values_are_accepted() -> None:
    assert plans.make_plan("r", ROIS, 1).deadline_ms == 1
    assert plans.make_plan("r", ROIS, plans.MAX_DEADLINE_MS).deadline_ms == plans.MAX_DEADLINE_MS
    assert len(plans.make_plan("r", _rois(plans.MAX_ROIS)).rois) == plans.MAX_ROIS
    # the same ROI id under two roles, and ids differing only in case, are different frames
    same_roi = [PlanRoi("Master1", "ring"), PlanRoi("Master2", "ring"), PlanRoi("Master1", "Ring")]
    assert len(plans.make_plan("r", same_roi).rois) == 3


@pytest.mark.parametrize(
    ("recipe", "roi"),
    [
        ("Disc A", PlanRoi("a", "b")),
        ("last", PlanRoi("a", "b")),
        ("r", PlanRoi("", "b")),
        ("r", PlanRoi("a", "x" * 65)),
        ("r", PlanRoi("a\n", "b")),
        ("r", PlanRoi("a", 7)),  # type: ignore[arg-type]
    ],
)
def test_ids_are_checked_as_everywhere_in_the_store(recipe: str, roi: PlanRoi) -> None:
    with pytest.raises(InvalidIdError):
        plans.make_plan(recipe, [roi])


def test_the_json_form_is_checked_field_by_field() -> None:
    body = {"rois": [{"role_id": "Master1", "roi_id": "inner-ring"}], "deadline_ms": 3000}
    plan = plans.plan_from_json("r", body)
    assert plan.rois == (PlanRoi("Master1", "inner-ring", True),)
    assert plans.to_json(plan) == {"recipe_id": "r", "version": plan.version, **body,
                                   "rois": [{**body["rois"][0], "required": True}]}  # fmt: skip
    for bad, message in [
        ([], "JSON object"),
        ({}, '"rois"'),
        ({"rois": "a/b"}, '"rois"'),
        ({"rois": [["a", "b"]]}, r"rois\[0\] must be an object"),
        ({"rois": [{"role_id": "a"}]}, r"rois\[0\].roi_id must be a string"),
        ({"rois": [{"role_id": "a", "roi_id": "b", "required": "no"}]}, "true or false"),
        ({"rois": [{"role_id": "a", "roi_id": "b", "colour": 1}]}, "unknown fields: colour"),
        ({"rois": body["rois"], "deadline": 5}, "unknown fields: deadline"),
    ]:
        with pytest.raises(InvalidPlanError, match=message):
            plans.plan_from_json("r", bad)


# --- storage ---------------------------------------------------------------------------------
def test_save_and_read_back(store: ModelStore, root: Path) -> None:
    assert store.find_plan("Disc-A") is None
    with pytest.raises(PlanNotFoundError, match="no inspection plan stored for recipe 'disc-a'"):
        store.read_plan("Disc-A")
    saved = store.save_plan("Disc-A", ROIS, 4000)
    assert saved.current and saved.plan == plans.make_plan("disc-a", ROIS, 4000)
    assert abs(saved.created_at - time.time()) < 60
    assert store.read_plan("disc-a") == saved.plan
    assert store.find_plan("DISC-A") == saved.plan
    assert store.stored_plan("disc-a") == saved
    folder = root / "recipes" / "disc-a" / ".plan"
    assert sorted(p.name for p in folder.iterdir()) == ["current.json", "versions"]
    assert [p.name for p in (folder / "versions").iterdir()] == [f"{saved.plan.version}.json"]
    record = orjson.loads((folder / "versions" / f"{saved.plan.version}.json").read_bytes())
    assert record["rois"][1] == {"role_id": "Master1", "roi_id": "outer-ring", "required": False}


def test_the_same_plan_again_changes_nothing(store: ModelStore, root: Path) -> None:
    first = store.save_plan("r", ROIS, 4000)
    pointer = root / "recipes" / "r" / ".plan" / "current.json"
    before = pointer.stat()
    again = store.save_plan("R", list(ROIS), 4000)
    assert again == first  # same version, same created_at
    after = pointer.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_every_version_stays_readable(store: ModelStore) -> None:
    """A part record names ``plan_version``: an auditor reads that exact version later."""
    a = store.save_plan("r", ROIS, 4000)
    b = store.save_plan("r", ROIS[:1], 4000)
    assert store.read_plan("r") == b.plan
    old = store.stored_plan("r", a.plan.version)
    assert old.plan == a.plan and not old.current and old.created_at == a.created_at
    assert store.read_plan("r", a.plan.version) == a.plan
    listed = store.plan_versions("r")
    assert [s.plan.version for s in listed] == [b.plan.version, a.plan.version]
    assert [s.current for s in listed] == [True, False]
    back = store.save_plan("r", ROIS, 4000)  # back to a: its version and first time kept
    assert back.plan == a.plan and back.created_at == a.created_at and back.current
    assert [s.current for s in store.plan_versions("r")] == [False, True]
    assert store.plan_versions("other") == []


@pytest.mark.parametrize("version", ["../../recipe", "0123456789abcdef", "ABCDEF0123456789", "x"])
def test_unknown_or_malformed_versions_are_not_found(
    store: ModelStore, root: Path, version: str
) -> None:
    store.save_plan("r", ROIS)
    with pytest.raises(PlanNotFoundError, match="no plan version"):
        store.read_plan("r", version)


def test_a_recipe_plan_is_no_model_and_no_model_is_a_plan(
    store: ModelStore, model_a: Trained
) -> None:
    """Plans live in a hidden folder: no model key can name it, and the manifest and the
    sweep's model walk do not see it; a ROI called "plan" or ".plan" is a model as ever."""
    store.save_plan("r", [PlanRoi("role", "plan"), PlanRoi("role", ".plan")])
    assert store.manifest("r")["recipes"][0]["models"] == []
    for roi in ("plan", ".plan"):
        ref = store.ref("r", "role", roi)
        store.save_artifacts(ref, model_a.files, version=model_a.version, mm_per_px=0.1)
        assert ref.directory.name != ".plan"
    assert len(store.manifest("r")["recipes"][0]["models"]) == 2
    assert store.read_plan("r").rois[0].roi_id == "plan"
    assert store.plan_warnings(store.read_plan("r")) == []


def test_plan_stamp_changes_with_the_current_plan(store: ModelStore) -> None:
    empty = store.plan_stamp("r")
    store.save_plan("r", ROIS)
    first = store.plan_stamp("r")
    assert first != empty
    store.save_plan("r", ROIS)
    assert store.plan_stamp("r") == first
    store.save_plan("r", ROIS[:1])
    assert store.plan_stamp("r") != first


def test_damaged_files_are_reported_not_guessed(store: ModelStore, root: Path) -> None:
    saved = store.save_plan("r", ROIS, 4000)
    folder = root / "recipes" / "r" / ".plan"
    path = folder / "versions" / f"{saved.plan.version}.json"
    record = orjson.loads(path.read_bytes())
    path.write_bytes(orjson.dumps({**record, "deadline_ms": 9999}))  # content != its version
    with pytest.raises(CorruptPlanError, match="does not hold plan version"):
        store.read_plan("r")
    path.write_bytes(b"{not json")
    with pytest.raises(CorruptPlanError, match="unreadable plan"):
        store.read_plan("r")
    assert store.save_plan("r", ROIS, 4000).plan == saved.plan  # a save rewrites it
    assert store.read_plan("r") == saved.plan
    (folder / "current.json").write_bytes(b'{"version": "../x"}')
    with pytest.raises(CorruptPlanError, match="does not name a plan version"):
        store.read_plan("r")
    assert store.save_plan("r", ROIS, 4000).current  # a save replaces a damaged pointer
    assert store.read_plan("r") == saved.plan
    (folder / "versions" / f"{saved.plan.version}.json").unlink()
    (folder / "current.json").write_bytes(orjson.dumps({"version": saved.plan.version}))
    with pytest.raises(PlanNotFoundError):
        store.read_plan("r")


# --- crash safety ----------------------------------------------------------------------------
class _Crash(BaseException):
    """Not an Exception: nothing in the store may swallow it."""


def _failing_steps(monkeypatch: pytest.MonkeyPatch, fail_at: int) -> list[int]:
    counter = [0]
    for name in ("replace", "rename", "fsync", "unlink"):
        real = getattr(os, name)

        def step(*args, _real=real, _name=name, **kwargs):  # type: ignore[no-untyped-def]
            counter[0] += 1
            if counter[0] == fail_at:
                raise _Crash(f"{_name} #{fail_at}")
            return _real(*args, **kwargs)

        monkeypatch.setattr(os, name, step)
    return counter


def test_every_step_of_a_plan_write_can_fail_safely(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old, new = ROIS, ROIS[:1]
    store = ModelStore(root=root)
    store.save_plan("r", old)
    with monkeypatch.context() as m:
        counter = _failing_steps(m, fail_at=-1)
        store.save_plan("r", new)
        n_steps = counter[0]
    assert n_steps >= 4
    outcomes = []
    for fail_at in range(1, n_steps + 1):
        run = ModelStore(root=root / str(fail_at))
        run.save_plan("r", old)
        with monkeypatch.context() as m:
            _failing_steps(m, fail_at)
            with pytest.raises(_Crash):
                run.save_plan("r", new)
        current = run.read_plan("r")  # complete, never torn
        assert current.rois in (tuple(old), tuple(new))
        outcomes.append(current.rois == tuple(new))
        run.sweep()
        assert not [p for p in run.root.rglob("*") if atomic.is_temp(p.name)]
        assert run.save_plan("r", new).plan.rois == tuple(new)
    assert not outcomes[0] and outcomes[-1]


WRITER = textwrap.dedent(
    """
    import sys
    from store import ModelStore, PlanRoi

    store = ModelStore(root=sys.argv[1])
    rois = [PlanRoi("cam", f"roi-{i}", i % 2 == 0) for i in range(6)]
    print("ready", flush=True)
    i = 0
    while True:  # a new version on every write: its file, then the pointer
        i += 1
        store.save_plan("crash", rois[: 1 + i % 6], i)
    """
)


@pytest.mark.slow
def test_sigkill_while_writing_never_tears_a_plan(root: Path) -> None:
    store = ModelStore(root=root)
    store.save_plan("crash", ROIS)
    rng = random.Random(21)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    deadlines = []
    for _ in range(12):
        child = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(root)], stdout=subprocess.PIPE, env=env
        )
        try:
            assert child.stdout is not None and child.stdout.readline() == b"ready\n"
            time.sleep(rng.uniform(0.0, 0.1))
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=30)
        assert child.returncode == -signal.SIGKILL
        current = store.read_plan("crash")  # verified against its version: complete
        deadlines.append(current.deadline_ms)
        assert all(s.plan.version for s in store.plan_versions("crash"))
    assert len(set(deadlines)) >= 6  # the kills landed at different writes
    store.save_plan("crash", ROIS)
    assert not [p for p in root.rglob("*") if atomic.is_temp(p.name)]


# --- warnings --------------------------------------------------------------------------------
def test_warnings_name_the_rois_that_cannot_be_judged(store: ModelStore, model_a: Trained) -> None:
    rois = [PlanRoi("m", "ready"), PlanRoi("m", "absent"), PlanRoi("m", "no-threshold"),
            PlanRoi("m", "broken", required=False)]  # fmt: skip
    plan = store.save_plan("r", rois).plan
    assert [(w.roi_id, w.reason) for w in store.plan_warnings(plan)] == [
        (r.roi_id, "no_model") for r in rois
    ]
    for roi in ("ready", "broken"):
        ref = store.ref("r", "m", roi)
        store.save_artifacts(ref, model_a.files, version=model_a.version, mm_per_px=0.1)
    no_calib = {s: b for s, b in model_a.files.items() if s != "_calib.json"}
    ref = store.ref("r", "m", "no-threshold")
    store.save_artifacts(ref, no_calib, version=model_a.version, mm_per_px=0.1)
    broken = store.ref("r", "m", "broken")
    (broken.directory / f"{broken.base_name}_version.json").write_bytes(b"{garbled")
    warnings = store.plan_warnings(plan)
    assert [(w.role_id, w.roi_id, w.reason) for w in warnings] == [
        ("m", "absent", "no_model"),
        ("m", "no-threshold", "no_threshold"),
        ("m", "broken", "unreadable"),
    ]
    assert warnings[0].to_dict()["detail"] == (
        "no model stored for role 'm', ROI 'absent': its frames get NO_MODEL"
    )
    assert str(store.root) not in " ".join(w.detail for w in warnings)  # no server paths
