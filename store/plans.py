"""Inspection plans: which (role, ROI) frames make up one part of a recipe.

The types below are the plan's one definition; the part aggregator
(``consumers/parts.py``) and the REST API read plans through them.

A recipe's plans live in ``recipes/<recipe_id>/.plan/`` (a hidden name: every visible name
in a recipe folder may be a model key)::

    versions/<version>.json   one immutable file per plan version ever stored
    current.json              the pointer naming the current version, written last

``version`` is a content hash (16 hex digits), so storing the same plan again keeps it,
and a part record's ``plan_version`` can always be read back (:func:`read_plan`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from store import atomic, models, naming
from store.errors import CorruptPlanError, InvalidPlanError, PlanNotFoundError, StoreError

if TYPE_CHECKING:
    from store.store import ModelStore

DEFAULT_DEADLINE_MS = 5000
MAX_DEADLINE_MS = 3_600_000  # one hour: a part not complete by then is INCOMPLETE
MAX_ROIS = 1000
PLAN_DIR = ".plan"
VERSIONS = "versions"
POINTER = "current.json"
FORMAT = 1
_VERSION_RE = re.compile(r"[0-9a-f]{16}")


@dataclass(frozen=True)
class PlanRoi:
    """One frame a part is made of."""

    role_id: str
    roi_id: str
    required: bool = True


@dataclass(frozen=True)
class InspectionPlan:
    """The frames of one part of ``recipe_id``; ``version`` names this content (a stored
    plan's version changes whenever its content does)."""

    recipe_id: str
    version: str
    rois: tuple[PlanRoi, ...]
    deadline_ms: int = DEFAULT_DEADLINE_MS

    def roi(self, role_id: str, roi_id: str) -> PlanRoi | None:
        for r in self.rois:
            if (r.role_id, r.roi_id) == (role_id, roi_id):
                return r
        return None

    @property
    def required(self) -> tuple[tuple[str, str], ...]:
        return tuple((r.role_id, r.roi_id) for r in self.rois if r.required)


# --- validation ------------------------------------------------------------------------------
def make_plan(
    recipe: str | None, rois: Iterable[PlanRoi], deadline_ms: int = DEFAULT_DEADLINE_MS
) -> InspectionPlan:
    """A validated plan with its content version. :class:`InvalidIdError` for a bad recipe,
    role or ROI id; :class:`InvalidPlanError` for no ROI, a ROI named twice, too many ROIs,
    or a deadline that is not a whole number of milliseconds in ``1..MAX_DEADLINE_MS``."""
    rid = naming.recipe_id(recipe)
    items = tuple(rois)
    if not items:
        raise InvalidPlanError("an inspection plan needs at least one ROI")
    if len(items) > MAX_ROIS:
        raise InvalidPlanError(f"an inspection plan has at most {MAX_ROIS} ROIs, not {len(items)}")
    seen: set[tuple[str, str]] = set()
    for i, roi in enumerate(items):
        if not isinstance(roi, PlanRoi):
            raise InvalidPlanError(f"rois[{i}] is not a plan ROI")
        ids = (naming.part_id(roi.role_id, "role_id"), naming.part_id(roi.roi_id, "roi_id"))
        if not isinstance(roi.required, bool):
            raise InvalidPlanError(f"rois[{i}].required must be true or false")
        if ids in seen:
            raise InvalidPlanError(f"role {ids[0]!r}, ROI {ids[1]!r} is named twice in the plan")
        seen.add(ids)
    deadline = _deadline(deadline_ms)
    return InspectionPlan(rid, _version(items, deadline), items, deadline)


def _deadline(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidPlanError(f"deadline_ms must be a whole number of milliseconds, not {value!r}")
    if not 1 <= value <= MAX_DEADLINE_MS:
        raise InvalidPlanError(
            f"deadline_ms must be between 1 and {MAX_DEADLINE_MS} (one hour), not {value}"
        )
    return value


def _content(rois: tuple[PlanRoi, ...], deadline_ms: int) -> dict[str, Any]:
    return {"rois": [asdict(r) for r in rois], "deadline_ms": deadline_ms}


def _version(rois: tuple[PlanRoi, ...], deadline_ms: int) -> str:
    """The content hash: the same ROIs (in the same order) and deadline, the same version."""
    return hashlib.sha256(atomic.dumps(_content(rois, deadline_ms))).hexdigest()[:16]


def plan_from_json(recipe: str | None, data: object) -> InspectionPlan:
    """A validated plan from its JSON form ``{"rois": [{"role_id", "roi_id", "required"}],
    "deadline_ms"}`` (``required`` default true, ``deadline_ms`` default 5000)."""
    if not isinstance(data, dict):
        raise InvalidPlanError('a plan is a JSON object: {"rois": [...], "deadline_ms": ...}')
    _only(data, {"rois", "deadline_ms"}, "the plan")
    rois = data.get("rois")
    if not isinstance(rois, list):
        raise InvalidPlanError('the plan needs "rois": a list of {"role_id", "roi_id"}')
    return make_plan(
        recipe,
        [_roi(i, r) for i, r in enumerate(rois)],
        data.get("deadline_ms", DEFAULT_DEADLINE_MS),
    )


def _only(data: dict[str, Any], allowed: set[str], what: str) -> None:
    unknown = sorted(str(k) for k in data if k not in allowed)
    if unknown:
        raise InvalidPlanError(f"{what} has unknown fields: {', '.join(unknown)}")


def _roi(i: int, item: object) -> PlanRoi:
    if not isinstance(item, dict):
        raise InvalidPlanError(f'rois[{i}] must be an object {{"role_id", "roi_id", "required"}}')
    _only(item, {"role_id", "roi_id", "required"}, f"rois[{i}]")
    for key in ("role_id", "roi_id"):
        if not isinstance(item.get(key), str):
            raise InvalidPlanError(f"rois[{i}].{key} must be a string")
    required = item.get("required", True)
    if not isinstance(required, bool):
        raise InvalidPlanError(f"rois[{i}].required must be true or false")
    return PlanRoi(item["role_id"], item["roi_id"], required)


def to_json(plan: InspectionPlan) -> dict[str, Any]:
    """``{"recipe_id", "version", "rois", "deadline_ms"}``: what is stored and answered."""
    content = _content(plan.rois, plan.deadline_ms)
    return {"recipe_id": plan.recipe_id, "version": plan.version, **content}


# --- storage -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class StoredPlan:
    """A plan as stored: ``created_at`` is when its version was first stored (seconds since
    the epoch); ``current`` whether it is the recipe's plan now."""

    plan: InspectionPlan
    created_at: float
    current: bool

    def to_dict(self) -> dict[str, Any]:
        return {**to_json(self.plan), "created_at": self.created_at, "current": self.current}


def plan_dir(recipe_dir: Path) -> Path:
    return recipe_dir / PLAN_DIR


def _version_path(recipe_dir: Path, version: str) -> Path:
    return plan_dir(recipe_dir) / VERSIONS / f"{version}.json"


def write_plan(recipe_dir: Path, plan: InspectionPlan) -> StoredPlan:
    """Store ``plan`` as the recipe's current plan; the caller holds the recipe lock.

    The version file is written first (once: a version's content never changes), the
    pointer last -- the commit point. Storing the current plan again changes nothing.
    """
    versions = plan_dir(recipe_dir) / VERSIONS
    atomic.ensure_dir(versions)
    atomic.sweep(plan_dir(recipe_dir))
    atomic.sweep(versions)
    try:
        stored = _read_version(recipe_dir, plan.recipe_id, plan.version)
    except (PlanNotFoundError, CorruptPlanError):  # absent, or damaged by hand: (re)write
        record = {"format": FORMAT, **to_json(plan), "created_at": time.time()}
        atomic.write_json(_version_path(recipe_dir, plan.version), record)
        stored = _read_version(recipe_dir, plan.recipe_id, plan.version)
    try:
        pointed = _pointed(recipe_dir)
    except CorruptPlanError:  # a damaged pointer is replaced, not kept
        pointed = None
    if pointed != plan.version:
        pointer = {"format": FORMAT, "recipe_id": plan.recipe_id, "version": plan.version}
        atomic.write_json(plan_dir(recipe_dir) / POINTER, {**pointer, "updated_at": time.time()})
    return dataclasses.replace(stored, current=True)


def _pointed(recipe_dir: Path) -> str | None:
    path = plan_dir(recipe_dir) / POINTER
    try:
        data = atomic.read_json(path)
    except ValueError as exc:
        raise CorruptPlanError(f"unreadable plan pointer {path}: {exc}") from exc
    if data is None:
        return None
    version = data.get("version") if isinstance(data, dict) else None
    if not isinstance(version, str) or not _VERSION_RE.fullmatch(version):
        raise CorruptPlanError(f"{path} does not name a plan version")
    return version


def read_plan(recipe_dir: Path, recipe_id: str, version: str | None = None) -> StoredPlan:
    """The current plan, or the stored ``version`` of it. :class:`PlanNotFoundError` when
    there is none; :class:`CorruptPlanError` when the files disagree with their version."""
    current = _pointed(recipe_dir)
    if version is None:
        if current is None:
            raise PlanNotFoundError(f"no inspection plan stored for recipe {recipe_id!r}")
        version = current
    stored = _read_version(recipe_dir, recipe_id, version)
    return dataclasses.replace(stored, current=version == current)


def list_plans(recipe_dir: Path, recipe_id: str) -> list[StoredPlan]:
    """Every stored version of the recipe's plan, newest first."""
    current = _pointed(recipe_dir)
    try:
        names = os.listdir(plan_dir(recipe_dir) / VERSIONS)
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        version = name.removesuffix(".json")
        if name.endswith(".json") and _VERSION_RE.fullmatch(version):
            stored = _read_version(recipe_dir, recipe_id, version)
            found.append(dataclasses.replace(stored, current=version == current))
    return sorted(found, key=lambda s: (s.created_at, s.plan.version), reverse=True)


def _read_version(recipe_dir: Path, recipe_id: str, version: str) -> StoredPlan:
    # a client's version string is checked against the pattern before it names a file
    if not isinstance(version, str) or not _VERSION_RE.fullmatch(version):
        raise PlanNotFoundError(f"no plan version {version!r} for recipe {recipe_id!r}")
    path = _version_path(recipe_dir, version)
    try:
        data = atomic.read_json(path)
    except ValueError as exc:
        raise CorruptPlanError(f"unreadable plan {path}: {exc}") from exc
    if data is None:
        raise PlanNotFoundError(f"no plan version {version!r} for recipe {recipe_id!r}")
    try:
        plan = plan_from_json(recipe_id, {k: data[k] for k in ("rois", "deadline_ms")})
        created_at = float(data["created_at"])
    except (StoreError, KeyError, TypeError, ValueError) as exc:
        raise CorruptPlanError(f"unreadable plan {path}: {exc}") from exc
    if plan.version != version or data.get("recipe_id") != recipe_id:
        raise CorruptPlanError(f"{path} does not hold plan version {version} of {recipe_id!r}")
    return StoredPlan(plan, created_at, current=False)


# --- what the store's models say about a plan --------------------------------------------------
@dataclass(frozen=True)
class PlanWarning:
    """A ROI of a plan whose frames cannot be judged OK or NG yet: ``reason`` is
    ``no_model`` (nothing stored), ``no_threshold`` or ``unreadable``; either way its
    frames get ``NO_MODEL`` or ``ERROR`` verdicts, and its part cannot be OK."""

    role_id: str
    roi_id: str
    reason: str
    detail: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def model_warnings(store: ModelStore, plan: InspectionPlan) -> list[PlanWarning]:
    """One warning per ROI of ``plan`` whose model (default model key, as the consumers
    resolve it) is missing, has no threshold or cannot be read."""
    out = []
    for roi in plan.rois:
        what = f"role {roi.role_id!r}, ROI {roi.roi_id!r}"
        ref = store.ref(plan.recipe_id, roi.role_id, roi.roi_id)
        try:
            loc = store.locate(ref)
        except StoreError:
            detail = f"the model of {what} cannot be read"
            out.append(PlanWarning(roi.role_id, roi.roi_id, "unreadable", detail))
            continue
        if loc is None:
            detail = f"no model stored for {what}: its frames get NO_MODEL"
            out.append(PlanWarning(roi.role_id, roi.roi_id, "no_model", detail))
        elif models.calibration_facts(loc.files.get(models.CALIB))[0] is None:
            detail = f"the model of {what} has no threshold: its frames get NO_MODEL"
            out.append(PlanWarning(roi.role_id, roi.roi_id, "no_threshold", detail))
    return out
