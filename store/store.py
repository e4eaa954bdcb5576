"""The model store facade both front doors use (REST workers, Kafka consumers, the CLI)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from store import atomic, legacy, manifest, models, naming, recipes
from store.cache import ModelCache
from store.datasets import DatasetImage, Datasets
from store.errors import CorruptModelError, InvalidIdError, MissingModelError
from store.locks import FileLocks

if TYPE_CHECKING:
    from configs.settings import Settings
    from engine.calibration import Calibration
    from engine.patchcore import PatchCoreModel


@dataclass(frozen=True)
class ModelRef:
    """Validated, canonical ids of one model and where its recipe-layout files live."""

    recipe_id: str
    role_id: str
    roi_id: str
    model_key: str
    base_name: str
    directory: Path

    @property
    def cache_key(self) -> tuple[str, str, str]:
        return (self.recipe_id, self.model_key, self.base_name)


@dataclass(frozen=True)
class SavedModel:
    ref: ModelRef
    version: str  # the model's content hash (bank + metadata): what verdicts name
    revision: str  # hash of the stored files (changes on recalibration too)
    mm_per_px: float | None
    files: dict[str, Path]


class ModelStore:
    """Models and datasets under ``settings.models_dir``; see ``docs/STORE.md``.

    ``use_gpu`` puts loaded kNN indexes on the GPU (where faiss has one); ``legacy=False``
    ignores the original backend's layouts; ``verify`` checks sha256 of files on load.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        root: Path | str | None = None,
        cache_max_entries: int | None = None,
        use_gpu: bool = False,
        legacy: bool = True,
        verify: bool = True,
    ) -> None:
        if root is None:
            if settings is None:
                raise ValueError("ModelStore needs settings or a root folder")
            root = settings.models_dir
        self.root = Path(root)
        entries = cache_max_entries or (settings.cache_max_entries if settings else 16)
        self.nprobe = settings.knn_ivf_nprobe if settings else 8
        self.use_gpu = use_gpu
        self.use_legacy = legacy
        self.verify = verify
        self.cache: ModelCache[PatchCoreModel] = ModelCache(entries)
        self._locks = FileLocks()
        max_pixels = settings.max_image_pixels if settings else 40_000_000
        self.datasets = Datasets(self.root, self.lock, max_pixels, legacy)

    # --- ids and locks ---------------------------------------------------------------------
    def ref(
        self, recipe: str | None, role: str, roi: str, model_key: str | None = None
    ) -> ModelRef:
        """Validate ids (:class:`InvalidIdError`, HTTP 400) and name the model's folder."""
        rid = naming.recipe_id(recipe)
        base = naming.base_name(role, roi)
        key = naming.model_key(model_key, roi)
        directory = naming.confined(self.root, "recipes", rid, key)
        return ModelRef(rid, role, roi, key, base, directory)

    def recipe_dir(self, recipe: str | None) -> Path:
        return naming.confined(self.root, "recipes", naming.recipe_id(recipe))

    @contextmanager
    def lock(self, recipe: str | None) -> Iterator[None]:
        """The recipe's write lock (threads and processes)."""
        with self._locks.hold(self.recipe_dir(recipe) / recipes.LOCK_FILE):
            yield

    # --- recipes ---------------------------------------------------------------------------
    def recipe_mm_per_px(self, recipe: str | None) -> float | None:
        return recipes.locked_mm(self.recipe_dir(recipe))

    def check_mm_per_px(self, recipe: str | None, value: float | None) -> float | None:
        """The locked value (``None``: not locked yet); :class:`ConflictError` (409) if
        ``value`` differs. Call before training to fail fast; saving checks again."""
        rid = naming.recipe_id(recipe)
        return recipes.check_mm(rid, self.recipe_dir(rid), value)

    def recipes(self) -> list[str]:
        base = self.root / "recipes"
        if not base.is_dir():
            return []
        out = []
        for p in base.iterdir():
            try:
                if p.is_dir() and naming.recipe_id(p.name) == p.name:
                    out.append(p.name)
            except InvalidIdError:
                continue
        return sorted(out)

    # --- models: writes --------------------------------------------------------------------
    def save_model(
        self,
        recipe: str | None,
        role: str,
        roi: str,
        model: PatchCoreModel,
        model_key: str | None = None,
    ) -> SavedModel:
        """Store ``model`` as the new current version (atomically); locks ``mm_per_px``."""
        from engine.artifact import to_bytes

        return self.save_artifacts(
            recipe,
            role,
            roi,
            to_bytes(model),
            version=model.version,
            mm_per_px=model.meta.mm_per_px,
            model_key=model_key,
        )

    def save_artifacts(
        self,
        recipe: str | None,
        role: str,
        roi: str,
        files: dict[str, bytes],
        *,
        version: str,
        mm_per_px: float | None,
        model_key: str | None = None,
    ) -> SavedModel:
        """Store serialised model files ``{suffix: bytes}`` (``engine.artifact.to_bytes``)."""
        ref = self.ref(recipe, role, roi, model_key)
        with self.lock(ref.recipe_id):
            mm = recipes.lock_mm(ref.recipe_id, self.recipe_dir(ref.recipe_id), mm_per_px)
            info = {
                "recipe_id": ref.recipe_id,
                "role_id": role,
                "roi_id": roi,
                "model_key": ref.model_key,
                "version": version,
                "mm_per_px": recipes.checked_mm(mm_per_px),
            }
            atomic.ensure_dir(ref.directory)
            atomic.sweep(self.recipe_dir(ref.recipe_id))
            ptr = models.write_model(ref.directory, ref.base_name, files, info)
        self.cache.invalidate(ref.cache_key)
        vdir = models.versions_dir(ref.directory, ref.base_name) / ptr["revision"]
        paths = {s: vdir / f"{ref.base_name}{s}" for s in files}
        return SavedModel(ref, version, ptr["revision"], mm, paths)

    def save_calibration(
        self,
        recipe: str | None,
        role: str,
        roi: str,
        calibration: Calibration,
        model_key: str | None = None,
    ) -> SavedModel:
        """Replace the calibration of the stored model (bank and index are re-linked, not
        rewritten). A legacy model is copied into the recipe layout on the way."""
        ref = self.ref(recipe, role, roi, model_key)
        with self.lock(ref.recipe_id):
            model = self._load_fresh(ref)
            model.calibration = calibration
            return self.save_model(recipe, role, roi, model, model_key)

    def sweep(self, recipe: str | None = None) -> None:
        """Remove temp files of killed writers and re-link top-level files (start-up)."""
        for rid in [naming.recipe_id(recipe)] if recipe else self.recipes():
            with self.lock(rid):
                rdir = self.recipe_dir(rid)
                atomic.sweep(rdir)
                for key_dir in (
                    p for p in rdir.iterdir() if p.is_dir() and not p.name.startswith(".")
                ):
                    atomic.sweep(key_dir)
                    for ptr in key_dir.glob(f"*{models.POINTER}"):
                        models.repair(key_dir, ptr.name[: -len(models.POINTER)])
                # dataset folders hold the temp names of clear() (a label folder renamed
                # before removal), label folders those of image writes
                for ds_dir in (p for p in (rdir / "datasets").glob("*") if p.is_dir()):
                    atomic.sweep(ds_dir)
                for label_dir in (rdir / "datasets").glob("*/*"):
                    atomic.sweep(label_dir)

    # --- models: reads ---------------------------------------------------------------------
    def _candidates(self, ref: ModelRef) -> list[Path]:
        plain = [ref.directory / f"{ref.base_name}{s}" for s in models.SUFFIXES]
        if self.use_legacy:
            plain += legacy.candidate_paths(self.root, ref.role_id, ref.roi_id)
        return plain

    def stamp(self, ref: ModelRef) -> models.Stamp:
        """Cheap change detector: the pointer's stat, or the stats of the plain files."""
        pointer = models.stat_stamp(models.pointer_path(ref.directory, ref.base_name))
        if pointer[0] is not None:
            return pointer
        return pointer + models.stat_stamp(*self._candidates(ref))

    def locate(self, ref: ModelRef) -> models.ModelLocation | None:
        """Where the current model's files are: recipe layout, then the legacy ones."""
        loc = models.locate_versioned(ref.directory, ref.base_name)
        if loc is None:
            names = {s: f"{ref.base_name}{s}" for s in models.SUFFIXES}
            loc = models.locate_plain(ref.directory, names, "recipe_unversioned")
        if loc is None and self.use_legacy:
            loc = legacy.locate_model(self.root, ref.role_id, ref.roi_id)
        return loc

    def _load_fresh(self, ref: ModelRef) -> PatchCoreModel:
        return self._load_with_stamp(ref)[1]

    def _load_with_stamp(self, ref: ModelRef) -> tuple[models.Stamp, PatchCoreModel]:
        for _ in range(models.READ_ATTEMPTS):
            stamp = self.stamp(ref)
            loc = self.locate(ref)
            if loc is None:
                raise MissingModelError(
                    f"no model stored for recipe {ref.recipe_id!r}, role {ref.role_id!r}, "
                    f"roi {ref.roi_id!r} (model key {ref.model_key!r})"
                )
            try:
                return stamp, models.load_location(loc, self.nprobe, self.use_gpu, self.verify)
            except (FileNotFoundError, CorruptModelError):
                if self.stamp(ref) == stamp:  # nothing was written meanwhile: real damage
                    raise
        raise CorruptModelError(f"model {ref.base_name} kept changing while loading")

    def load_model(
        self, recipe: str | None, role: str, roi: str, model_key: str | None = None
    ) -> PatchCoreModel:
        """The current model, from this worker's cache while its files have not changed.
        :class:`MissingModelError` (HTTP 400) when none is stored."""
        ref = self.ref(recipe, role, roi, model_key)
        return self.cache.get(
            ref.cache_key, lambda: self.stamp(ref), lambda: self._load_with_stamp(ref)
        )

    def find_model(
        self, recipe: str | None, role: str, roi: str, model_key: str | None = None
    ) -> PatchCoreModel | None:
        """Like :meth:`load_model`, ``None`` when no model is stored (a NO_MODEL verdict)."""
        try:
            return self.load_model(recipe, role, roi, model_key)
        except MissingModelError:
            return None

    def model_version(
        self, recipe: str | None, role: str, roi: str, model_key: str | None = None
    ) -> str | None:
        """The stored model's content hash without loading it (``None``: no model)."""
        loc = self.locate(self.ref(recipe, role, roi, model_key))
        if loc is None:
            return None
        return loc.version or models.npz_version(loc.files[models.NPZ])

    # --- datasets --------------------------------------------------------------------------
    def add_image(
        self,
        recipe: str | None,
        role: str,
        roi: str,
        label: str,
        image: np.ndarray | bytes,
        *,
        source: str | None = None,
        mm_per_px: float | None = None,
        extra: dict[str, Any] | None = None,
    ) -> DatasetImage:
        """Store one image under a generated name (re-encoded PNG + JSON sidecar).
        ``source`` (e.g. the upload's file name) is metadata only; a ``mm_per_px`` other
        than the recipe's locked one is a :class:`ConflictError` (409)."""
        return self.datasets.add(
            recipe, role, roi, label, image, source=source, mm_per_px=mm_per_px, extra=extra
        )

    def list_images(
        self,
        recipe: str | None,
        role: str,
        roi: str,
        label: str | None = None,
        with_meta: bool = False,
    ) -> dict[str, list[DatasetImage]]:
        """``{"ok": [...], "ng": [...]}`` in name (= time) order, legacy images flagged."""
        return self.datasets.list_images(recipe, role, roi, label, with_meta)

    def read_image(self, recipe: str | None, role: str, roi: str, label: str, name: str) -> bytes:
        return self.datasets.read(recipe, role, roi, label, name)

    def delete_image(self, recipe: str | None, role: str, roi: str, label: str, name: str) -> None:
        self.datasets.delete(recipe, role, roi, label, name)

    def clear(
        self,
        recipe: str | None,
        role: str,
        roi: str,
        label: str | None = None,
        include_legacy: bool = False,
    ) -> int:
        """Remove a label's images (or both labels'); returns how many were removed."""
        return self.datasets.clear(recipe, role, roi, label, include_legacy)

    def dataset_counts(self, recipe: str | None, role: str, roi: str) -> dict[str, int]:
        return self.datasets.counts(recipe, role, roi)

    # --- manifest and state ----------------------------------------------------------------
    def state(
        self, recipe: str | None, role: str, roi: str, model_key: str | None = None
    ) -> manifest.ModelState:
        return manifest.model_state(self, self.ref(recipe, role, roi, model_key))

    def manifest(self, recipe: str | None = None) -> dict[str, Any]:
        return manifest.build(self, None if recipe is None else naming.recipe_id(recipe))
