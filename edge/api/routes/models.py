"""What is stored and whether it is ready (the manifest, per-ROI state), and each model's
history: its stored revisions, and rolling back to one of them."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Form, Query

from consumers.drift_state import read_drift
from edge.api import service
from edge.api.deps import Engineer, FormRef, QueryRef, StateDep, StoreDep
from edge.api.routes.common import ERRORS, blocking
from edge.api.schemas import (
    DriftReportPublic,
    ManifestPublic,
    ModelStatePublic,
    RevisionsPublic,
)
from store import ModelStore

router = APIRouter(tags=["models"], responses=ERRORS)


@router.get("/manifest")
async def manifest(
    store: StoreDep, recipe_id: Annotated[str | None, Query(max_length=256)] = None
) -> ManifestPublic:
    """Every stored model and dataset, per recipe (or one recipe's), with readiness."""
    data = await blocking(store.manifest, recipe_id)
    data.pop("root", None)  # the server's file system stays private
    for recipe in data["recipes"]:
        recipe["models"] = [_private(m, store) for m in recipe["models"]]
    return ManifestPublic(**data)


def _private(model_state: dict[str, Any], store: ModelStore) -> dict[str, Any]:
    """Name files relative to the store in ``error`` texts, never by absolute path."""
    error = model_state.get("error")
    if error:
        for root in {str(store.root.resolve()), str(store.root)}:
            error = error.replace(root, "<models>")
        model_state = {**model_state, "error": error}
    return model_state


@router.get("/state")
async def model_state(store: StoreDep, ref: QueryRef) -> ModelStatePublic:
    """Artifacts, version, threshold, dataset counts and ``ready`` for one role/ROI, and
    what the consumers report of its drift."""
    st = await blocking(store.state, ref)
    data = _private(st.to_dict(), store)
    key = "/".join((ref.recipe_id, ref.role_id, ref.roi_id))
    reports = await blocking(read_drift, store.root, key)
    current = [r for r in reports if r.get("model_version") == data.get("version")]
    drift = any(r.get("drift") for r in current) if current else None
    public = [DriftReportPublic(**r) for r in reports]
    return ModelStatePublic(**data, drift=drift, drift_reports=public)


@router.get("/models/revisions")
async def revisions(store: StoreDep, ref: QueryRef) -> RevisionsPublic:
    """Every stored revision of one model (version, threshold, calibration, when saved),
    the current one first."""
    return await blocking(service.revisions, store, ref)


@router.post("/models/rollback", dependencies=[Engineer])
async def rollback(
    state: StateDep,
    ref: FormRef,
    revision: Annotated[str, Form(min_length=1, max_length=64)],
) -> RevisionsPublic:
    """Make a stored revision the current one again (404: the store holds no such
    revision of this model); answers the revisions as they are afterwards."""
    return await blocking(service.rollback, state.store, state.diagnostics, ref, revision)
