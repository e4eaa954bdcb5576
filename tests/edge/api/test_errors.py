"""The API's error table: what each store and engine error class means over HTTP."""

from __future__ import annotations

import inspect

import pytest

from edge.api.errors import ERROR_TABLE, BdiError, as_bdi_error
from engine import errors as engine_errors
from engine.calibration import CalibrationError
from store import errors as store_errors


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (store_errors.InvalidIdError("x"), 400, "invalid_id"),
        (store_errors.InvalidValueError("x"), 400, "invalid_value"),
        (store_errors.MissingModelError("x"), 400, "missing_memory"),
        (store_errors.NotFoundError("x"), 404, "not_found"),
        (store_errors.ConflictError("x"), 409, "mm_per_px_mismatch"),
        (store_errors.ArchiveError("x"), 400, "invalid_archive"),
        (store_errors.CorruptModelError("x"), 500, "corrupt_model"),
        (store_errors.StoreError("x"), 500, "store_error"),
        (engine_errors.GridMismatchError("x"), 400, "token_grid_mismatch"),
        (engine_errors.UnsupportedImageError("x"), 415, "unsupported_media_type"),
        (engine_errors.ImageTooLargeError("x"), 413, "image_too_large"),
        (engine_errors.ImageDecodeError("x"), 400, "invalid_image"),
        (CalibrationError("x"), 400, "engine_error"),
        # a full GPU is transient (the client may retry), a model's files are not at fault
        (engine_errors.DeviceMemoryError("x"), 503, "device_out_of_memory"),
        (engine_errors.DeviceError("x"), 500, "device"),
    ],
)
def test_error_classes_map_to_statuses(error: Exception, status: int, code: str) -> None:
    mapped = as_bdi_error(error)
    assert mapped is not None and (mapped.status, mapped.code) == (status, code)
    assert mapped.message == "x"


def test_every_store_error_class_has_a_row() -> None:
    classes = {c for _, c in inspect.getmembers(store_errors, inspect.isclass)}
    assert classes <= {etype for etype, _, _ in ERROR_TABLE}


def test_a_subclass_is_never_shadowed_by_its_base() -> None:
    for i, (etype, _, _) in enumerate(ERROR_TABLE):
        for earlier, _, _ in ERROR_TABLE[:i]:
            assert not issubclass(etype, earlier), f"{etype.__name__} after {earlier.__name__}"


def test_api_errors_pass_through_and_others_are_unexpected() -> None:
    own = BdiError("busy", 429, "busy")
    assert as_bdi_error(own) is own
    assert as_bdi_error(RuntimeError("boom")) is None
