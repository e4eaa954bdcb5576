"""The review loop (docs/REVIEW.md): an engineer confirms or overrules a frame's verdict,
by ``frame_id``, from the crop the trace kept.

| verdict | decision | what follows |
|---|---|---|
| NG | overrule | a false reject: the crop goes into the OK dataset; ``append``: into the model's memory bank too (a new version) |
| NG | confirm | the crop goes into the NG dataset |
| OK | overrule | a missed defect: the crop goes into the NG dataset; the threshold is not changed |
| OK | confirm | recorded only |

Every review is recorded in the trace database (``reviews``), with who, when, why, and the
dataset image and model version that followed; each dataset image keeps the same
provenance in its JSON sidecar.
"""  # noqa: E501 - a table

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any, Literal

from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, field_validator

from edge.api import fitting
from edge.api.diagnostics import Diagnostics
from edge.api.errors import BadRequest, BdiError, Busy, NotFound
from edge.api.trace import TraceReader, frame_url, no_crop, part_url
from engine import Engine
from store import ModelStore
from store.errors import NotFoundError
from store.trace import Cursor, TraceStore, queries
from store.trace import reviews as records
from store.trace.reviews import Review

SCORED = ("OK", "NG")


class ReviewRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    decision: Literal["confirm", "overrule"] = Field(description="the verdict stands or not")
    reviewer: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        description="who reviewed it; required with the API key, and replaced by the user's "
        "name for a logged-in user",
    )
    reason: str = Field(default="", max_length=2000, description="why (free text)")
    append: bool = Field(
        default=False,
        strict=True,
        description="an overruled NG only: add the crop to the model's memory bank too",
    )

    @field_validator("reviewer", "reason")
    @classmethod
    def _printable(cls, value: str | None) -> str | None:
        if value is None:
            return None
        text = " ".join(value.split())
        if not all(c.isprintable() for c in text):
            raise ValueError("must be printable text")
        return text

    @field_validator("reviewer")
    @classmethod
    def _named(cls, value: str | None) -> str | None:
        if value is not None and not value:
            raise ValueError("must name the reviewer")
        return value


class ReviewPublic(BaseModel):
    review_id: str
    frame_id: str
    part_id: str | None
    recipe_id: str | None
    role_id: str | None
    roi_id: str | None
    verdict: Literal["OK", "NG"] = Field(description="the frame's verdict that was reviewed")
    score: float | None
    decision: Literal["confirm", "overrule"]
    reviewer: str
    reason: str
    reviewed_at: str = Field(description="ISO 8601, UTC")
    reviewed_ms: int = Field(description="the same, milliseconds since the epoch")
    dataset_label: Literal["ok", "ng"] | None = Field(description="where the crop went")
    dataset_item: str | None = Field(description="the dataset image's name (GET /datasets/file)")
    model_version: str | None = Field(description="the model version that judged the frame")
    calibration_version: str | None
    appended: bool = Field(description="the crop was added to the model's memory bank")
    new_model_version: str | None = Field(description="the version that append stored")
    note: str = Field(description="what the review changed, for a person")


class ReviewsPublic(BaseModel):
    frame_id: str
    reviews: list[ReviewPublic] = Field(description="oldest first")


class QueueItemPublic(BaseModel):
    frame_id: str
    part_id: str | None
    queued_as: Literal["NG", "ERROR", "NO_MODEL", "near_threshold"] = Field(
        description="why the frame is in the queue: its verdict, or an OK scored near its threshold"
    )
    verdict: dict[str, Any] = Field(description="the bdi.verdict/1 document as stored")
    reviews: int = Field(description="how many reviews the frame has (GET .../reviews)")
    frame_url: str
    part_url: str | None


class QueuePublic(BaseModel):
    items: list[QueueItemPublic] = Field(description="newest first")
    count: int
    next_cursor: str | None = Field(description="pass as cursor for the next page; null: last")


def as_reviewer(body: ReviewRequest, user: str | None) -> ReviewRequest:
    """The review as ``user`` (a logged-in user) made it; without one, the body must name
    the reviewer (422, as any missing field)."""
    if user is not None:
        return body.model_copy(update={"reviewer": user})
    if body.reviewer is None:
        raise RequestValidationError(
            [{"type": "missing", "loc": ("body", "reviewer"), "msg": "Field required"}]
        )
    return body


