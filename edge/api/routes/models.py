"""What is stored and whether it is ready: the manifest and per-ROI state."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from edge.api.deps import AppState, StateDep
from edge.api.routes.common import ERRORS, blocking, resolve
from edge.api.schemas import ManifestPublic, ModelStatePublic

router = APIRouter(tags=["models"], responses=ERRORS)


@router.get("/manifest")
async def manifest(
    state: StateDep, recipe_id: Annotated[str | None, Query(max_length=256)] = None
) -> ManifestPublic:
    """Every stored model and dataset, per recipe (or one recipe's), with readiness."""
    data = await blocking(state.store.manifest, recipe_id)
    data.pop("root", None)  # the server's file system stays private
    for recipe in data["recipes"]:
        recipe["models"] = [_private(m, state) for m in recipe["models"]]
    return ManifestPublic(**data)


def _private(model_state: dict[str, Any], state: AppState) -> dict[str, Any]:
    """Name files relative to the store in ``error`` texts, never by absolute path."""
    error = model_state.get("error")
    if error:
        for root in {str(state.store.root.resolve()), str(state.store.root)}:
            error = error.replace(root, "<models>")
        model_state = {**model_state, "error": error}
    return model_state


@router.get("/state")
async def model_state(
    request: Request,
    state: StateDep,
    role_id: Annotated[str, Query(min_length=1, max_length=256)],
    roi_id: Annotated[str, Query(min_length=1, max_length=256)],
    recipe_id: Annotated[str | None, Query(max_length=256)] = None,
    model_key: Annotated[str | None, Query(max_length=256)] = None,
) -> ModelStatePublic:
    """Artifacts, version, threshold, dataset counts and ``ready`` for one role/ROI."""
    ref = resolve(request, state, recipe_id, role_id, roi_id, model_key)
    st = await blocking(state.store.state, ref.recipe_id, ref.role_id, ref.roi_id, ref.model_key)
    return ModelStatePublic(**_private(st.to_dict(), state))
