"""The rules of a part verdict (schema ``bdi.part/1``): pure functions, no state, no Kafka.

A part's verdict is a function of its plan and of the frame verdicts counted for it, nothing
else (no arrival order, no clock): each plan ROI counts with the worst verdict among its
frames (``NG`` > ``ERROR`` > ``NO_MODEL`` > ``OK``), then

1. any plan ROI (required or optional) ``NG``                      → ``NG``
2. a required ROI without a frame (only possible at the deadline)  → ``INCOMPLETE``
3. any plan ROI ``ERROR``                                          → ``ERROR``
4. any plan ROI ``NO_MODEL``                                       → ``NO_MODEL``
5. every required ROI ``OK`` and at least one plan ROI counted     → ``OK``
   (no plan ROI counted at all                                     → ``INCOMPLETE``)

So a part is never ``OK`` by default, by timeout or because something failed. When frames are
counted and when a part is decided is :mod:`consumers.parts`' business; the contract is
``docs/KAFKA.md`` ("Part verdicts on bdi.parts").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from store.errors import InvalidIdError
from store.naming import recipe_id as canonical_recipe
from store.plans import InspectionPlan, PlanRoi

SCHEMA = "bdi.part/1"
LATE_SCHEMA = "bdi.part_late/1"

PartVerdict = Literal["OK", "NG", "ERROR", "NO_MODEL", "INCOMPLETE"]
# how bad one frame verdict is; a verdict outside bdi.verdict/1 counts as ERROR
SEVERITY = {"OK": 0, "NO_MODEL": 1, "ERROR": 2, "NG": 3}
# what a part record keeps of each frame verdict, in this order; absent ones are null
FRAME_FIELDS = (
    "frame_id",
    "role_id",
    "roi_id",
    "verdict",
    "score",
    "threshold",
    "regions",
    "error_class",
    "model_version",
    "calibration_version",
    "image_sha256",
    "code_version",
    "settings_fingerprint",
)
Roi = tuple[str, str]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class PartRef:
    """Which part a frame verdict belongs to: its ``part_id`` and its canonical recipe id
    (``None`` when the verdict has none or an invalid one: such a frame only joins a part
    that is already open)."""

    part_id: str
    recipe_id: str | None


@dataclass(frozen=True)
class Decision:
    verdict: PartVerdict
    reason: str
    missing: list[dict[str, Any]]  # plan ROIs without a frame: {role_id, roi_id, required}


def frame_part(verdict: Mapping[str, Any]) -> PartRef | None:
    """The part of a ``bdi.verdict/1`` message, or ``None``: a frame without ``part_id``
    never gets a part record. Look the plan up by ``recipe_id``; no plan, no part."""
    part_id = verdict.get("part_id")
    if not isinstance(part_id, str) or not part_id:
        return None
    return PartRef(part_id, recipe_of(verdict.get("recipe_id")))


def recipe_of(value: object) -> str | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return canonical_recipe(value)
    except InvalidIdError:
        return None


def iso(ms: int) -> str:
    """Epoch milliseconds as ISO 8601 UTC with milliseconds (exact: no float)."""
    return (_EPOCH + timedelta(milliseconds=ms)).isoformat(timespec="milliseconds")


def frame_entry(verdict: Mapping[str, Any], seen_ms: int) -> dict[str, Any]:
    """What a part record keeps of one frame verdict, plus when the aggregator saw it."""
    entry = {name: verdict.get(name) for name in FRAME_FIELDS}
    entry["frame_id"] = str(entry["frame_id"])
    regions = entry["regions"]
    entry["regions"] = list(regions) if isinstance(regions, list) else []
    entry["seen_at"] = iso(seen_ms)
    return entry


def frame_verdict(entry: Mapping[str, Any]) -> str:
    value = entry.get("verdict")
    return value if isinstance(value, str) and value in SEVERITY else "ERROR"


def roi_of(entry: Mapping[str, Any]) -> Roi:
    return (str(entry.get("role_id")), str(entry.get("roi_id")))


def counts_for(plan: InspectionPlan, entry: Mapping[str, Any], recipe: str | None) -> bool:
    """Whether a frame counts in a part of ``plan``: its ROI is in the plan and it does not
    name another recipe (a frame without a valid recipe, an ``ERROR`` verdict, still counts:
    it must not be lost from a part it belongs to)."""
    if recipe is not None and recipe != recipe_of(plan.recipe_id):
        return False
    role, roi = entry.get("role_id"), entry.get("roi_id")
    return isinstance(role, str) and isinstance(roi, str) and plan.roi(role, roi) is not None


def roi_verdicts(frames: Iterable[Mapping[str, Any]]) -> dict[Roi, str]:
    """Each ROI's worst frame verdict (a ROI may have several frames)."""
    worst: dict[Roi, str] = {}
    for entry in frames:
        roi, verdict = roi_of(entry), frame_verdict(entry)
        if roi not in worst or SEVERITY[verdict] > SEVERITY[worst[roi]]:
            worst[roi] = verdict
    return worst


