"""What handlers get injected: the app's state pieces, the request id, the API-key check."""

from __future__ import annotations

import hmac
import threading
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader

from configs.settings import Settings
from edge.api.diagnostics import Diagnostics
from edge.api.errors import Unauthorized
from edge.api.metrics import ApiMetrics
from engine import Engine
from store import ModelStore


@dataclass
class AppState:
    """Everything a request may need; built once per app in the lifespan."""

    settings: Settings
    engine: Engine
    store: ModelStore
    diagnostics: Diagnostics
    metrics: ApiMetrics
    version: str
    fit_slots: threading.BoundedSemaphore = field(init=False)
    # readiness (GET /ready): "ready", "loading" or "error: ..." / "ok", "unreachable",
    # "not configured"
    engine_status: str = "ready"
    broker_status: str = "not configured"

    def __post_init__(self) -> None:
        self.fit_slots = threading.BoundedSemaphore(self.settings.max_concurrent_fits)

    @property
    def ready(self) -> bool:
        return self.engine_status == "ready" and self.broker_status != "unreachable"


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.bdi
    return state


def get_settings(state: Annotated[AppState, Depends(get_state)]) -> Settings:
    return state.settings


def get_engine(state: Annotated[AppState, Depends(get_state)]) -> Engine:
    return state.engine


def get_store(state: Annotated[AppState, Depends(get_state)]) -> ModelStore:
    return state.store


def get_request_id(request: Request) -> str:
    return str(request.state.request_id)


StateDep = Annotated[AppState, Depends(get_state)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
EngineDep = Annotated[Engine, Depends(get_engine)]
StoreDep = Annotated[ModelStore, Depends(get_store)]
RequestIdDep = Annotated[str, Depends(get_request_id)]

_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False)


def require_api_key(
    state: StateDep, key: Annotated[str | None, Depends(_api_key_header)] = None
) -> None:
    """With ``BDI_API_KEY`` set, the request must carry it in ``X-API-Key`` (401 otherwise)."""
    expected = state.settings.api_key
    if expected is None:
        return
    given = (key or "").encode()
    # compare_digest: the time taken does not tell how much of a guess was right
    if not hmac.compare_digest(given, expected.get_secret_value().encode()):
        raise Unauthorized("missing or wrong X-API-Key", code="unauthorized")


def remember_ids(request: Request, **ids: str | None) -> None:
    """Attach recipe/role/roi ids to the request so its access-log line carries them."""
    current = request.scope.setdefault("state", {}).setdefault("ids", {})
    current.update({k: v for k, v in ids.items() if v is not None})
