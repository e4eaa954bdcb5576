"""Store error types. What each means over HTTP is the REST API's business
(``edge/api/errors.py``); the store only says what went wrong.

The root subclasses :class:`ValueError` so the ``bdi`` command line, which reports
``ValueError`` as ``bdi: error: ...``, needs no special case.
"""

from __future__ import annotations


class StoreError(ValueError):
    """Base class of every error the store raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidIdError(StoreError):
    """A recipe, role, ROI, model key or file name is not acceptable."""


class InvalidValueError(StoreError):
    """A value (not an id) is unusable, e.g. a negative ``mm_per_px``."""


class MissingModelError(StoreError):
    """No model is stored for a recipe / role / ROI ("missing memory")."""


class NotFoundError(StoreError):
    """A dataset image, recipe or model revision does not exist."""


class ConflictError(StoreError):
    """The request contradicts stored state, e.g. another ``mm_per_px``."""


class CorruptModelError(StoreError):
    """Stored model files are unreadable or disagree with their version record."""


class ArchiveError(StoreError):
    """A model archive is unusable, or a model cannot be exported."""


class InvalidPlanError(InvalidValueError):
    """An inspection plan is unusable: no ROI, a ROI named twice, a bad deadline."""


class PlanNotFoundError(NotFoundError):
    """No inspection plan (or no such plan version) is stored for a recipe."""


class CorruptPlanError(StoreError):
    """A stored inspection plan is unreadable or disagrees with its version."""
