"""Read-only access to the original backend's layouts (before recipes existed).

Models (first match wins, after the recipe layout):

- flat: ``<root>/<role>_<roi>.npz | _index.faiss | _calib.json`` with the original
  backend's sanitised ids (letters, digits, ``-``, ``_``; anything else -> ``_``);
- folder: ``<root>/<role>/<roi>/`` (same sanitising) holding either
  ``<base_name>.npz | _index.faiss | _calib.json`` (the new names),
  ``model.npz | model_index.faiss | model_calib.json``, or the original backend's
  ``memory.npz | index.faiss | calib.json``.

Datasets: ``<root>/datasets/<role>/<roi>/{ok,ng}/`` with the ids verbatim (as the original
backend wrote them) -- looked up only when both ids are safe single path components.
"""

from __future__ import annotations

from pathlib import Path

from store import naming
from store.errors import InvalidIdError
from store.models import CALIB, INDEX, NPZ, SUFFIXES, ModelLocation, locate_plain

# Top-level folder names that belong to the store itself, never to a legacy role.
_OWN_FOLDERS = frozenset({"recipes", "datasets"})


def _triple(stem: str) -> dict[str, str]:
    return {s: f"{stem}{s}" for s in SUFFIXES}


ORIGINAL_NAMES = {NPZ: "memory.npz", INDEX: "index.faiss", CALIB: "calib.json"}


def model_candidates(root: Path, role: str, roi: str) -> list[tuple[Path, dict[str, str], str]]:
    """``(folder, {suffix: file name}, source)`` in lookup order."""
    s_role, s_roi = naming.legacy_sanitize(role), naming.legacy_sanitize(roi)
    out = [(root, _triple(f"{s_role}_{s_roi}"), "legacy_flat")]
    if s_role not in _OWN_FOLDERS:
        folder = root / s_role / s_roi
        for names in (_triple(naming.base_name(role, roi)), _triple("model"), ORIGINAL_NAMES):
            out.append((folder, names, "legacy_dir"))
    return out


def locate_model(root: Path, role: str, roi: str) -> ModelLocation | None:
    for folder, names, source in model_candidates(root, role, roi):
        loc = locate_plain(folder, names, source)
        if loc is not None:
            return loc
    return None


def candidate_paths(root: Path, role: str, roi: str) -> list[Path]:
    """Every file a legacy lookup may read: their stats detect a change cheaply."""
    return [
        folder / n for folder, names, _ in model_candidates(root, role, roi) for n in names.values()
    ]


def dataset_dir(root: Path, role: str, roi: str, label: str) -> Path | None:
    """The legacy dataset folder of one label, or ``None`` where the ids cannot name one."""
    if not (naming.safe_component(role) and naming.safe_component(roi)):
        return None
    try:
        return naming.confined(root, "datasets", role, roi, label)
    except InvalidIdError:
        return None


def list_models(root: Path) -> list[dict[str, str]]:
    """Legacy model files present (for the manifest; their ids cannot be recovered)."""
    found: list[dict[str, str]] = []
    if not root.is_dir():
        return found
    for path in sorted(root.glob("*.npz")):
        found.append({"source": "legacy_flat", "path": path.name})
    for path in sorted(root.glob("*/*/*.npz")):
        if path.parts[-3] not in _OWN_FOLDERS and not path.parts[-3].startswith("."):
            found.append({"source": "legacy_dir", "path": str(path.relative_to(root))})
    return found


def list_datasets(root: Path) -> list[dict[str, object]]:
    """Legacy dataset folders with their image counts (ids are stored verbatim there)."""
    out: list[dict[str, object]] = []
    base = root / "datasets"
    if not base.is_dir():
        return out
    for roi_dir in sorted(p for p in base.glob("*/*") if p.is_dir()):
        counts = {
            lab: sum(1 for f in (roi_dir / lab).glob("*") if f.suffix.lower() in naming.IMAGE_EXTS)
            for lab in naming.LABELS
        }
        out.append({"role_id": roi_dir.parent.name, "roi_id": roi_dir.name, "counts": counts})
    return out
