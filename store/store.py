"""The model store facade both front doors use (REST workers, Kafka consumers, the CLI).

Ids are checked once, by :meth:`ModelStore.ref`; every method that names a model takes
the resulting :class:`~store.naming.ModelRef`. Datasets are reached through
``store.datasets`` (:class:`~store.datasets.Datasets`), which takes the same refs.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from store import atomic, history, legacy, manifest, models, naming, plans, recipes, retention
from store.cache import MAX_ENTRIES, MB, ModelCache, default_budget_mb
from store.datasets import Datasets
from store.errors import CorruptModelError, InvalidIdError, MissingModelError, PlanNotFoundError
from store.locks import FileLocks
from store.naming import ModelRef
from store.plans import InspectionPlan, PlanRoi, PlanWarning, StoredPlan

if TYPE_CHECKING:
    from configs.settings import Settings
    from engine.calibration import Calibration
    from engine.patchcore import PatchCoreModel


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
    ignores the original backend's layouts; ``verify`` checks sha256 of files on load;
    ``revisions_kept`` (default ``settings.model_revisions_kept``) revisions of each model
    are kept, at least 2. The per-worker model cache keeps at most ``cache_max_entries``
    models of at most ``cache_max_mb`` resident MB (default: the settings'; 0 MB: a share
    of the available memory, :func:`store.cache.default_budget_mb`).
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        root: Path | str | None = None,
        cache_max_entries: int | None = None,
        cache_max_mb: float | None = None,
        use_gpu: bool = False,
        legacy: bool = True,
        verify: bool = True,
        revisions_kept: int | None = None,
    ) -> None:
        if root is None:
            if settings is None:
                raise ValueError("ModelStore needs settings or a root folder")
            root = settings.models_dir
        self.root = Path(root)
        entries = cache_max_entries or (settings.cache_max_entries if settings else MAX_ENTRIES)
        self.nprobe = settings.knn_ivf_nprobe if settings else 8
        self.use_gpu = use_gpu
        self.use_legacy = legacy
        self.verify = verify
        if revisions_kept is None:
            default = retention.REVISIONS_KEPT
            revisions_kept = settings.model_revisions_kept if settings else default
        self.revisions_kept = retention.check_kept(revisions_kept)
        max_mb = cache_max_mb or (settings.cache_max_mb if settings else 0.0)
        budget = int((max_mb or default_budget_mb()) * MB)
        self.cache: ModelCache[PatchCoreModel] = ModelCache(
            entries, budget, _resident_bytes, label=_model_name
        )
        self._locks = FileLocks()
        max_pixels = settings.max_image_pixels if settings else 40_000_000
        self.datasets = Datasets(self.root, self.lock, max_pixels, legacy)

    # --- ids and locks ---------------------------------------------------------------------
    def ref(
        self, recipe: str | None, role: str, roi: str, model_key: str | None = None
    ) -> ModelRef:
        """Validate ids (:class:`InvalidIdError`) and name the model's folder."""
        return naming.model_ref(self.root, recipe, role, roi, model_key)

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
        """The locked value (``None``: not locked yet); :class:`ConflictError` if ``value``
        differs. Call before training to fail fast; saving checks again."""
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
    def save_model(self, ref: ModelRef, model: PatchCoreModel) -> SavedModel:
        """Store ``model`` as the new current version (atomically); locks ``mm_per_px``."""
        from engine.artifact import to_bytes

        return self.save_artifacts(
            ref, to_bytes(model), version=model.version, mm_per_px=model.meta.mm_per_px
        )

    def save_artifacts(
        self, ref: ModelRef, files: dict[str, bytes], *, version: str, mm_per_px: float | None
    ) -> SavedModel:
        """Store serialised model files ``{suffix: bytes}`` (``engine.artifact.to_bytes``)."""
        with self.lock(ref.recipe_id):
            mm = recipes.lock_mm(ref.recipe_id, self.recipe_dir(ref.recipe_id), mm_per_px)
            info = {
                **ref.ids(),
                "version": version,
                "mm_per_px": recipes.checked_mm(mm_per_px),
            }
            atomic.ensure_dir(ref.directory)
            atomic.sweep(self.recipe_dir(ref.recipe_id))
            ptr = models.write_model(ref.directory, ref.base_name, files, info, self.revisions_kept)
        self.cache.invalidate(ref.cache_key)
        vdir = models.versions_dir(ref.directory, ref.base_name) / ptr["revision"]
        paths = {s: vdir / f"{ref.base_name}{s}" for s in files}
        return SavedModel(ref, version, ptr["revision"], mm, paths)

    def save_calibration(self, ref: ModelRef, calibration: Calibration) -> SavedModel:
        """Replace the calibration of the stored model (bank and index are re-linked, not
        rewritten). A legacy model is copied into the recipe layout on the way."""
        with self.lock(ref.recipe_id):
            model = self._load_with_stamp(ref)[1]
            model.calibration = calibration
            return self.save_model(ref, model)

    def rollback(self, ref: ModelRef, revision: str) -> SavedModel:
        """Make a stored revision (:meth:`revisions`) the current one again, atomically and
        under the recipe lock; :class:`NotFoundError` for a revision the store lacks."""
        with self.lock(ref.recipe_id):
            target = history.find(ref, revision)
            files = history.read(ref, target)
            try:
                version, meta = models.npz_facts(files[models.NPZ])
            except ValueError as exc:
                raise CorruptModelError(f"revision {revision}: {exc}") from None
            version = target.version or version
            if not version:
                raise CorruptModelError(f"revision {revision} does not name its version")
            mm = (meta or {}).get("mm_per_px")
            return self.save_artifacts(ref, files, version=version, mm_per_px=mm)

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
                for plan_dir in (plans.plan_dir(rdir), plans.plan_dir(rdir) / plans.VERSIONS):
                    atomic.sweep(plan_dir)

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

    def _load_with_stamp(self, ref: ModelRef) -> tuple[models.Stamp, PatchCoreModel]:
        for _ in range(models.READ_ATTEMPTS):
            stamp = self.stamp(ref)
            loc = self.locate(ref)
            if loc is None:
                raise MissingModelError(f"no model stored for {ref.describe()}")
            try:
                return stamp, models.load_location(loc, self.nprobe, self.use_gpu, self.verify)
            except (FileNotFoundError, CorruptModelError):
                if self.stamp(ref) == stamp:  # nothing was written meanwhile: real damage
                    raise
        raise CorruptModelError(f"model {ref.base_name} kept changing while loading")

    def load_model(self, ref: ModelRef) -> PatchCoreModel:
        """The current model, from this worker's cache while its files have not changed.
        :class:`MissingModelError` when none is stored."""
        return self.cache.get(
            ref.cache_key, lambda: self.stamp(ref), lambda: self._load_with_stamp(ref)
        )

    def find_model(self, ref: ModelRef) -> PatchCoreModel | None:
        """Like :meth:`load_model`, ``None`` when no model is stored (a NO_MODEL verdict)."""
        try:
            return self.load_model(ref)
        except MissingModelError:
            return None

    def model_version(self, ref: ModelRef) -> str | None:
        """The stored model's content hash without loading it (``None``: no model)."""
        loc = self.locate(ref)
        if loc is None:
            return None
        return loc.version or models.npz_version(loc.files[models.NPZ])

    # --- history, manifest and state -------------------------------------------------------
    def revisions(self, ref: ModelRef) -> list[history.Revision]:
        """Every stored revision of the model, the current one first (no model is loaded)."""
        return history.revisions(ref)

    def state(self, ref: ModelRef) -> manifest.ModelState:
        return manifest.model_state(self, ref)

    def manifest(self, recipe: str | None = None) -> dict[str, Any]:
        return manifest.build(self, None if recipe is None else naming.recipe_id(recipe))

    # --- inspection plans (store/plans.py) -------------------------------------------------
    def save_plan(
        self,
        recipe: str | None,
        rois: Iterable[PlanRoi],
        deadline_ms: int = plans.DEFAULT_DEADLINE_MS,
    ) -> StoredPlan:
        """Validate and store the recipe's inspection plan (atomically, under the recipe
        lock) as its current one; the same content keeps its version."""
        plan = plans.make_plan(recipe, rois, deadline_ms)
        with self.lock(plan.recipe_id):
            return plans.write_plan(self.recipe_dir(plan.recipe_id), plan)

    def stored_plan(self, recipe: str | None, version: str | None = None) -> StoredPlan:
        """The current plan (or that ``version`` of it) with when it was stored;
        :class:`PlanNotFoundError` when there is none."""
        rid = naming.recipe_id(recipe)
        return plans.read_plan(self.recipe_dir(rid), rid, version)

    def read_plan(self, recipe: str | None, version: str | None = None) -> InspectionPlan:
        """The current plan, or the stored ``version`` a part record names."""
        return self.stored_plan(recipe, version).plan

    def find_plan(self, recipe: str | None) -> InspectionPlan | None:
        """Like :meth:`read_plan`, ``None`` when the recipe has no plan."""
        try:
            return self.read_plan(recipe)
        except PlanNotFoundError:
            return None

    def plan_stamp(self, recipe: str | None) -> models.Stamp:
        """Cheap change detector of the recipe's current plan (the pointer's stat)."""
        return models.stat_stamp(plans.plan_dir(self.recipe_dir(recipe)) / plans.POINTER)

    def plan_versions(self, recipe: str | None) -> list[StoredPlan]:
        """Every stored version of the recipe's plan, newest first."""
        rid = naming.recipe_id(recipe)
        return plans.list_plans(self.recipe_dir(rid), rid)

    def plan_warnings(self, plan: InspectionPlan) -> list[PlanWarning]:
        """The plan's ROIs whose frames cannot be judged OK/NG yet (no model, no threshold)."""
        return plans.model_warnings(self, plan)


def _resident_bytes(model: PatchCoreModel) -> int:
    from engine.footprint import resident_bytes

    return resident_bytes(model)


def _model_name(key: object) -> str:
    """``"recipe/role/roi"`` of a cache key (:attr:`ModelRef.cache_key`)."""
    if not isinstance(key, tuple) or len(key) != 3:
        return str(key)
    try:
        return "/".join((key[0], *naming.parse_base_name(key[2])))
    except InvalidIdError:
        return "/".join(map(str, key))
