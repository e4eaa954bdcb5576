"""A recipe's inspection plan: the (role, ROI) frames that make up one part, and the
part's deadline. Stored versioned by the store (``store/plans.py``); see docs/PARTS.md."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request

from edge.api.deps import Engineer, StoreDep
from edge.api.routes.common import ERRORS, blocking
from edge.api.schemas import PlanPublic, PlanRequest
from store import ModelStore, PlanRoi, StoredPlan

_INVALID = (
    "invalid recipe, role or ROI id (invalid_id); no ROI, a ROI named twice or a bad "
    "deadline (invalid_plan)"
)
_MISSING = "no plan stored for the recipe, or no such version (plan_not_found)"
PLAN_ERRORS: dict[int | str, dict[str, Any]] = {
    **{code: ERRORS[code] for code in (401, 403, 413, 422, 500)},
    400: {**ERRORS[400], "description": _INVALID},
    404: {**ERRORS[404], "description": _MISSING},
}

router = APIRouter(tags=["plans"], responses=PLAN_ERRORS)

RecipeId = Annotated[str, Path(min_length=1, max_length=256)]


def _tag(request: Request, recipe_id: str) -> None:
    """Name the recipe on the request's log line, as the model endpoints do."""
    request.scope.setdefault("state", {}).setdefault("ids", {})["recipe_id"] = recipe_id


def _public(store: ModelStore, stored: StoredPlan) -> PlanPublic:
    warnings = [w.to_dict() for w in store.plan_warnings(stored.plan)]
    return PlanPublic.model_validate({**stored.to_dict(), "warnings": warnings})


def _save(store: ModelStore, recipe_id: str, body: PlanRequest) -> PlanPublic:
    rois = [PlanRoi(r.role_id, r.roi_id, r.required) for r in body.rois]
    return _public(store, store.save_plan(recipe_id, rois, body.deadline_ms))


def _read(store: ModelStore, recipe_id: str, version: str | None) -> PlanPublic:
    return _public(store, store.stored_plan(recipe_id, version))


@router.put("/recipes/{recipe_id}/plan", dependencies=[Engineer])
async def put_plan(
    request: Request, store: StoreDep, recipe_id: RecipeId, body: PlanRequest
) -> PlanPublic:
    """Store the recipe's inspection plan as its current one (atomically; the same plan
    keeps its version). ``warnings`` names the ROIs that have no model with a threshold."""
    _tag(request, recipe_id)
    return await blocking(_save, store, recipe_id, body)


@router.get("/recipes/{recipe_id}/plan")
async def get_plan(
    request: Request,
    store: StoreDep,
    recipe_id: RecipeId,
    version: Annotated[str | None, Query(max_length=64)] = None,
) -> PlanPublic:
    """The recipe's current inspection plan, or the stored ``version`` a part record names
    (404 ``plan_not_found`` when there is none)."""
    _tag(request, recipe_id)
    return await blocking(_read, store, recipe_id, version)
