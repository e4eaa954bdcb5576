"""The audit log (docs/AUTH.md): who did what over the REST API, newest first. Engineers
only (the router's dependency in ``edge/api/app.py``)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from edge.api.deps import TraceDep
from edge.api.routes.common import ERRORS, blocking
from edge.api.schemas import ErrorPublic
from store.trace import audit

router = APIRouter(
    tags=["audit"],
    responses={
        **{code: ERRORS[code] for code in (401, 403, 422, 500)},
        503: {"model": ErrorPublic, "description": "no trace database (trace_unavailable)"},
    },
)


class AuditEntryPublic(BaseModel):
    audit_id: str
    at: str = Field(description="ISO 8601, UTC")
    at_ms: int
    user: str | None = Field(description="who; null: nobody was authenticated")
    role: str | None
    action: str = Field(description="fit_ok, rollback, review, datasets.upload, login, ...")
    target: str | None = Field(description="recipe/role/roi, a frame id, a recipe, a user")
    outcome: int = Field(description="the HTTP status of the answer")
    request_id: str | None
    detail: dict[str, Any]


class AuditPublic(BaseModel):
    entries: list[AuditEntryPublic] = Field(description="newest first")


Text = Annotated[str | None, Query(min_length=1, max_length=256)]


@router.get("/audit")
async def get_audit(
    reader: TraceDep,
    limit: Annotated[int, Query(ge=1, le=audit.MAX_LIMIT)] = 100,
    user: Text = None,
    action: Text = None,
) -> AuditPublic:
    """The newest ``limit`` entries, of one ``user`` and/or one ``action``."""
    rows = await blocking(reader.read, lambda s: audit.latest(s.db, limit, user, action))
    return AuditPublic(entries=[AuditEntryPublic.model_validate(r) for r in rows])
