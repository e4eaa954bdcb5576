"""Per-recipe facts: ``recipes/<recipe_id>/recipe.json`` holds the locked ``mm_per_px``."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from store import atomic
from store.errors import ConflictError, CorruptModelError, InvalidValueError

RECIPE_FILE = "recipe.json"
LOCK_FILE = ".lock"
MM_REL_TOL = 1e-9


def checked_mm(value: float | None) -> float | None:
    if value is None:
        return None
    try:
        mm = float(value)
    except (TypeError, ValueError):
        raise InvalidValueError(f"mm_per_px must be a number, not {value!r}") from None
    if not math.isfinite(mm) or mm <= 0:
        raise InvalidValueError(f"mm_per_px must be a positive finite number, not {value!r}")
    return mm


def read(recipe_dir: Path) -> dict[str, Any]:
    try:
        data = atomic.read_json(recipe_dir / RECIPE_FILE)
    except ValueError as exc:
        raise CorruptModelError(f"unreadable {recipe_dir / RECIPE_FILE}: {exc}") from exc
    return data if isinstance(data, dict) else {}


def locked_mm(recipe_dir: Path) -> float | None:
    value = read(recipe_dir).get("mm_per_px")
    return None if value is None else float(value)


def check_mm(recipe_id: str, recipe_dir: Path, value: float | None) -> float | None:
    """The recipe's locked value; :class:`ConflictError` (409) if ``value`` differs from it."""
    mm = checked_mm(value)
    locked = locked_mm(recipe_dir)
    if mm is not None and locked is not None and not math.isclose(mm, locked, rel_tol=MM_REL_TOL):
        raise ConflictError(
            f"mm_per_px {mm:g} differs from {locked:g}, locked for recipe {recipe_id!r} "
            "at its first training"
        )
    return locked


def lock_mm(recipe_id: str, recipe_dir: Path, value: float | None) -> float | None:
    """Check ``value`` and lock it if the recipe has none yet. Caller holds the recipe lock."""
    locked = check_mm(recipe_id, recipe_dir, value)
    mm = checked_mm(value)
    if locked is None and mm is not None:
        data = read(recipe_dir)
        now = time.time()
        data.update(recipe_id=recipe_id, mm_per_px=mm, mm_per_px_locked_at=now)
        data.setdefault("created_at", now)
        atomic.ensure_dir(recipe_dir)
        atomic.write_json(recipe_dir / RECIPE_FILE, data)
        return mm
    return locked
