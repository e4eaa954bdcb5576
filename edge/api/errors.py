"""Domain errors of the REST API and their mapping to HTTP responses.

Every error answer has the same JSON body, ``{"error", "detail", "request_id"}`` (plus
``"errors"`` for request validation), and never a traceback: unexpected exceptions are
logged in full to the diagnostics log and answered with a generic 500.

The store and the engine raise their own error classes and know nothing of HTTP;
:data:`ERROR_TABLE` says what each one means over HTTP.
"""

from __future__ import annotations

import errno
import os
from typing import Any

from engine import errors as engine_errors
from store import errors as store_errors


class BdiError(Exception):
    """Root of the errors the API raises on purpose: a status, a stable code, a message."""

    status: int = 500
    code: str = "internal_error"
    # a 5xx answer shows "see the log" instead of the message, unless the message is meant
    # for the caller (it names a setting or a step to take, never a server path)
    public: bool = False

    def __init__(
        self,
        message: str,
        status: int | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code
        self.headers = headers or {}


class BadRequest(BdiError):
    status, code = 400, "bad_request"


class Unauthorized(BdiError):
    status, code = 401, "unauthorized"


class NotFound(BdiError):
    status, code = 404, "not_found"


class Gone(BdiError):
    status, code = 410, "gone"


class Unavailable(BdiError):
    """Something the request needs is not there yet (the trace database); says what to do."""

    status, code, public = 503, "unavailable", True


class Busy(BdiError):
    status, code = 429, "busy"

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


class QueueFull(Busy):
    """The inference queue holds ``BDI_REST_QUEUE_MAX`` frames (edge.api.batching)."""

    code = "queue_full"


class DeadlineExceeded(BdiError):
    """A request's frames were not scored within ``BDI_REST_DEADLINE_S``; never a late answer."""

    status, code, public = 503, "deadline_exceeded", True

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


# error class -> (HTTP status, code); the first entry the error is an instance of wins,
# so subclasses come before their bases
ERROR_TABLE: list[tuple[type[Exception], int, str]] = [
    (store_errors.InvalidIdError, 400, "invalid_id"),
    (store_errors.InvalidPlanError, 400, "invalid_plan"),
    (store_errors.InvalidValueError, 400, "invalid_value"),
    (store_errors.MissingModelError, 400, "missing_memory"),
    (store_errors.PlanNotFoundError, 404, "plan_not_found"),
    (store_errors.NotFoundError, 404, "not_found"),
    (store_errors.ConflictError, 409, "mm_per_px_mismatch"),
    (store_errors.ArchiveError, 400, "invalid_archive"),
    (store_errors.CorruptModelError, 500, "corrupt_model"),
    (store_errors.CorruptPlanError, 500, "corrupt_plan"),
    (store_errors.StoreError, 500, "store_error"),
    (engine_errors.GridMismatchError, 400, "token_grid_mismatch"),
    (engine_errors.NotFittedError, 400, "missing_memory"),
    (engine_errors.ChannelMismatchError, 422, "channel_mismatch"),
    (engine_errors.ShapeMismatchError, 422, "shape_mismatch"),
    (engine_errors.UnsupportedImageError, 415, "unsupported_media_type"),
    (engine_errors.ImageTooLargeError, 413, "image_too_large"),
    (engine_errors.ImageDecodeError, 400, "invalid_image"),
    (engine_errors.BackboneWeightsError, 500, "backbone_weights"),
    (engine_errors.DeviceMemoryError, 503, "device_out_of_memory"),
    (engine_errors.DeviceError, 500, "device"),
    # calibration errors (empty or non-finite scores) and the like: the input's fault
    (engine_errors.EngineError, 400, "engine_error"),
]

# a full or read-only disk, or a failing one: the store could not write; say so
_STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO}


def as_bdi_error(exc: BaseException) -> BdiError | None:
    """The API error an exception stands for; ``None`` for an unexpected one (500)."""
    if isinstance(exc, BdiError):
        return exc
    if isinstance(exc, OSError) and exc.errno in _STORAGE_ERRNOS:
        return BdiError(
            f"the model store could not write ({os.strerror(exc.errno or 0)}); "
            "nothing was changed", 507, "insufficient_storage",
        )  # fmt: skip
    for etype, status, code in ERROR_TABLE:
        if isinstance(exc, etype):
            return BdiError(str(exc), status, code)
    return None


def error_body(code: str, detail: str, request_id: str | None, **extra: Any) -> dict[str, Any]:
    return {"error": code, "detail": detail, "request_id": request_id, **extra}