def _label(verdict: str, decision: str) -> Literal["ok", "ng"] | None:
    """The dataset a reviewed crop goes into (None: none)."""
    if verdict == "NG":
        return "ok" if decision == "overrule" else "ng"
    return "ng" if decision == "overrule" else None


def _read(store: TraceStore, frame_id: str) -> tuple[Any, Any, list[dict[str, Any]]]:
    found = store.frame(frame_id)
    state = queries.crops_of(store.db, [frame_id]).get(frame_id)
    return found, state, records.of_frame(store.db, frame_id)


def _frame_not_found(frame_id: str) -> NotFound:
    return NotFound(f"no frame {frame_id!r} in the trace", code="frame_not_found")


def _checked(frame_id: str, found: Any, body: ReviewRequest) -> dict[str, Any]:
    """The frame's stored verdict, when it can be reviewed as asked (else 404 / 409 / 400)."""
    if found is None:
        raise _frame_not_found(frame_id)
    doc: dict[str, Any] | None = found["verdict"]
    if doc is None:
        raise BdiError(f"no verdict of frame {frame_id!r} is stored yet: nothing to review",
                       409, "verdict_not_stored")  # fmt: skip
    verdict = doc.get("verdict")
    if verdict not in SCORED:
        raise BdiError(
            f"frame {frame_id!r} is {verdict}: no model judged its image, so there is no "
            "verdict to confirm or overrule and its crop cannot go into a dataset (store it "
            "with POST /datasets/upload if it is useful)",
            409,
            "not_reviewable",
        )
    if not all(isinstance(doc.get(k), str) and doc.get(k) for k in ("role_id", "roi_id")):
        raise BdiError(f"the verdict of frame {frame_id!r} names no role or ROI", 409,
                       "not_reviewable")  # fmt: skip
    if body.append and not (verdict == "NG" and body.decision == "overrule"):
        raise BadRequest(
            "append=true adds a false reject to the memory bank: only for an NG verdict "
            f"overruled (the verdict is {verdict}, the decision {body.decision})",
            code="append_not_applicable",
        )
    return doc


def _crop(frame_id: str, found: dict[str, Any], state: Any) -> bytes:
    """The kept crop's bytes; 409 ``crop_not_kept`` saying why there is none."""
    data = b""
    if found["crop"] is not None:
        with contextlib.suppress(FileNotFoundError):  # evicted since the query
            data = found["crop"]["path"].read_bytes()
    if not data:
        why = no_crop(state) or "evicted just now"
        raise BdiError(f"no crop of frame {frame_id!r} to store: {why}", 409, "crop_not_kept")
    return data


def _note(verdict: str, decision: str, label: str | None, item: str | None,
          appended: tuple[str, str] | None, judged_by: str | None) -> str:  # fmt: skip
    if label is None:
        return "the OK verdict is confirmed: recorded, nothing stored"
    where = f"the crop is in the {label.upper()} dataset as {item}"
    if verdict == "OK":
        return (
            f"a missed defect: {where}; the threshold was not changed: recalibrate with "
            "POST /calibrate_dataset"
        )
    if decision == "confirm":
        return f"the NG verdict is confirmed: {where}"
    if appended is None:
        return (
            f"a false reject: {where}; the model is unchanged (append=true, or POST /fit_ok "
            "mode=append, adds it to the memory bank)"
        )
    new, old = appended
    other = "" if judged_by in (None, old) else f"; the frame was judged by {judged_by}"
    return (
        f"a false reject: {where} and in the memory bank of the new model version {new} "
        f"(appended to {old}{other})"
    )


