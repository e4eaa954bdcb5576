"""Training datasets: ``recipes/<recipe_id>/datasets/<base_name>/{ok,ng}/<name>.png|.json``.

Images are re-encoded to PNG here and named here (never after the client's file name);
each has a JSON sidecar written *before* it, so a listed image always has its metadata.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from store import atomic, legacy, naming, recipes
from store.errors import InvalidValueError, NotFoundError, StoreError
from store.naming import ModelRef

LockFactory = Callable[[str], AbstractContextManager[None]]


@dataclass(frozen=True)
class DatasetImage:
    name: str
    label: str
    size: int
    legacy: bool = False
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "label": self.label,
            "size": self.size,
            "legacy": self.legacy,
            "meta": self.meta,
        }


def _labels(label: str | None) -> list[str]:
    """One label (checked), or both."""
    return [naming.label(label)] if label else list(naming.LABELS)


def _clean_source(source: str | None) -> str | None:
    if source is None:
        return None
    text = "".join(c for c in str(source) if c.isprintable())
    return text[:255]


class Datasets:
    """The OK / NG images of each recipe / role / ROI (the ``ModelRef``'s model key is not
    used: a dataset belongs to the role and ROI)."""

    def __init__(self, root: Path, lock: LockFactory, max_pixels: int, use_legacy: bool) -> None:
        self.root = root
        self._lock = lock
        self._max_pixels = max_pixels
        self._legacy = use_legacy

    # --- paths -----------------------------------------------------------------------------
    def folder(self, ref: ModelRef) -> Path:
        return naming.confined(self.root, "recipes", ref.recipe_id, "datasets", ref.base_name)

    def label_folder(self, ref: ModelRef, label: str) -> Path:
        """``…/datasets/<base_name>/<label>``, confined to the store root; a label folder
        that is a symbolic link is refused (files are never read or written through one)."""
        folder = naming.confined(self.folder(ref), naming.label(label))
        if folder.is_symlink():
            raise InvalidValueError(
                f"dataset folder {ref.base_name}/{label} is a symbolic link; refused"
            )
        return folder

    def _folders(self, ref: ModelRef, label: str) -> list[tuple[Path, bool]]:
        out = [(self.label_folder(ref, label), False)]
        if self._legacy:
            old = legacy.dataset_dir(self.root, ref.role_id, ref.roi_id, naming.label(label))
            if old is not None:
                out.append((old, True))
        return out

    def path(self, ref: ModelRef, label: str, name: str) -> Path:
        name = naming.image_name(name)
        for folder, _ in self._folders(ref, label):
            candidate = folder / name
            if candidate.is_file() and not candidate.is_symlink():
                return candidate
        raise NotFoundError(
            f"no {naming.label(label)} image {name!r} for {ref.role_id!r}/{ref.roi_id!r}"
        )

    # --- writes ----------------------------------------------------------------------------
    def add(
        self,
        ref: ModelRef,
        label: str,
        image: np.ndarray | bytes,
        *,
        source: str | None = None,
        mm_per_px: float | None = None,
        extra: dict[str, Any] | None = None,
    ) -> DatasetImage:
        """Store one image (RGB array, or PNG/JPEG bytes decoded by the engine's bounded
        decoder) under a generated name. ``source`` (e.g. an upload's file name) is kept as
        metadata only; a ``mm_per_px`` other than the recipe's locked one is a
        :class:`ConflictError`."""
        rid, lab = ref.recipe_id, naming.label(label)
        folder = self.label_folder(ref, lab)
        rgb = self._as_rgb(image)
        ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        if not ok:
            raise InvalidValueError("image could not be encoded as PNG")
        png = buf.tobytes()
        now = time.time()
        with self._lock(rid):
            mm = recipes.checked_mm(mm_per_px)
            recipes.check_mm(rid, self.root / "recipes" / rid, mm)
            atomic.ensure_dir(folder)
            atomic.sweep(folder)
            stem = naming.new_image_stem()
            meta = {
                "name": f"{stem}.png",
                "label": lab,
                "recipe_id": rid,
                "role_id": ref.role_id,
                "roi_id": ref.roi_id,
                "source": _clean_source(source),
                "mm_per_px": mm,
                "timestamp": datetime.fromtimestamp(now, UTC).isoformat(),
                "created_at": now,
                "width": int(rgb.shape[1]),
                "height": int(rgb.shape[0]),
                "sha256": hashlib.sha256(png).hexdigest(),
                "extra": extra or {},
            }
            atomic.write_bytes(folder / f"{stem}.json", atomic.dumps(meta), sync_dir=False)
            atomic.write_bytes(folder / f"{stem}.png", png)
        return DatasetImage(f"{stem}.png", lab, len(png), False, meta)

    def _as_rgb(self, image: np.ndarray | bytes) -> np.ndarray:
        if isinstance(image, bytes | bytearray | memoryview):
            from engine.errors import ImageDecodeError
            from engine.images import decode_image

            try:
                return decode_image(bytes(image), self._max_pixels)
            except ImageDecodeError as exc:
                raise InvalidValueError(f"unreadable image: {exc}") from exc
        arr = np.asarray(image)
        if arr.dtype != np.uint8 or arr.size == 0:
            raise InvalidValueError("image must be a non-empty uint8 array")
        if arr.ndim == 2:
            return cv2.cvtColor(arr, cv2.COLOR_GRAY2RGB)
        if arr.ndim == 3 and arr.shape[2] == 3:
            return np.ascontiguousarray(arr)
        raise InvalidValueError(f"image must be (H, W) or (H, W, 3), not {arr.shape}")

    def delete(self, ref: ModelRef, label: str, name: str) -> None:
        self.path(ref, label, name)  # 404 without creating the recipe's lock
        with self._lock(ref.recipe_id):
            path = self.path(ref, label, name)
            path.unlink()
            path.with_suffix(".json").unlink(missing_ok=True)
            atomic.fsync_dir(path.parent)

    def clear(self, ref: ModelRef, label: str | None = None, include_legacy: bool = False) -> int:
        """Remove all images of one label (or both); legacy folders only if asked to.
        Returns how many were removed."""
        targets = [
            (folder, is_legacy)
            for lab in _labels(label)
            for folder, is_legacy in self._folders(ref, lab)
            if folder.is_dir() and (include_legacy or not is_legacy)
        ]
        if not targets:
            return 0
        removed = 0
        with self._lock(ref.recipe_id):
            for folder, is_legacy in targets:
                removed += len(self._names(folder))
                if is_legacy:
                    for name in self._names(folder):
                        (folder / name).unlink(missing_ok=True)
                        (folder / name).with_suffix(".json").unlink(missing_ok=True)
                else:
                    atomic.remove_tree(folder)
        return removed

    # --- reads -----------------------------------------------------------------------------
    @staticmethod
    def _names(folder: Path) -> list[str]:
        try:
            entries = os.scandir(folder)
        except (FileNotFoundError, NotADirectoryError):
            return []
        with entries:
            return sorted(
                e.name
                for e in entries
                if not e.name.startswith(".")
                and e.is_file(follow_symlinks=False)  # a planted link is not an image
                and os.path.splitext(e.name)[1].lower() in naming.IMAGE_EXTS
            )

    def list_images(
        self, ref: ModelRef, label: str | None = None, with_meta: bool = False
    ) -> dict[str, list[DatasetImage]]:
        """``{"ok": [...], "ng": [...]}`` (or one label's) in name (= time) order, legacy
        images flagged."""
        out: dict[str, list[DatasetImage]] = {}
        for lab in _labels(label):
            items: dict[str, DatasetImage] = {}
            for folder, is_legacy in reversed(self._folders(ref, lab)):
                for name in self._names(folder):
                    path = folder / name
                    try:
                        size = path.stat().st_size
                    except FileNotFoundError:  # deleted meanwhile
                        continue
                    meta = self._sidecar(path) if with_meta else {}
                    items[name] = DatasetImage(name, lab, size, is_legacy, meta)
            out[lab] = [items[n] for n in sorted(items)]
        return out

    def counts(self, ref: ModelRef) -> dict[str, int]:
        return {lab: len(items) for lab, items in self.list_images(ref).items()}

    @staticmethod
    def _sidecar(path: Path) -> dict[str, Any]:
        try:
            data = atomic.read_json(path.with_suffix(".json"))
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}

    def read(self, ref: ModelRef, label: str, name: str) -> bytes:
        return self.path(ref, label, name).read_bytes()

    def meta(self, ref: ModelRef, label: str, name: str) -> dict[str, Any]:
        return self._sidecar(self.path(ref, label, name))

    def load(self, ref: ModelRef, label: str) -> list[np.ndarray]:
        """All images of one label as ``(H, W, 3)`` uint8 RGB, in name order."""
        images = []
        for item in self.list_images(ref, label)[naming.label(label)]:
            path = self.path(ref, label, item.name)
            bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if bgr is None:
                raise StoreError(f"stored image {path} is unreadable")
            images.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        return images
