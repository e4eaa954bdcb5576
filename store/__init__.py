"""The on-disk model and dataset store: layout, naming rules, atomic writes, locks, legacy
paths, manifests, model history and archives, inspection plans. Never imports torch at
import time (the engine is imported lazily where a model is (de)serialised)."""

from store.cache import ModelCache
from store.datasets import DatasetImage
from store.errors import (
    ArchiveError,
    ConflictError,
    CorruptModelError,
    CorruptPlanError,
    InvalidIdError,
    InvalidPlanError,
    InvalidValueError,
    MissingModelError,
    NotFoundError,
    PlanNotFoundError,
    StoreError,
)
from store.history import Revision
from store.manifest import ModelState
from store.naming import ModelRef, base_name, model_key, parse_base_name, part_id, recipe_id
from store.plans import InspectionPlan, PlanRoi, PlanWarning, StoredPlan
from store.store import ModelStore, SavedModel

__all__ = [
    "ArchiveError",
    "ConflictError",
    "CorruptModelError",
    "CorruptPlanError",
    "DatasetImage",
    "InspectionPlan",
    "InvalidIdError",
    "InvalidPlanError",
    "InvalidValueError",
    "MissingModelError",
    "ModelCache",
    "ModelRef",
    "ModelState",
    "ModelStore",
    "NotFoundError",
    "PlanNotFoundError",
    "PlanRoi",
    "PlanWarning",
    "Revision",
    "SavedModel",
    "StoreError",
    "StoredPlan",
    "base_name",
    "model_key",
    "parse_base_name",
    "part_id",
    "recipe_id",
]
