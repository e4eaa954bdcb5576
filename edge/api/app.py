"""The FastAPI app: ``create_app(settings)`` wires state, middleware, routers, errors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from configs.settings import Settings
from edge.api.auth import AuditMiddleware
from edge.api.deps import AppState, Engineer, Operator
from edge.api.diagnostics import Diagnostics
from edge.api.errors import as_bdi_error, error_body
from edge.api.metrics import ApiMetrics
from edge.api.middleware import ApiMiddleware, BodyDeadline, BodyError
from edge.api.routes import (
    audit,
    auth,
    datasets,
    health,
    inference,
    jobs,
    models,
    plans,
    review,
    trace,
    training,
)
from edge.ui import live as ui_live
from edge.ui import pages as ui_pages
from engine import Engine
from store import ModelStore

_HTTP_CODES = {
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    415: "unsupported_media_type",
}


def _version() -> str:
    try:
        return package_version("bdi-edge")
    except PackageNotFoundError:
        return "0+unknown"


async def _warm_up(state: AppState) -> None:
    try:
        await asyncio.to_thread(state.engine.backbone)
        state.engine_status = "ready"
    except Exception as exc:  # noqa: BLE001 - reported by /ready and the log, not raised
        state.engine_status = f"error: {exc}"
        state.diagnostics.log("error", level="error", error="engine_load", message=str(exc))


async def _watch_broker(state: AppState, bootstrap: str, every_s: float = 5.0) -> None:
    """A TCP connect to any bootstrap server, every few seconds (no Kafka client here)."""
    servers = [s.strip().rsplit(":", 1) for s in bootstrap.split(",") if s.strip()]
    while True:
        reachable = False
        for host, port in (s if len(s) == 2 else (s[0], "9092") for s in servers):
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), 2.0)
                writer.close()
                reachable = True
                break
            except (OSError, TimeoutError, ValueError):
                continue
        state.broker_status = "ok" if reachable else "unreachable"
        await asyncio.sleep(every_s)


def _request_id(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


def _error_response(
    request: Request, status: int, code: str, detail: str, headers: dict[str, str] | None = None,
    public: bool = False, **extra: object,
) -> JSONResponse:  # fmt: skip
    state: AppState = request.app.state.bdi
    state.diagnostics.log(
        "error", level="error" if status >= 500 else "warning", status=status, error=code,
        message=detail, method=request.method, path=request.url.path,
    )  # fmt: skip
    # server-side detail (file paths and the like) stays in the log
    if status >= 500 and not public:
        detail = f"server error ({code}); details in the diagnostics log under this request id"
    body = error_body(code, detail, _request_id(request), **extra)
    return JSONResponse(body, status_code=status, headers=headers)


def _install_error_handlers(app: FastAPI) -> None:
    async def domain_error(request: Request, exc: Exception) -> JSONResponse:
        err = as_bdi_error(exc)
        if err is None:  # not ours after all: let the middleware answer 500
            raise exc
        return _error_response(
            request, err.status, err.code, err.message, err.headers, public=err.public
        )

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        # a body bound (size, deadline) names its own code
        code = (
            exc.code
            if isinstance(exc, BodyError)
            else _HTTP_CODES.get(exc.status_code, "http_error")
        )
        headers = dict(exc.headers) if exc.headers else None
        return _error_response(request, exc.status_code, code, str(exc.detail), headers)

    async def validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        # the offending input is left out: it may be an upload's bytes, or a secret
        errors = [{k: v for k, v in e.items() if k in ("type", "loc", "msg")} for e in exc.errors()]
        return _error_response(
            request, 422, "validation_error", "request does not match the schema",
            errors=jsonable_encoder(errors),
        )  # fmt: skip

    from edge.api.errors import BdiError
    from engine.errors import EngineError
    from store.errors import StoreError

    for etype in (BdiError, StoreError, EngineError, OSError):
        app.add_exception_handler(etype, domain_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)


def create_app(
    settings: Settings,
    engine: Engine | None = None,
    store: ModelStore | None = None,
    warmup: bool = False,
) -> FastAPI:
    """The REST API over one engine and one store (shared with the consumers when given)."""
    engine = engine or Engine.from_settings(settings)  # fails here when CUDA is required
    store = store or ModelStore(settings, use_gpu=engine.spec.is_cuda)
    state = AppState(
        settings=settings, engine=engine, store=store, diagnostics=Diagnostics(settings),
        metrics=ApiMetrics(), version=_version(),
    )  # fmt: skip

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.store.sweep()  # temp files of writers killed mid-write
        state.diagnostics.log("startup", version=state.version, device=engine.spec.describe())
        tasks = []
        ui_live.open_feed(app, settings)  # the Line page's feed, started by its first reader
        if warmup:  # serve /health at once; /ready says when the backbone is loaded
            state.engine_status = "loading"
            tasks.append(asyncio.create_task(_warm_up(state)))
        if settings.kafka_bootstrap:
            state.broker_status = "unreachable"
            tasks.append(asyncio.create_task(_watch_broker(state, settings.kafka_bootstrap)))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await ui_live.close_feed(app)
            await state.batcher.stop()
            state.trace.close()
            state.diagnostics.log("shutdown")
            state.diagnostics.close()

    app = FastAPI(
        title="BDI Edge",
        version=state.version,
        description="Brake-disc inspection: train, calibrate, infer, datasets, readiness.",
        lifespan=lifespan,
    )
    app.state.bdi = state
    _install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(auth.router)  # login is open; each endpoint says what it needs
    # operators read and review; engineers do everything (docs/AUTH.md): the endpoints of
    # the operators' routers that change things name Engineer themselves
    for module in (training, inference, audit):
        app.include_router(module.router, dependencies=[Engineer])
    for module in (models, datasets, plans, review, trace, jobs):
        app.include_router(module.router, dependencies=[Operator])
    ui_pages.install(app)  # the operator screen at /ui (docs/UI.md)
    app.include_router(ui_live.router, dependencies=[Operator])  # its live feed
    app.add_middleware(AuditMiddleware, state=state)
    if settings.cors_origins:
        wildcard = "*" in settings.cors_origins
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_credentials=not wildcard,  # never '*' together with credentials
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=["X-API-Key", "X-CSRF-Token", "X-Request-Id", "Content-Type"],
            expose_headers=["X-Request-Id"],
        )
    app.add_middleware(
        ApiMiddleware,
        max_body=int(settings.max_upload_mb * 1024 * 1024),
        metrics=state.metrics,
        diagnostics=state.diagnostics,
        deadline=BodyDeadline(settings.body_timeout_s, settings.body_min_rate_kb_s),
    )
    return app
