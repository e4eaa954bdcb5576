"""Who a request is and what it may do (docs/AUTH.md): sessions of named users, the
machines' ``X-API-Key``, CSRF tokens, roles, and the audit of every state-changing request.

A session token is ``<payload>.<signature>``: the payload (user, role, expiry, a per-login
nonce) in base64url, signed with HMAC-SHA256 under the server's secret
(``BDI_SESSION_SECRET``, else ``<BDI_MODELS_DIR>/.session_key``). The CSRF token is an HMAC
of the session token, so no server state is kept. The user's role is read from the users
file on every request: a role change or a disabled user takes effect at once.

No ``from __future__ import annotations``: FastAPI reads the dependencies' annotations.
"""

import asyncio
import base64
import hashlib
import hmac
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import urlsplit

import orjson
from fastapi import Depends, Request
from fastapi.security import APIKeyHeader
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from configs.settings import Settings
from edge.api.errors import BdiError, Unauthorized
from store.atomic import create_once
from store.trace import audit
from store.users import ROLES, Role, User, Users, at_least

if TYPE_CHECKING:
    from edge.api.deps import AppState

log = logging.getLogger(__name__)

COOKIE = "bdi_session"
CSRF_HEADER = "x-csrf-token"
API_KEY_USER = "api-key"
UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})
SESSION_KEY_FILE = ".session_key"
Via = Literal["session", "api_key", "open"]


class Forbidden(BdiError):
    status, code = 403, "forbidden"


@dataclass(frozen=True)
class Principal:
    """Who a request is: a user with a session, the API key, or nobody in the open mode."""

    name: str
    role: Role
    via: Via
    token: str | None = None  # the session token (its CSRF token is derived from it)
    expires_ms: int | None = None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Sessions:
    """Signed, expiring session tokens and their CSRF tokens."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.ttl_ms = int(settings.session_ttl_s * 1000)
        self._secret: bytes | None = None
        self._lock = threading.Lock()

    def secret(self) -> bytes:
        with self._lock:
            if self._secret is None:
                given = self.settings.session_secret
                if given is not None:
                    self._secret = hashlib.sha256(given.get_secret_value().encode()).digest()
                else:
                    path = self.settings.models_dir / SESSION_KEY_FILE
                    self._secret = create_once(path, secrets.token_bytes(32), private=True)
            return self._secret

    def _sign(self, purpose: bytes, data: str) -> str:
        return _b64(hmac.new(self.secret(), purpose + b"|" + data.encode(), "sha256").digest())

    def _stamp(self, user: User) -> str:
        """Changes with the user's password: a new password ends the sessions of the old."""
        return self._sign(b"password", user.password_hash)[:16]

    def issue(self, user: User) -> tuple[str, int]:
        """A new token for ``user`` and when it expires (epoch ms)."""
        expires_ms = int(time.time() * 1000) + self.ttl_ms
        payload = {
            "u": user.name, "r": user.role, "e": expires_ms, "n": secrets.token_hex(16),
            "p": self._stamp(user),
        }  # fmt: skip
        body = _b64(orjson.dumps(payload))
        return f"{body}.{self._sign(b'session', body)}", expires_ms

    def csrf(self, token: str) -> str:
        return self._sign(b"csrf", token)

    def principal(self, token: str, users: Users) -> Principal:
        """The session's user, as the users file has it now; 401 ``unauthorized`` for a
        token not signed here (or a user disabled or removed since), ``session_expired``
        for one past its time."""
        body, _, sig = token.partition(".")
        if not sig or not hmac.compare_digest(sig.encode(), self._sign(b"session", body).encode()):
            raise Unauthorized("the session cookie is not valid: log in again")
        try:
            payload = orjson.loads(_unb64(body))
            name, expires_ms, stamp = str(payload["u"]), int(payload["e"]), str(payload["p"])
        except (ValueError, KeyError, TypeError):
            raise Unauthorized("the session cookie is not valid: log in again") from None
        if expires_ms <= time.time() * 1000:
            raise Unauthorized("the session has expired: log in again", code="session_expired")
        user = users.load().get(name)
        if user is None or user.disabled:
            raise Unauthorized(f"user {name!r} is disabled or removed: log in again")
        if not hmac.compare_digest(stamp, self._stamp(user)):
            raise Unauthorized("the password changed since this login: log in again")
        return Principal(user.name, user.role, "session", token, expires_ms)


