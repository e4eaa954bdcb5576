"""Model resolution for batches, with hot reload.

The store re-checks its files (a ``stat`` of the version pointer) on every ``load_model``;
doing that per frame would cost one ``stat`` per frame per model. The resolver asks the
store at most once per ``BDI_MODEL_POLL_S`` per model, so a version saved by the REST API
or by another machine sharing the store is in use within that period, without a restart.

A batch resolves each model exactly once (:meth:`ModelResolver.resolve`), so every frame of
one model in a batch is scored by the same version. Entries are keyed by the *normalised*
ids (recipe ids are case-insensitive): frames naming ``PLATE`` and ``plate`` share one.

Handed the store's :class:`~store.cache.ModelCache`, the resolver holds no model the cache
has evicted (its byte budget, ``BDI_CACHE_MAX_MB``, then bounds the consumer's models): an
evicted model is released after the batch and loaded again when a frame names it. At
start-up :meth:`ModelResolver.preload` loads the models the stream will ask for
(:func:`preload_keys`), within the cache's budget.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from consumers.frames import Failure
from store.errors import InvalidIdError, MissingModelError, StoreError

if TYPE_CHECKING:
    from engine.patchcore import PatchCoreModel
    from store import ModelCache, ModelRef, ModelStore

log = logging.getLogger(__name__)

ModelKey = tuple[str, str, str]  # (recipe_id, role_id, roi_id): as asked, or normalised


class ModelSource(Protocol):
    """What the resolver needs of :class:`store.ModelStore`."""

    def ref(self, recipe: str | None, role: str, roi: str) -> ModelRef: ...

    def load_model(self, ref: ModelRef) -> PatchCoreModel: ...


@dataclass(frozen=True)
class Resolved:
    """The model for a key, or why there is none."""

    model: PatchCoreModel | None
    failure: Failure | None = None


@dataclass
class _Entry:
    resolved: Resolved
    checked_at: float
    cache_key: object = None  # the store cache's key of the model


@dataclass(frozen=True)
class Preloaded:
    """What :meth:`ModelResolver.preload` loaded: ``"recipe/role/roi" -> MB``, the models
    left out because the cache was full, and the seconds it took."""

    sizes_mb: dict[str, float]
    left_out: list[str]
    seconds: float


class ModelResolver:
    """Thread-safe; called from the inference thread."""

    def __init__(
        self,
        source: ModelSource,
        poll_s: float,
        clock: Callable[[], float] = time.monotonic,
        cache: ModelCache[Any] | None = None,
    ) -> None:
        self.source = source
        self.poll_s = poll_s
        self.clock = clock
        self.cache = cache  # the source's cache of loaded models (None: hold every model)
        self._entries: dict[ModelKey, _Entry] = {}
        self._versions: dict[ModelKey, str | None] = {}
        self._lock = threading.Lock()

    def resolve(self, keys: Iterable[ModelKey]) -> dict[ModelKey, Resolved]:
        """One resolution per distinct model: the batch's frames of a model share it, also
        when their headers spell the recipe id differently. Keyed as asked."""
        with self._lock:
            out = {key: self._resolve_key(key) for key in dict.fromkeys(keys)}
            self._release()
            return out

    def preload(
        self,
        keys: Iterable[ModelKey],
        prepare: Callable[[Any], None] | None = None,
    ) -> Preloaded:
        """Load the models of ``keys`` now, in order, while the cache has room for them (a
        load that would evict an earlier one is not made); ``prepare(model)`` builds what
        a first score would. Keys without a model are passed over."""
        t0 = time.perf_counter()
        sizes: dict[str, float] = {}
        left_out: list[str] = []
        largest = 0
        for key in keys:
            name = "/".join(key)
            if self.cache is not None and not self._room_for(len(sizes), largest):
                left_out.append(name)
                continue
            with self._lock:
                resolved = self._resolve_key(key)
                entry = self._entries.get(self._normal(key))
            if resolved.model is None or entry is None:
                continue
            if prepare is not None:
                prepare(resolved.model)
            size = self.cache.nbytes(entry.cache_key) if self.cache is not None else None
            largest = max(largest, size or 0)
            sizes[name] = round((size or 0) / (1024 * 1024), 3)
        return Preloaded(sizes, left_out, time.perf_counter() - t0)

    def _room_for(self, loaded: int, largest: int) -> bool:
        """Whether the cache takes one more model of ``largest`` bytes without evicting."""
        cache = self.cache
        assert cache is not None
        if loaded >= cache.max_entries:
            return False
        return cache.max_bytes is None or cache.resident_bytes + largest <= cache.max_bytes

    def _normal(self, key: ModelKey) -> ModelKey:
        try:
            ref = self.source.ref(*key)
        except InvalidIdError:
            return key
        return (ref.recipe_id, ref.role_id, ref.roi_id)

    def _release(self) -> None:
        """Forget the models the cache no longer holds: it evicted them for room."""
        if self.cache is None:
            return
        for key, entry in list(self._entries.items()):
            model = entry.resolved.model
            if model is not None and not self.cache.holds(entry.cache_key, model):
                del self._entries[key]

    def _resolve_key(self, key: ModelKey) -> Resolved:
        try:
            ref = self.source.ref(*key)
        except InvalidIdError as exc:
            return Resolved(None, Failure.of(exc))
        return self._resolve_one(ref)

    def versions(self) -> dict[str, str | None]:
        """``"recipe/role/roi" -> version`` of every model this consumer has resolved."""
        with self._lock:
            return {"/".join(key): version for key, version in self._versions.items()}

    def _resolve_one(self, ref: ModelRef) -> Resolved:
        key = (ref.recipe_id, ref.role_id, ref.roi_id)
        now = self.clock()
        entry = self._entries.get(key)
        if entry is not None and now - entry.checked_at < self.poll_s and self._held(entry):
            return entry.resolved
        previous = entry.resolved if entry is not None else None
        resolved = self._load(ref, key, previous)
        self._entries[key] = _Entry(resolved, now, ref.cache_key)
        old = self._versions.get(key)
        self._versions[key] = resolved.model.version if resolved.model is not None else None
        self._log_change(key, old, resolved)
        return resolved

    def _held(self, entry: _Entry) -> bool:
        model = entry.resolved.model
        return self.cache is None or model is None or self.cache.holds(entry.cache_key, model)

    def _load(self, ref: ModelRef, key: ModelKey, previous: Resolved | None) -> Resolved:
        try:
            return Resolved(self.source.load_model(ref))
        except MissingModelError as exc:
            return Resolved(None, Failure.of(exc, "NO_MODEL"))
        except Exception as exc:  # corrupt files, I/O: keep serving the last good version
            if previous is not None and previous.model is not None:
                log.warning(
                    "model reload failed; keeping the loaded version",
                    extra={
                        "model": list(key),
                        "version": previous.model.version,
                        "error": f"{type(exc).__name__}: {exc}",
                    },
                )
                return previous
            return Resolved(None, Failure.of(exc))

    @staticmethod
    def _log_change(key: ModelKey, old: str | None, after: Resolved) -> None:
        new = after.model.version if after.model is not None else None
        if old != new and new is not None:
            log.info("model loaded", extra={"model": list(key), "version": new, "previous": old})
        elif old is not None and new is None:
            log.warning("model gone", extra={"model": list(key), "previous": old})


def preload_keys(store: ModelStore) -> list[ModelKey]:
    """The models a consumer of ``store`` is likely asked for: each recipe's inspection plan
    ROIs, or, for a recipe without a plan, every model stored under it. A recipe whose plan
    cannot be read is passed over (its frames load their models as they come)."""
    from store.manifest import recipe_entries

    keys: dict[ModelKey, None] = {}
    for rid in store.recipes():
        try:
            plan = store.find_plan(rid)
            if plan is not None:
                keys.update(((rid, r.role_id, r.roi_id), None) for r in plan.rois)
            else:
                keys.update(((rid, role, roi), None) for role, roi, _ in recipe_entries(store, rid))
        except (StoreError, OSError) as exc:
            log.warning("recipe not preloaded", extra={"recipe": rid, "error": str(exc)})
    return list(keys)
