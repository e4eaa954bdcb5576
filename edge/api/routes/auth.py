"""Logging in and out, and who am I (docs/AUTH.md). The session lives in an HttpOnly,
SameSite=Strict cookie; the CSRF token that every state-changing request of the session
must carry in ``X-CSRF-Token`` comes with the login's answer and ``GET /auth/me``."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from edge.api.auth import COOKIE, Principal, check_csrf, check_origin
from edge.api.deps import PrincipalDep, StateDep
from edge.api.errors import Unauthorized
from edge.api.routes.common import blocking
from edge.api.schemas import ErrorPublic
from store.users import NAME


def _error(text: str) -> dict[str, Any]:
    return {"model": ErrorPublic, "description": text}


router = APIRouter(prefix="/auth", tags=["auth"])


class LoginRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: str = Field(min_length=1, max_length=256)
    password: str = Field(min_length=1, max_length=1024)


class SessionPublic(BaseModel):
    user: str
    role: Literal["operator", "engineer"]
    via: Literal["session", "api_key", "open"] = Field(
        description="a logged-in user, the X-API-Key, or the open mode (no users, no key)"
    )
    csrf_token: str | None = Field(
        description="send it as X-CSRF-Token with every POST/PUT/PATCH/DELETE (sessions only)"
    )
    expires_at: str | None = Field(description="when the session ends (ISO 8601, UTC)")


class LoggedOutPublic(BaseModel):
    logged_out: bool


def _public(state: StateDep, who: Principal) -> SessionPublic:
    token, expires = who.token, who.expires_ms
    return SessionPublic(
        user=who.name, role=who.role, via=who.via,
        csrf_token=None if token is None else state.auth.sessions.csrf(token),
        expires_at=None if expires is None
        else datetime.fromtimestamp(expires / 1000, UTC).isoformat(timespec="seconds"),
    )  # fmt: skip


def _cookie_args(request: Request) -> dict[str, Any]:
    secure = request.url.scheme == "https"
    return {"path": "/", "httponly": True, "samesite": "strict", "secure": secure}


@router.post(
    "/login",
    responses={
        400: _error("a body that is not JSON (bad_request)"),
        401: _error("wrong user name or password, or a disabled user (bad_credentials)"),
        403: _error("a login from another site's page (csrf)"),
        422: _error("request does not match the schema"),
    },
)
async def login(
    request: Request, response: Response, state: StateDep, body: LoginRequest
) -> SessionPublic:
    """Start a session: the cookie ``bdi_session`` (HttpOnly, SameSite=Strict; Secure over
    https) for ``BDI_SESSION_TTL_S``, and the session's CSRF token in the answer."""
    if NAME.fullmatch(body.username):  # for the audit log, also of a refused login
        request.state.audit_user = body.username
        request.state.audit_target = body.username
    check_origin(request, state.settings)
    user = await blocking(state.auth.verify, body.username, body.password)
    if user is None:
        raise Unauthorized("wrong user name or password", code="bad_credentials")
    token, expires_ms = state.auth.sessions.issue(user)
    who = Principal(user.name, user.role, "session", token, expires_ms)
    request.state.principal = who
    ttl = int(state.settings.session_ttl_s)
    response.set_cookie(COOKIE, token, max_age=ttl, **_cookie_args(request))
    return _public(state, who)


@router.post("/logout", responses={403: _error("missing or wrong X-CSRF-Token (csrf)")})
async def logout(request: Request, response: Response, state: StateDep) -> LoggedOutPublic:
    """End the session: the cookie is cleared. A valid session must send its CSRF token."""
    token = request.cookies.get(COOKIE)
    if token:
        try:
            who = state.auth.sessions.principal(token, state.auth.users)
        except Unauthorized:
            who = None
        if who is not None:
            check_csrf(request, state.auth, who)
            request.state.principal = who
    response.delete_cookie(COOKIE, **_cookie_args(request))
    return LoggedOutPublic(logged_out=True)


@router.get(
    "/me",
    responses={401: _error("not logged in, or the session expired (unauthorized, "
                           "session_expired)")},
)  # fmt: skip
async def me(state: StateDep, principal: PrincipalDep) -> SessionPublic:
    """Who the request is, its role, and (a session) its CSRF token and end."""
    return _public(state, principal)