class Auth:
    """The users file, the sessions and the API key of one app."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.users = Users(settings.models_dir)
        self.sessions = Sessions(settings)
        # argon2 takes 64 MiB per verification: a burst of logins must not take the memory
        self._verifying = threading.BoundedSemaphore(2)

    def verify(self, name: str, password: str) -> User | None:
        with self._verifying:
            return self.users.verify(name, password)

    def identify(self, cookie: str | None, key: str | None) -> Principal:
        """The session's user, else the API key's role, else (no users, no key) the open
        mode's anonymous engineer; 401 otherwise."""
        refused: Unauthorized | None = None
        if cookie:
            try:
                return self.sessions.principal(cookie, self.users)
            except Unauthorized as exc:
                refused = exc
        expected = self.settings.api_key
        if key is not None and expected is not None:
            # compare_digest: the time taken does not tell how much of a guess was right
            if hmac.compare_digest(key.encode(), expected.get_secret_value().encode()):
                return Principal(API_KEY_USER, self.settings.api_key_role, "api_key")
            raise Unauthorized("missing or wrong X-API-Key")
        if expected is None and not self.users.has_users():
            return Principal("anonymous", "engineer", "open")
        if refused is not None:
            raise refused
        if self.users.has_users():
            raise Unauthorized("not logged in: POST /auth/login, or send X-API-Key")
        raise Unauthorized("missing or wrong X-API-Key")


def get_auth(request: Request) -> Auth:
    auth: Auth = request.app.state.bdi.auth
    return auth


def check_csrf(request: Request, auth: Auth, principal: Principal) -> None:
    """A state-changing request of a session carries the session's CSRF token (403)."""
    if principal.via != "session" or request.method not in UNSAFE or principal.token is None:
        return
    given = request.headers.get(CSRF_HEADER, "")
    if not hmac.compare_digest(given.encode(), auth.sessions.csrf(principal.token).encode()):
        raise Forbidden(
            "missing or wrong X-CSRF-Token (GET /auth/me gives the session's)", code="csrf"
        )


_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False)


def identify(
    request: Request, key: Annotated[str | None, Depends(_api_key_header)] = None
) -> Principal:
    """The request's principal (see :meth:`Auth.identify`), CSRF checked."""
    auth = get_auth(request)
    principal = auth.identify(request.cookies.get(COOKIE), key)
    check_csrf(request, auth, principal)
    request.state.principal = principal
    return principal


def check_origin(request: Request, settings: Settings) -> None:
    """A login from another site's page is refused (403 ``csrf``): the ``Origin`` header,
    when sent, must be this server or one of ``BDI_CORS_ORIGINS``."""
    origin = request.headers.get("origin")
    if origin is None:
        return
    # this server by its host (a TLS proxy in front may hide the scheme), or a CORS origin
    same_host = urlsplit(origin).netloc == request.headers.get("host", "")
    allowed = {o.rstrip("/") for o in settings.cors_origins if o != "*"}
    if not same_host and origin.rstrip("/") not in allowed:
        raise Forbidden(f"a login from {origin[:100]!r} is refused (cross-site)", code="csrf")


def require_role(needed: Role) -> Callable[..., Principal]:
    """A dependency: the principal, when its role may do what ``needed`` may (403)."""

    def dependency(principal: Annotated[Principal, Depends(identify)]) -> Principal:
        if not at_least(principal.role, needed):
            raise Forbidden(
                f"this needs the role {needed}; {principal.name} has the role {principal.role}"
            )
        return principal

    dependency.__name__ = f"require_{needed}"
    return dependency


