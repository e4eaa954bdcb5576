"""Model resolution for batches, with hot reload.

The store re-checks its files (a ``stat`` of the version pointer) on every ``load_model``;
doing that per frame would cost one ``stat`` per frame per model. The resolver asks the
store at most once per ``BDI_MODEL_POLL_S`` per model, so a version saved by the REST API
or by another machine sharing the store is in use within that period, without a restart.

A batch resolves each model exactly once (:meth:`ModelResolver.resolve`), so every frame of
one model in a batch is scored by the same version. Entries are keyed by the *normalised*
ids (recipe ids are case-insensitive): frames naming ``PLATE`` and ``plate`` share one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from consumers.frames import Failure
from store.errors import InvalidIdError, MissingModelError

if TYPE_CHECKING:
    from engine.patchcore import PatchCoreModel
    from store import ModelRef

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


class ModelResolver:
    """Thread-safe; called from the inference thread."""

    def __init__(
        self,
        source: ModelSource,
        poll_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self.poll_s = poll_s
        self.clock = clock
        self._entries: dict[ModelKey, _Entry] = {}
        self._lock = threading.Lock()

    def resolve(self, keys: Iterable[ModelKey]) -> dict[ModelKey, Resolved]:
        """One resolution per distinct model: the batch's frames of a model share it, also
        when their headers spell the recipe id differently. Keyed as asked."""
        with self._lock:
            return {key: self._resolve_key(key) for key in dict.fromkeys(keys)}

    def _resolve_key(self, key: ModelKey) -> Resolved:
        try:
            ref = self.source.ref(*key)
        except InvalidIdError as exc:
            return Resolved(None, Failure.of(exc))
        return self._resolve_one(ref)

    def versions(self) -> dict[str, str | None]:
        """``"recipe/role/roi" -> version`` of every model this consumer has resolved."""
        with self._lock:
            return {
                "/".join(key): (e.resolved.model.version if e.resolved.model else None)
                for key, e in self._entries.items()
            }

    def _resolve_one(self, ref: ModelRef) -> Resolved:
        key = (ref.recipe_id, ref.role_id, ref.roi_id)
        now = self.clock()
        entry = self._entries.get(key)
        if entry is not None and now - entry.checked_at < self.poll_s:
            return entry.resolved
        previous = entry.resolved if entry is not None else None
        resolved = self._load(ref, key, previous)
        self._entries[key] = _Entry(resolved, now)
        self._log_change(key, previous, resolved)
        return resolved

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
    def _log_change(key: ModelKey, before: Resolved | None, after: Resolved) -> None:
        old = before.model.version if before is not None and before.model is not None else None
        new = after.model.version if after.model is not None else None
        if old != new and new is not None:
            log.info("model loaded", extra={"model": list(key), "version": new, "previous": old})
        elif old is not None and new is None:
            log.warning("model gone", extra={"model": list(key), "previous": old})
