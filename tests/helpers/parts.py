"""Part aggregation in tests: plans, frame verdicts, a compacted changelog kept in a dict."""

from __future__ import annotations

from consumers.parts import Emit, PartTable
from store.plans import InspectionPlan, PlanRoi

T0 = 1_764_000_000_000  # ms since the epoch: 2025-11-24T16:00:00Z


def make_plan(*rois: str, optional: tuple[str, ...] = (), deadline_ms: int = 1000):
    """``"M1/a"`` names role M1, ROI a; ``optional`` ones are not required."""
    items = [PlanRoi(*r.split("/"), required=True) for r in rois]
    items += [PlanRoi(*r.split("/"), required=False) for r in optional]
    return InspectionPlan("disc-a", "plan-v1", tuple(items), deadline_ms)


def verdict(roi: str, v: str = "OK", *, part: str = "SN-1", fid: str | None = None, **extra):
    role, roi_id = roi.split("/")
    data = {
        "schema": "bdi.verdict/1",
        "frame_id": fid or f"{part}-{roi}",
        "part_id": part,
        "recipe_id": "Disc-A",
        "role_id": role,
        "roi_id": roi_id,
        "verdict": v,
        "score": 1.5,
        "threshold": 2.0,
        "regions": [],
        "model_version": "m-1",
        "produced_at": "2026-01-01T00:00:00.000+00:00",
    }
    data.update(extra)
    return data


def records(emits: list[Emit], kind: str = "part") -> list[dict]:
    return [e.record for e in emits if e.kind == kind and e.record is not None]


PLAN3 = make_plan("M1/a", "M1/b", "M2/c")


def feed(table: PartTable, plan, frames: list[tuple[dict, int]]) -> list[Emit]:
    emits: list[Emit] = []
    for v, t in frames:
        emits += table.add(v, plan, t)
    return emits


def replay(changelog: dict[str, bytes | None], **kwargs) -> PartTable:
    table = PartTable(**kwargs)
    for key, value in changelog.items():
        table.restore(key.encode(), value)
    return table


def apply(changelog: dict[str, bytes | None], emits: list[Emit]) -> None:
    for e in emits:
        if e.kind == "changelog":
            changelog.pop(e.key, None)  # a compacted topic keeps the last value
            changelog[e.key] = e.value