def decide(plan: InspectionPlan, frames: Sequence[Mapping[str, Any]]) -> Decision:
    """The part verdict from the plan ROIs' frames (``frames`` holds counted frames only).
    Called when every plan ROI has a frame, or once the deadline has passed. ROIs are
    named in the plan's order, so the reason does not depend on arrival order."""
    seen = roi_verdicts(frames)
    absent = [r for r in plan.rois if (r.role_id, r.roi_id) not in seen]
    missing = [{"role_id": r.role_id, "roi_id": r.roi_id, "required": r.required} for r in absent]
    by_verdict = {
        v: [_label(r) for r in plan.rois if seen.get((r.role_id, r.roi_id)) == v] for v in SEVERITY
    }
    problems = [
        f"{v} on {', '.join(by_verdict[v])}" for v in ("ERROR", "NO_MODEL") if by_verdict[v]
    ]
    incomplete = []
    if any(r.required for r in absent) or not seen:
        what = ", ".join(_label(r) for r in absent if r.required) or "every ROI of the plan"
        incomplete = [f"deadline {plan.deadline_ms} ms passed, missing {what}"]
    if by_verdict["NG"]:
        ng = f"NG on {', '.join(by_verdict['NG'])}"
        return Decision("NG", "; ".join([ng, *incomplete, *problems]), missing)
    if incomplete:
        return Decision("INCOMPLETE", "; ".join([*incomplete, *problems]), missing)
    if problems:
        verdict: PartVerdict = "ERROR" if by_verdict["ERROR"] else "NO_MODEL"
        return Decision(verdict, "; ".join(problems), missing)
    return Decision("OK", _ok_reason(plan, len(seen), absent), missing)


def _ok_reason(plan: InspectionPlan, seen: int, absent: list[PlanRoi]) -> str:
    required = len(plan.required)
    if required == 1:
        text = "the 1 required ROI OK"
    else:
        text = f"all {required} required ROIs OK" if required else "no ROI required"
    optional = seen - required
    if optional:
        text += f", {optional} optional ROI{'s' if optional > 1 else ''} OK"
    if absent:
        text += f", optional {', '.join(_label(r) for r in absent)} not received"
    return text


def _label(roi: PlanRoi) -> str:
    return f"{roi.role_id}/{roi.roi_id}"


def part_record(
    part_id: str,
    plan: InspectionPlan,
    frames: Sequence[Mapping[str, Any]],
    unexpected: Sequence[Mapping[str, Any]],
    times: tuple[int, int, int],
    code_version: str | None = None,
) -> dict[str, Any]:
    """The ``bdi.part/1`` record; ``times`` = (first frame, last frame, decided) in ms."""
    decision = decide(plan, frames)
    first_ms, last_ms, decided_ms = times
    return {
        "schema": SCHEMA,
        "part_id": part_id,
        "recipe_id": plan.recipe_id,
        "verdict": decision.verdict,
        "reason": decision.reason,
        "plan_version": plan.version,
        "deadline_ms": plan.deadline_ms,
        "frames": [dict(f) for f in frames],
        "missing": decision.missing,
        "unexpected": [dict(f) for f in unexpected],
        "first_frame_at": iso(first_ms),
        "last_frame_at": iso(last_ms),
        "decided_at": iso(decided_ms),
        "code_version": code_version,
    }


def late_record(
    part_id: str, recipe_id: str, verdict: str, decided_ms: int, entry: Mapping[str, Any]
) -> dict[str, Any]:
    """A ``bdi.part_late/1`` record: a frame that came after its part was decided."""
    return {
        "schema": LATE_SCHEMA,
        "part_id": part_id,
        "recipe_id": recipe_id,
        "part_verdict": verdict,
        "decided_at": iso(decided_ms),
        "frame": dict(entry),
        "reason": f"frame arrived after the part was decided ({verdict}); not counted",
    }
