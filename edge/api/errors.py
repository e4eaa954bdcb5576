"""Domain errors of the REST API and their mapping to HTTP responses.

Every error answer has the same JSON body, ``{"error", "detail", "request_id"}`` (plus
``"errors"`` for request validation), and never a traceback: unexpected exceptions are
logged in full to the diagnostics log and answered with a generic 500.
"""

from __future__ import annotations

import errno
import os
from typing import Any

from engine.errors import (
    BackboneWeightsError,
    DeviceError,
    EngineError,
    GridMismatchError,
    ImageDecodeError,
    ImageTooLargeError,
    NotFittedError,
    UnsupportedImageError,
)
from store.errors import (
    ConflictError,
    CorruptModelError,
    InvalidIdError,
    InvalidValueError,
    MissingModelError,
    NotFoundError,
    StoreError,
)


class BdiError(Exception):
    """Root of the errors the API raises on purpose: a status, a stable code, a message."""

    status: int = 500
    code: str = "internal_error"

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


class Conflict(BdiError):
    status, code = 409, "conflict"


class PayloadTooLarge(BdiError):
    status, code = 413, "payload_too_large"


class UnsupportedMedia(BdiError):
    status, code = 415, "unsupported_media_type"


class Busy(BdiError):
    status, code = 429, "busy"

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


# Store and engine errors keep their own classes; here is what each means over HTTP.
_STORE_CODES: dict[type[StoreError], str] = {
    InvalidIdError: "invalid_id",
    InvalidValueError: "invalid_value",
    MissingModelError: "missing_memory",
    NotFoundError: "not_found",
    ConflictError: "mm_per_px_mismatch",
    CorruptModelError: "corrupt_model",
}

_ENGINE_STATUS: list[tuple[type[EngineError], int, str]] = [
    (GridMismatchError, 400, "token_grid_mismatch"),
    (NotFittedError, 400, "missing_memory"),
    (UnsupportedImageError, 415, "unsupported_media_type"),
    (ImageTooLargeError, 413, "image_too_large"),
    (ImageDecodeError, 400, "invalid_image"),
    (BackboneWeightsError, 500, "backbone_weights"),
    (DeviceError, 500, "device"),
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
    if isinstance(exc, StoreError):
        code = next((c for t, c in _STORE_CODES.items() if isinstance(exc, t)), "store_error")
        return BdiError(str(exc), exc.status, code)
    if isinstance(exc, EngineError):
        for etype, status, code in _ENGINE_STATUS:
            if isinstance(exc, etype):
                return BdiError(str(exc), status, code)
        # calibration errors (empty or non-finite scores) and the like: the input's fault
        return BdiError(str(exc), 400, "engine_error")
    return None


def error_body(code: str, detail: str, request_id: str | None, **extra: Any) -> dict[str, Any]:
    return {"error": code, "detail": detail, "request_id": request_id, **extra}