def review(
    reader: TraceReader,
    store: ModelStore,
    engine: Engine,
    diagnostics: Diagnostics,
    fit_slots: threading.BoundedSemaphore,
    max_pixels: int,
    frame_id: str,
    body: ReviewRequest,
) -> ReviewPublic:
    """``POST /frames/{frame_id}/review``: see the module's table."""
    from edge.api.service import decode

    now_ms = int(time.time() * 1000)
    found, crop_state, earlier = reader.read(lambda s: _read(s, frame_id))
    doc = _checked(frame_id, found, body)
    verdict, label = str(doc["verdict"]), _label(str(doc["verdict"]), body.decision)
    ref = store.ref(doc.get("recipe_id"), doc["role_id"], doc["roi_id"])
    data = b"" if label is None else _crop(frame_id, found, crop_state)
    if body.append and not fit_slots.acquire(blocking=False):
        raise Busy("a training is running: send the review again", 30)
    try:
        model = None
        if body.append:  # the refusals before anything is stored
            model = store.load_model(ref)
            with fitting.http_errors():
                fitting.check_append(store, engine, ref, model, None)
        review_id = Review.new_id()
        provenance = {
            "review_id": review_id, "frame_id": frame_id, "part_id": doc.get("part_id"),
            "verdict": verdict, "score": doc.get("score"), "threshold": doc.get("threshold"),
            "model_version": doc.get("model_version"),
            "calibration_version": doc.get("calibration_version"),
            "image_sha256": doc.get("image_sha256"), "decision": body.decision,
            "reviewer": str(body.reviewer), "reason": body.reason,
            "reviewed_at": Review.iso(now_ms),
        }  # fmt: skip
        item = _dataset_item(store, ref, label, data, earlier, frame_id, provenance)
        appended = None
        if model is not None:
            try:
                with fitting.http_errors():
                    image = decode(data, max_pixels)
                    _, saved = fitting.extend(store, engine, ref, model, [image])
            except BaseException:
                if item is not None and item[1]:  # nothing stays of a review that failed
                    store.datasets.delete(ref, "ok", item[0])
                raise
            appended = (saved.version, model.version)
    finally:
        if body.append:
            fit_slots.release()
    name = None if item is None else item[0]
    record = Review(
        review_id=review_id, frame_id=frame_id, part_id=doc.get("part_id"),
        recipe_id=ref.recipe_id, role_id=ref.role_id, roi_id=ref.roi_id, verdict=verdict,
        score=doc.get("score"), decision=body.decision, reviewer=str(body.reviewer),
        reason=body.reason, reviewed_ms=now_ms, dataset_label=label, dataset_item=name,
        model_version=doc.get("model_version"),
        calibration_version=doc.get("calibration_version"), appended=appended is not None,
        new_model_version=None if appended is None else appended[0],
        note=_note(verdict, body.decision, label, name, appended, doc.get("model_version")),
    )  # fmt: skip
    reader.read(lambda s: records.add(s.db, record))
    diagnostics.log("review", **{k: v for k, v in record.to_dict().items() if k != "note"})
    return ReviewPublic.model_validate(record.to_dict())


def _dataset_item(
    store: ModelStore,
    ref: Any,
    label: str | None,
    data: bytes,
    earlier: list[dict[str, Any]],
    frame_id: str,
    provenance: dict[str, Any],
) -> tuple[str, bool] | None:
    """The dataset image the crop is (name, added now): one an earlier review of the frame
    stored under the same label and still there, else a new one with ``provenance``."""
    if label is None:
        return None
    for old in reversed(earlier):
        name = old.get("dataset_item")
        if old.get("dataset_label") == label and isinstance(name, str):
            try:
                store.datasets.path(ref, label, name)
            except NotFoundError:
                continue
            return name, False
    image = store.datasets.add(
        ref, label, data, source=f"review of frame {frame_id}", extra={"review": provenance}
    )
    return image.name, True


def reviews(reader: TraceReader, frame_id: str) -> ReviewsPublic:
    """``GET /frames/{frame_id}/reviews``: 404 when the trace knows neither the frame nor
    a review of it."""
    found, _, rows = reader.read(lambda s: _read(s, frame_id))
    if found is None and not rows:
        raise _frame_not_found(frame_id)
    return ReviewsPublic(frame_id=frame_id, reviews=[ReviewPublic.model_validate(r) for r in rows])


def queue(
    reader: TraceReader,
    verdicts: tuple[str, ...],
    near: float | None,
    reviewed: bool,
    after: Cursor | None,
    limit: int,
) -> QueuePublic:
    """``GET /review/queue``: the frames a person should look at, newest first."""
    rows, last = reader.read(lambda s: records.queue(s.db, verdicts, near, reviewed, after, limit))
    items = []
    for doc, count in rows:
        frame_id, part_id = str(doc["frame_id"]), doc.get("part_id")
        part_id = part_id if isinstance(part_id, str) else None
        verdict = doc.get("verdict")
        item = {
            "frame_id": frame_id, "part_id": part_id, "verdict": doc, "reviews": count,
            "queued_as": "near_threshold" if verdict == "OK" else verdict,
            "frame_url": frame_url(frame_id), "part_url": part_url(part_id),
        }  # fmt: skip
        items.append(QueueItemPublic.model_validate(item))
    cursor = None if last is None else last.encode()
    return QueuePublic(items=items, count=len(items), next_cursor=cursor)
