"""Which revisions of a model a write keeps (``BDI_MODEL_REVISIONS_KEPT``).

A write keeps the newest ``kept`` revision folders of ``.versions/<base_name>/``: always the
current one and the previous one, then the others newest first by the time the pointer's
history records for them. Two is the floor: a reader may have read the pointer just
before a write and still be opening the files of the revision that pointer named, which
is the previous one after the write (``models.locate_versioned`` reads the pointer again
only when its folder is gone, i.e. after two writes); ``archive.previous_revision`` and
rolling forward again after a rollback name it too.

The history (``{revision: {version, saved_at}}`` in the pointer) lists the kept revisions;
its format is the one pointers have always had, with more entries.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from store import atomic

REVISIONS_KEPT = 5  # the default of BDI_MODEL_REVISIONS_KEPT (configs.settings)
MIN_REVISIONS_KEPT = 2  # the current and the previous one

History = dict[str, dict[str, Any]]


def check_kept(kept: int) -> int:
    """``kept`` itself; :class:`ValueError` below :data:`MIN_REVISIONS_KEPT`."""
    if kept < MIN_REVISIONS_KEPT:
        raise ValueError(
            f"the store keeps at least {MIN_REVISIONS_KEPT} revisions of a model "
            f"(the current and the previous one), not {kept}"
        )
    return kept


def history(
    old: dict[str, Any] | None, revision: str, previous: str | None, version: Any, now: float
) -> History:
    """The records of every revision the old pointer knew, plus the new current one. A
    revision stored again (a rollback, a repeated import) keeps the time it was first saved."""
    known: History = dict(old.get("history") or {}) if old else {}
    if old and old["revision"] not in known:  # written before pointers kept a history
        known[old["revision"]] = {"version": old.get("version"), "saved_at": old.get("written_at")}
    return {**known, revision: known.get(revision) or {"version": version, "saved_at": now}}


def retained(
    vroot: Path, records: History, revision: str, previous: str | None, kept: int
) -> list[str]:
    """The revisions a write keeps, in this order: the current one, the previous one, then
    the other folders under ``vroot`` newest first, up to ``kept`` in all. A folder the
    history has no time for (pointers written before it did) counts by its modification
    time, as :func:`store.history.revisions` shows it."""
    fixed = [revision] + ([previous] if previous and previous != revision else [])
    others = [(_saved_at(vroot, name, records), name) for name in names(vroot) if name not in fixed]
    return fixed + [name for _, name in sorted(others, reverse=True)[: kept - len(fixed)]]


def _saved_at(vroot: Path, name: str, records: History) -> float:
    saved = (records.get(name) or {}).get("saved_at")
    if isinstance(saved, int | float):
        return float(saved)
    try:
        return (vroot / name).stat().st_mtime
    except OSError:
        return 0.0  # unreadable: the first to go


def names(vroot: Path) -> list[str]:
    """The revision folders under ``vroot`` (``.versions/<base_name>/``); temps are hidden."""
    try:
        with os.scandir(vroot) as entries:
            return [
                e.name
                for e in entries
                if e.is_dir(follow_symlinks=False) and not e.name.startswith(".")
            ]
    except FileNotFoundError:
        return []


def collect(vroot: Path, keep: set[str]) -> None:
    """Remove the revision folders not in ``keep`` (the caller holds the recipe lock)."""
    for name in names(vroot):
        if name not in keep:
            atomic.remove_tree(vroot / name)
