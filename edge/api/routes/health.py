"""Liveness and metrics: open even when ``BDI_API_KEY`` is set."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response
from fastapi.responses import JSONResponse

from edge.api.deps import RequestIdDep, StateDep
from edge.api.schemas import ErrorPublic, HealthPublic
from store import recipe_id as normalise_recipe

router = APIRouter(tags=["health"])


@router.get("/health", responses={400: {"model": ErrorPublic}, 422: {"model": ErrorPublic}})
def health(
    state: StateDep,
    request_id: RequestIdDep,
    recipe_id: Annotated[str | None, Query(max_length=256)] = None,
) -> HealthPublic:
    """Cheap: loads nothing. ``recipe_id``, when given, is validated and echoed normalised."""
    s = state.settings
    return HealthPublic(
        status="ok",
        device=state.engine.spec.describe(),
        model=f"{s.backbone}@{s.image_size}",
        version=state.version,
        request_id=request_id,
        recipe_id=None if recipe_id is None else normalise_recipe(recipe_id),
        ready=state.ready,
        checks={"engine": state.engine_status, "broker": state.broker_status},
    )


@router.get(
    "/ready",
    responses={
        400: {"model": ErrorPublic},
        422: {"model": ErrorPublic},
        503: {"model": HealthPublic, "description": "not ready"},
    },
)
def ready(state: StateDep, request_id: RequestIdDep) -> JSONResponse:
    """Readiness probe: 200 when the engine is loaded and the broker (if set) answers,
    503 with the same body otherwise. ``/health`` stays 200 while the process lives."""
    body = health(state, request_id)
    return JSONResponse(body.model_dump(), status_code=200 if body.ready else 503)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
)
def metrics(state: StateDep) -> Response:
    return Response(state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")
