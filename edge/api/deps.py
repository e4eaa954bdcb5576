"""What handlers get injected: the app's state pieces, a validated model reference, the
request id, who the request is and the role it needs. Each dependency is narrow: a handler
asks for what it uses.

No ``from __future__ import annotations`` here: :func:`_ref_dependency` builds handler
parameters from local ``Annotated`` types, which FastAPI must see evaluated.
"""

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Form, Query, Request

from configs.settings import Settings
from edge.api.auth import Auth, Principal, engineer, identify, operator
from edge.api.batching import Batcher
from edge.api.diagnostics import Diagnostics
from edge.api.jobs import Jobs
from edge.api.metrics import ApiMetrics
from edge.api.schemas import CalibrateRequest
from edge.api.trace import TraceReader
from engine import Engine
from store import ModelRef, ModelStore


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
    trace: TraceReader = field(init=False)  # opened on the first trace request
    auth: Auth = field(init=False)  # users, sessions, the API key
    jobs: Jobs = field(init=False)  # trainings running in worker threads (POST /jobs/train)
    batcher: Batcher = field(init=False)  # REST inference's engine calls (edge.api.batching)
    # readiness (GET /ready): "ready", "loading" or "error: ..." / "ok", "unreachable",
    # "not configured"
    engine_status: str = "ready"
    broker_status: str = "not configured"

    def __post_init__(self) -> None:
        self.fit_slots = threading.BoundedSemaphore(self.settings.max_concurrent_fits)
        self.trace = TraceReader(self.settings)
        self.auth = Auth(self.settings)
        self.jobs = Jobs(self.diagnostics)
        self.batcher = Batcher.from_settings(self.settings, self.engine, self.metrics)

    @property
    def ready(self) -> bool:
        return self.engine_status == "ready" and self.broker_status != "unreachable"


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.bdi
    return state


StateDep = Annotated[AppState, Depends(get_state)]


def get_store(state: StateDep) -> ModelStore:
    return state.store


def get_request_id(request: Request) -> str:
    return str(request.state.request_id)


def get_trace(state: StateDep) -> TraceReader:
    return state.trace


StoreDep = Annotated[ModelStore, Depends(get_store)]
TraceDep = Annotated[TraceReader, Depends(get_trace)]
RequestIdDep = Annotated[str, Depends(get_request_id)]

# who the request is (a session's user, the API key, the open mode) and the role it needs
# (edge/api/auth.py, docs/AUTH.md); a router or endpoint names one in ``dependencies``
PrincipalDep = Annotated[Principal, Depends(identify)]
Operator = Depends(operator)
Engineer = Depends(engineer)


# --- the model reference -------------------------------------------------------------------
def resolve_ref(
    request: Request,
    store: ModelStore,
    recipe_id: str | None,
    role_id: str,
    roi_id: str,
    model_key: str | None = None,
) -> ModelRef:
    """Validate the ids (400 on a bad one) and tag the request's log line with them."""
    ids = request.scope.setdefault("state", {}).setdefault("ids", {})
    given = {"recipe_id": recipe_id, "role_id": role_id, "roi_id": roi_id}
    ids.update({k: v for k, v in given.items() if v is not None})
    ref = store.ref(recipe_id, role_id, roi_id, model_key)
    ids.update(recipe_id=ref.recipe_id, model_key=ref.model_key)
    return ref


def _ref_dependency(where: Callable[..., Any], with_model_key: bool) -> Callable[..., ModelRef]:
    """A dependency reading the ids from the query or the form (``where``) and returning
    the resolved reference. Datasets belong to a role and ROI, so their endpoints take no
    ``model_key``."""
    Id = Annotated[str, where(min_length=1, max_length=256)]
    OptId = Annotated[str | None, where(max_length=256)]

    def model_ref(
        request: Request,
        store: StoreDep,
        role_id: Id,
        roi_id: Id,
        recipe_id: OptId = None,
        model_key: OptId = None,
    ) -> ModelRef:
        return resolve_ref(request, store, recipe_id, role_id, roi_id, model_key)

    def dataset_ref(
        request: Request, store: StoreDep, role_id: Id, roi_id: Id, recipe_id: OptId = None
    ) -> ModelRef:
        return resolve_ref(request, store, recipe_id, role_id, roi_id)

    return model_ref if with_model_key else dataset_ref


def _body_ref(request: Request, store: StoreDep, body: CalibrateRequest) -> ModelRef:
    return resolve_ref(request, store, body.recipe_id, body.role_id, body.roi_id, body.model_key)


FormRef = Annotated[ModelRef, Depends(_ref_dependency(Form, with_model_key=True))]
QueryRef = Annotated[ModelRef, Depends(_ref_dependency(Query, with_model_key=True))]
FormDatasetRef = Annotated[ModelRef, Depends(_ref_dependency(Form, with_model_key=False))]
QueryDatasetRef = Annotated[ModelRef, Depends(_ref_dependency(Query, with_model_key=False))]
BodyRef = Annotated[ModelRef, Depends(_body_ref)]