operator, engineer = (require_role(role) for role in ROLES)


# --- the audit log -------------------------------------------------------------------------
ACTIONS = {
    ("POST", "/fit_ok"): "fit_ok",
    ("POST", "/jobs/train"): "train_job",
    ("POST", "/calibrate_ng"): "calibrate_ng",
    ("POST", "/calibrate_dataset"): "calibrate_dataset",
    ("POST", "/infer_dataset"): "infer_dataset",
    ("POST", "/datasets/upload"): "datasets.upload",
    ("DELETE", "/datasets/file"): "datasets.delete",
    ("DELETE", "/datasets/clear"): "datasets.clear",
    ("POST", "/models/rollback"): "rollback",
    ("PUT", "/recipes/{recipe_id}/plan"): "plan.put",
    ("POST", "/frames/{frame_id:path}/review"): "review",
    ("POST", "/auth/login"): "login",
    ("POST", "/auth/logout"): "logout",
}
# scoring one image changes nothing, and machines call it at the line's rate
NOT_AUDITED = frozenset({("POST", "/infer")})


def _target(scope: Scope) -> str | None:
    state, params = scope.get("state", {}), scope.get("path_params", {})
    if state.get("audit_target"):
        return str(state["audit_target"])
    if params.get("frame_id"):
        return str(params["frame_id"])
    ids = state.get("ids", {})
    parts = [ids[k] for k in ("recipe_id", "role_id", "roi_id") if ids.get(k)]
    if parts:
        return "/".join(map(str, parts))
    return str(params["recipe_id"]) if params.get("recipe_id") else None


def audit_entry(scope: Scope, status: int) -> audit.AuditEntry | None:
    """The audit entry of a finished state-changing request (None: not audited)."""
    route = getattr(scope.get("route"), "path", None)
    method = scope.get("method", "")
    if route is None or method not in UNSAFE or (method, route) in NOT_AUDITED:
        return None
    state: dict[str, Any] = scope.get("state", {})
    action = ACTIONS.get((method, route), f"{method} {route}")
    if action == "login" and status != 200:
        action = "login_failed"
    who: Principal | None = state.get("principal")
    detail = {"method": method, "route": route, **state.get("audit_detail", {})}
    if who is not None:
        detail["via"] = who.via
    return audit.AuditEntry(
        at_ms=int(time.time() * 1000), user=who.name if who else state.get("audit_user"),
        role=who.role if who else None, action=action, target=_target(scope), outcome=status,
        request_id=state.get("request_id"), detail=detail,
    )  # fmt: skip


class AuditMiddleware:
    """Records every state-changing request in the trace's ``audit`` table (and the
    diagnostics log) once its answer is ready, before its last byte is sent: a client that
    got the answer finds the entry. Without a trace database the request goes on, with a
    warning in the log."""

    def __init__(self, app: ASGIApp, state: "AppState") -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") not in UNSAFE:
            await self.app(scope, receive, send)
            return
        status = {"code": 500, "done": False}

        async def finish() -> None:
            if not status["done"]:
                status["done"] = True
                await self.record(scope, int(status["code"]))

        async def audited(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                await finish()
            await send(message)

        try:
            await self.app(scope, receive, audited)
        finally:
            await finish()

    async def record(self, scope: Scope, status: int) -> None:
        try:
            entry = audit_entry(scope, status)
        except Exception:  # noqa: BLE001 - the audit never fails a request
            log.exception("audit entry not built")
            return
        if entry is None:
            return
        diagnostics = self.state.diagnostics
        diagnostics.log("audit", **entry.to_dict())
        try:
            await asyncio.to_thread(self.state.trace.read, lambda s: audit.add(s.db, entry))
        except Exception as exc:  # noqa: BLE001 - no trace database: logged, not raised
            log.warning("audit entry not stored", extra={"error": str(exc)})
            diagnostics.log("audit_not_stored", level="warning", error=str(exc),
                            audit_id=entry.audit_id)  # fmt: skip
