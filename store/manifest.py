"""What is stored, per recipe / role / ROI, and whether it is ready for inference.

Everything here is read from small files (version pointers, calibration JSON, folder
listings); no memory bank is loaded.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from store import atomic, legacy, models, naming, recipes
from store.errors import InvalidIdError, StoreError

if TYPE_CHECKING:
    from store.naming import ModelRef
    from store.store import ModelStore


@dataclass(frozen=True)
class ModelState:
    recipe_id: str
    role_id: str
    roi_id: str
    model_key: str
    base_name: str
    source: str | None  # "recipe", "recipe_unversioned", "legacy_flat", "legacy_dir"; None
    has_memory: bool
    has_index: bool
    has_calibration: bool
    threshold: float | None
    version: str | None  # model content hash, as named by verdicts
    calibration_version: str | None  # the threshold's content hash, as named by verdicts
    revision: str | None  # stored-files hash (recipe layout only)
    mm_per_px: float | None  # the recipe's locked value
    dataset: dict[str, int] = field(default_factory=dict)
    error: str | None = None
    # how the threshold was set: "conformal", "ok_percentile" (legacy) or "ok_ng"; for a
    # conformal one, its false-reject rate and whether enough held-out images guarantee it
    threshold_method: str | None = None
    target_frr: float | None = None
    frr_guaranteed: bool | None = None
    n_held_out: int | None = None  # the held-out OK scores behind it (n in THRESHOLDS.md)

    @property
    def ready(self) -> bool:
        """Inference can give OK / NG: a readable memory bank and a threshold."""
        return self.has_memory and self.threshold is not None and self.error is None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ready": self.ready}


def model_state(store: ModelStore, ref: ModelRef) -> ModelState:
    error = None
    try:
        loc = store.locate(ref)
    except StoreError as exc:
        loc, error = None, str(exc)
    files = loc.files if loc else {}
    calib = files.get(models.CALIB)
    threshold, method, calibration_version = models.calibration_facts(calib)
    if calib is not None and threshold is None and error is None:
        error = f"unreadable calibration {calib}"
    version = None
    if loc is not None:
        version = loc.version or models.npz_version(files[models.NPZ])
    return ModelState(
        **ref.ids(),
        base_name=ref.base_name,
        source=loc.source if loc else None,
        has_memory=models.NPZ in files,
        has_index=models.INDEX in files,
        has_calibration=calib is not None,
        threshold=threshold,
        version=version,
        calibration_version=calibration_version,
        revision=loc.revision if loc else None,
        mm_per_px=recipes.locked_mm(store.recipe_dir(ref.recipe_id)),
        dataset=store.datasets.counts(ref),
        error=error,
        threshold_method=method,
        **_conformal_facts(calib if method == "conformal" else None),
    )


def _conformal_facts(calib: Path | None) -> dict[str, Any]:
    """``target_frr``, ``frr_guaranteed`` and ``n_held_out`` of a conformal calibration
    file."""
    if calib is None:
        return {}
    try:
        record = atomic.read_json(calib)["conformal"]
        alpha, guaranteed = float(record["alpha"]), bool(record["guaranteed"])
        n = int(record["n"])
        return {"target_frr": alpha, "frr_guaranteed": guaranteed, "n_held_out": n}
    except (OSError, ValueError, KeyError, TypeError):
        return {}  # no record (or an unreadable one): the threshold's facts say enough


def _subdirs(path: Path) -> list[Path]:
    try:
        with os.scandir(path) as it:
            return sorted(Path(e.path) for e in it if e.is_dir() and not e.name.startswith("."))
    except FileNotFoundError:
        return []


def _stored_bases(key_dir: Path) -> set[str]:
    bases = set()
    for name in os.listdir(key_dir):
        for suffix in (models.POINTER, models.NPZ):
            if name.endswith(suffix) and not name.startswith("."):
                bases.add(name[: -len(suffix)])
    return bases


def recipe_entries(store: ModelStore, rid: str) -> list[tuple[str, str, str]]:
    """``(role, roi, model_key)`` of every model or dataset stored under one recipe."""
    rdir = store.recipe_dir(rid)
    found: dict[tuple[str, str, str], None] = {}
    for key_dir in _subdirs(rdir):
        if key_dir.name.lower() in naming.RESERVED_KEYS:
            continue
        for base in sorted(_stored_bases(key_dir)):
            try:
                role, roi = naming.parse_base_name(base)
            except InvalidIdError:
                continue
            if naming.model_key(key_dir.name, roi) == key_dir.name:
                found[(role, roi, key_dir.name)] = None
    with_models = {(role, roi) for role, roi, _ in found}
    for ds in _subdirs(rdir / "datasets"):
        try:
            role, roi = naming.parse_base_name(ds.name)
        except InvalidIdError:
            continue
        if (role, roi) not in with_models:
            found[(role, roi, naming.model_key(None, roi))] = None
    return sorted(found)


def build(store: ModelStore, recipe: str | None = None) -> dict[str, Any]:
    """``{"root", "recipes": [{recipe_id, mm_per_px, models: [state...]}], "legacy"}``."""
    out: dict[str, Any] = {"root": str(store.root), "recipes": []}
    for rid in [recipe] if recipe else store.recipes():
        entries = [
            model_state(store, store.ref(rid, role, roi, key)).to_dict()
            for role, roi, key in recipe_entries(store, rid)
        ]
        out["recipes"].append(
            {"recipe_id": rid, "mm_per_px": store.recipe_mm_per_px(rid), "models": entries}
        )
    if store.use_legacy:
        out["legacy"] = {
            "models": legacy.list_models(store.root),
            "datasets": legacy.list_datasets(store.root),
        }
    return out
