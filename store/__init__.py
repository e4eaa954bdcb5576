"""The on-disk model and dataset store: layout, naming rules, atomic writes, locks, legacy
paths, manifests. Never imports torch at import time (the engine is imported lazily where
a model is (de)serialised)."""

from store.cache import ModelCache
from store.datasets import DatasetImage
from store.errors import (
    ConflictError,
    CorruptModelError,
    InvalidIdError,
    InvalidValueError,
    MissingModelError,
    NotFoundError,
    StoreError,
)
from store.manifest import ModelState
from store.naming import base_name, model_key, parse_base_name, part_id, recipe_id
from store.store import ModelRef, ModelStore, SavedModel

__all__ = [
    "ConflictError",
    "CorruptModelError",
    "DatasetImage",
    "InvalidIdError",
    "InvalidValueError",
    "MissingModelError",
    "ModelCache",
    "ModelRef",
    "ModelState",
    "ModelStore",
    "NotFoundError",
    "SavedModel",
    "StoreError",
    "base_name",
    "model_key",
    "parse_base_name",
    "part_id",
    "recipe_id",
]
