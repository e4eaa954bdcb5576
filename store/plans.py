"""Inspection plans: which (role, ROI) frames make up one part of a recipe.

The types below are the plan's one definition; the part aggregator
(``consumers/parts.py``) and the REST API read plans through them.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_DEADLINE_MS = 5000


@dataclass(frozen=True)
class PlanRoi:
    """One frame a part is made of."""

    role_id: str
    roi_id: str
    required: bool = True


@dataclass(frozen=True)
class InspectionPlan:
    """The frames of one part of ``recipe_id``; ``version`` names this content (a stored
    plan's version changes whenever its content does)."""

    recipe_id: str
    version: str
    rois: tuple[PlanRoi, ...]
    deadline_ms: int = DEFAULT_DEADLINE_MS

    def roi(self, role_id: str, roi_id: str) -> PlanRoi | None:
        for r in self.rois:
            if (r.role_id, r.roi_id) == (role_id, roi_id):
                return r
        return None

    @property
    def required(self) -> tuple[tuple[str, str], ...]:
        return tuple((r.role_id, r.roi_id) for r in self.rois if r.required)
