"""Jobs: a training from the stored dataset run in the background, with its progress
(``POST /jobs/train``, engineers; ``GET /jobs``, ``GET /jobs/{job_id}``, operators).

``POST /jobs/train`` makes the checks of ``POST /fit_ok use_dataset=true`` that need no
training before it answers (the request's values, enough stored OK images, a free training
slot); what only the training finds (a locked ``mm_per_px``, an append the stored model
cannot take, ...) ends the job ``failed`` with the ``error`` ``/fit_ok`` would answer.
"""

from __future__ import annotations

from functools import partial
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge.api import service
from edge.api.deps import AppState, Engineer, PrincipalDep, RequestIdDep, StateDep, resolve_ref
from edge.api.errors import BdiError
from edge.api.jobs import KEEP_FINISHED, JobState
from edge.api.routes.common import ERRORS, blocking, take_fit_slot, workers
from edge.api.schemas import ErrorPublic, FitResult
from engine.training import Progress
from store import ModelRef

router = APIRouter(tags=["jobs"])


class TrainJobRequest(BaseModel):
    """What ``POST /jobs/train`` takes, as a form or as JSON (the fields of ``/fit_ok``)."""

    model_config = ConfigDict(extra="forbid")  # a JSON body's unknown field is a 422

    recipe_id: str | None = Field(default=None, max_length=256)
    role_id: str = Field(min_length=1, max_length=256)
    roi_id: str = Field(min_length=1, max_length=256)
    model_key: str | None = Field(default=None, max_length=256)
    mode: Literal["fit", "append"] = Field(
        default="fit", description="append: add the images to the stored model"
    )
    target_frr: float | None = Field(default=None, gt=0, lt=1, allow_inf_nan=False)
    mm_per_px: float | None = Field(default=None, gt=0, allow_inf_nan=False)


class JobProgressPublic(BaseModel):
    stage: str = Field(description="queued, loading, embed, coreset, calibrate, append, save, done")
    done: int = Field(description="steps of the stage done")
    total: int = Field(description="steps of the stage (0: not known yet)")
    fraction: float = Field(ge=0, le=1, description="of the whole job; 1.0 only when done")


class JobErrorPublic(BaseModel):
    code: str = Field(description="the code POST /fit_ok would answer, e.g. missing_memory")
    message: str
    status: int = Field(description="the HTTP status POST /fit_ok would answer")


class JobPublic(BaseModel):
    job_id: str
    kind: Literal["train"]
    recipe_id: str
    role_id: str
    roi_id: str
    model_key: str | None
    mode: Literal["fit", "append"]
    state: JobState
    progress: JobProgressPublic
    result: FitResult | None = Field(description="what POST /fit_ok answers, once done")
    error: JobErrorPublic | None = Field(description="why it failed")
    started_at: str = Field(description="ISO 8601, UTC: when it was accepted")
    finished_at: str | None
    user: str | None = Field(description="who started it")


class JobsPublic(BaseModel):
    jobs: list[JobPublic] = Field(description="newest first")


_MEDIA = ("application/json", "multipart/form-data", "application/x-www-form-urlencoded")
_BODY = {
    "requestBody": {
        "required": True,
        "content": {media: {"schema": TrainJobRequest.model_json_schema()} for media in _MEDIA},
    }
}


async def train_request(request: Request) -> TrainJobRequest:
    """The body as JSON or as a form (422 when it does not match, 415 for another type)."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    try:
        if media == "application/json":
            return TrainJobRequest.model_validate_json(await request.body())
        if media and media not in _MEDIA:
            raise BdiError(
                f"send the fields as JSON or as a form, not {media[:100]}",
                415,
                "unsupported_media_type",
            )
        form = await request.form()
        # an empty field is an absent one and other fields are ignored, as /fit_ok's form
        known = TrainJobRequest.model_fields
        fields = {k: v for k, v in form.items() if k in known and (not isinstance(v, str) or v)}
        return TrainJobRequest.model_validate(fields)
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        raise RequestValidationError(errors) from None


def _responses(*codes: int, **described: str) -> dict[int | str, dict[str, Any]]:
    out: dict[int | str, dict[str, Any]] = {code: ERRORS[code] for code in codes}
    for code, text in described.items():
        out[int(code[1:])] = {"model": ErrorPublic, "description": text}
    return out


@router.post(
    "/jobs/train",
    status_code=202,
    dependencies=[Engineer],
    openapi_extra=_BODY,
    responses=_responses(401, 403, 413, 415, 422, 429, 500, _400=(
        "invalid id or value, target_frr with mode=append, fewer stored OK images than "
        "needed (missing_ok_samples)"
    )),
)  # fmt: skip
async def train(
    request: Request,
    state: StateDep,
    principal: PrincipalDep,
    request_id: RequestIdDep,
    body: Annotated[TrainJobRequest, Depends(train_request)],
) -> JobPublic:
    """Train (``mode=fit``) or append to (``mode=append``) one model from its stored OK
    dataset, in the background: answers the job at once (202); ``GET /jobs/{job_id}`` says
    how far it is and, once done, what ``POST /fit_ok use_dataset=true`` would answer."""
    settings = state.settings
    ref = resolve_ref(
        request, state.store, body.recipe_id, body.role_id, body.roi_id, body.model_key
    )
    service.check_fit_request(settings, body.mode, body.target_frr, True, False)
    counts = await blocking(state.store.datasets.counts, ref)
    service.check_ok_count(settings, counts.get("ok", 0), body.mode)
    take_fit_slot(state)
    try:
        work = partial(_train, state, ref, body)
        job = state.jobs.start(
            ref, body.mode, principal.name, request_id, work, state.fit_slots.release
        )
    except BaseException:
        state.fit_slots.release()
        raise
    request.state.audit_detail = {"job_id": job["job_id"], "mode": body.mode}
    return JobPublic.model_validate(job)


def _train(state: AppState, ref: ModelRef, body: TrainJobRequest, progress: Progress) -> FitResult:
    """The job's work, in its worker thread: what ``/fit_ok use_dataset=true`` does."""
    progress("loading", 0, 1)
    ok = service.stored_ok(state.store, state.settings, ref, body.mode)
    progress("loading", 1, 1)
    return service.fit_ok(
        *workers(state), ref, ok, body.mm_per_px, "dataset", body.mode, body.target_frr,
        progress,
    )  # fmt: skip


@router.get("/jobs", responses=_responses(401, 403, 422, 500))
async def jobs(
    state: StateDep, limit: Annotated[int, Query(ge=1, le=100)] = KEEP_FINISHED
) -> JobsPublic:
    """The newest ``limit`` jobs of this API process (running ones and the last 50
    finished), newest first."""
    return JobsPublic(jobs=[JobPublic.model_validate(j) for j in state.jobs.recent(limit)])


@router.get(
    "/jobs/{job_id}",
    responses=_responses(401, 403, 422, 500, _404="no such job in this API process"),
)
async def job(state: StateDep, job_id: Annotated[str, Path(max_length=64)]) -> JobPublic:
    """One job: its state, progress, and its result (or error) once finished."""
    return JobPublic.model_validate(state.jobs.get(job_id))
