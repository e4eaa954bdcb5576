"""Store error types. Each carries the HTTP status the REST API answers with.

The root subclasses :class:`ValueError` so the ``bdi`` command line, which reports
``ValueError`` as ``bdi: error: ...``, needs no special case.
"""

from __future__ import annotations


class StoreError(ValueError):
    """Base class of every error the store raises on purpose."""

    status: int = 500

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status


class InvalidIdError(StoreError):
    """A recipe, role, ROI, model key or file name is not acceptable (HTTP 400)."""

    status = 400


class InvalidValueError(StoreError):
    """A value (not an id) is unusable, e.g. a negative ``mm_per_px`` (HTTP 400)."""

    status = 400


class MissingModelError(StoreError):
    """No model is stored for a recipe / role / ROI (HTTP 400: "missing memory")."""

    status = 400


class NotFoundError(StoreError):
    """A dataset image or recipe does not exist (HTTP 404)."""

    status = 404


class ConflictError(StoreError):
    """The request contradicts stored state, e.g. another ``mm_per_px`` (HTTP 409)."""

    status = 409


class CorruptModelError(StoreError):
    """Stored model files are unreadable or disagree with their version record (HTTP 500)."""

    status = 500
