"""Naming rules: which ids are accepted and how they become file-system names.

Every name the store puts on disk comes from here, and every path it builds from ids goes
through :func:`confined`, so no client-supplied string can leave the store's root.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TypedDict

from store.errors import InvalidIdError

DEFAULT_RECIPE = "default"  # the original backend's recipe when none is given
RESERVED_RECIPES = frozenset({"last"})
_RECIPE_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
MAX_ID_BYTES = 64  # role / ROI ids: keeps base names (<= 174 chars) under NAME_MAX with suffixes
MAX_KEY_CHARS = 80
# Model keys that would collide with the store's own names inside recipes/<recipe_id>/.
RESERVED_KEYS = frozenset({"datasets", "recipe.json"})
_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
LABELS = ("ok", "ng")
IMAGE_EXTS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
_IMAGE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._()+-]{0,199}")


def recipe_id(value: str | None) -> str:
    """The canonical (lower-case) recipe id; ``None`` / ``""`` is the default recipe.

    Non-ASCII is refused *before* lower-casing: ``"\\u212a".lower()`` is ``"k"``.
    """
    if value is None or value == "":
        return DEFAULT_RECIPE
    if not isinstance(value, str) or not value.isascii():
        raise InvalidIdError(f"invalid recipe_id {value!r}: ASCII letters, digits, '_' and '-'")
    rid = value.lower()
    if not _RECIPE_RE.fullmatch(rid):
        raise InvalidIdError(
            f"invalid recipe_id {value!r}: "
            "must match ^[a-z0-9][a-z0-9_-]{0,63}$ (case-insensitive)"
        )
    if rid in RESERVED_RECIPES:
        raise InvalidIdError(f"recipe_id {value!r} is reserved")
    return rid


def part_id(value: str, what: str = "role_id") -> str:
    """A role or ROI id: any non-empty text of at most 64 UTF-8 bytes, no control characters.

    Ids are kept exactly (case-sensitive); they reach the disk only base64-encoded.
    """
    if not isinstance(value, str) or not value:
        raise InvalidIdError(f"{what} must be a non-empty string")
    try:
        raw = value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidIdError(f"{what} {value!r} is not valid Unicode text") from None
    if len(raw) > MAX_ID_BYTES:
        raise InvalidIdError(f"{what} is longer than {MAX_ID_BYTES} bytes (UTF-8)")
    if any(unicodedata.category(c) == "Cc" for c in value):
        raise InvalidIdError(f"{what} {value!r} contains control characters")
    return value


def model_key(value: str | None, roi: str) -> str:
    """The model folder name: ``value`` (default: the ROI id) made safe for the file system.

    Compatible with the original backend (unsafe characters -> ``_``, at most 80 chars) and
    additionally never hidden, never ``.`` / ``..``, never one of the store's own names.
    """
    source = roi if value is None else value
    if not isinstance(source, str):
        raise InvalidIdError("model_key must be a string")
    key = _KEY_UNSAFE.sub("_", source).strip()[:MAX_KEY_CHARS]
    if key.startswith("."):
        key = "_" + key.lstrip(".")
        key = key[:MAX_KEY_CHARS]
    if not key:
        key = "default"
    if key.lower() in RESERVED_KEYS:
        key += "_"
    return key


def encode_part(value: str) -> str:
    return base64.urlsafe_b64encode(value.encode("utf-8")).decode("ascii").rstrip("=")


def decode_part(text: str) -> str:
    """Inverse of :func:`encode_part`; refuses non-canonical or non-UTF-8 input."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        value = raw.decode("utf-8")
    except (binascii.Error, ValueError):
        raise InvalidIdError(f"{text!r} is not an encoded id") from None
    if not text or encode_part(value) != text:
        raise InvalidIdError(f"{text!r} is not a canonical encoded id")
    return value


def base_name(role: str, roi: str) -> str:
    """``urlsafe-b64(role) + "__" + urlsafe-b64(roi)``, no padding.

    Injective for UTF-8 text: an encoding never contains ``__`` nor starts with ``_`` (that
    would need a byte >= 0xFC), so the *last* ``__`` is the separator.
    """
    return f"{encode_part(part_id(role, 'role_id'))}__{encode_part(part_id(roi, 'roi_id'))}"


def parse_base_name(name: str) -> tuple[str, str]:
    """``(role_id, roi_id)`` of a base name; :class:`InvalidIdError` if it is not one."""
    head, sep, tail = name.rpartition("__")
    if not sep:
        raise InvalidIdError(f"{name!r} is not a base name")
    role, roi = decode_part(head), decode_part(tail)
    if base_name(role, roi) != name:
        raise InvalidIdError(f"{name!r} is not a canonical base name")
    return role, roi


class RefIds(TypedDict):
    recipe_id: str
    role_id: str
    roi_id: str
    model_key: str


@dataclass(frozen=True)
class ModelRef:
    """Validated, canonical ids of one model (or dataset) and where its files live.

    Made by :meth:`store.ModelStore.ref`, the one place ids are checked; every store
    method that names a model or dataset takes one.
    """

    recipe_id: str
    role_id: str
    roi_id: str
    model_key: str
    base_name: str
    directory: Path  # recipes/<recipe_id>/<model_key>/

    @property
    def cache_key(self) -> tuple[str, str, str]:
        return (self.recipe_id, self.model_key, self.base_name)

    def ids(self) -> RefIds:
        """The four ids by name (responses, records and log lines)."""
        return {
            "recipe_id": self.recipe_id,
            "role_id": self.role_id,
            "roi_id": self.roi_id,
            "model_key": self.model_key,
        }

    def describe(self) -> str:
        return (
            f"recipe {self.recipe_id!r}, role {self.role_id!r}, roi {self.roi_id!r} "
            f"(model key {self.model_key!r})"
        )


def model_ref(
    root: Path, recipe: str | None, role: str, roi: str, key: str | None = None
) -> ModelRef:
    """Validate ids (:class:`InvalidIdError`) and name the model's folder under ``root``."""
    rid = recipe_id(recipe)
    base = base_name(role, roi)
    folder = model_key(key, roi)
    return ModelRef(rid, role, roi, folder, base, confined(root, "recipes", rid, folder))


def label(value: str) -> str:
    lab = value.lower() if isinstance(value, str) else ""
    if lab not in LABELS:
        raise InvalidIdError(f"label must be 'ok' or 'ng', not {value!r}")
    return lab


def image_name(value: str) -> str:
    """A stored image's file name as given back by a listing (never a client's upload name)."""
    if not isinstance(value, str) or not _IMAGE_NAME_RE.fullmatch(value):
        raise InvalidIdError(f"invalid image name {value!r}")
    if Path(value).suffix.lower() not in IMAGE_EXTS:
        raise InvalidIdError(f"invalid image name {value!r}: not an image file name")
    return value


def new_image_stem() -> str:
    """A fresh, sortable, unguessable stem: ``20250101-120000-123456_1a2b3c4d``."""
    return f"{datetime.now(UTC):%Y%m%d-%H%M%S-%f}_{secrets.token_hex(4)}"


# --- legacy (original backend) names ---------------------------------------------------------
def legacy_sanitize(value: str) -> str:
    """The original backend's ``_sanitize``: keeps letters, digits, ``-`` and ``_``."""
    cleaned = "".join(c if c.isalnum() or c in "-_" else "_" for c in value.strip())
    return cleaned or "default"


def safe_component(value: str) -> bool:
    """Whether ``value`` can be used verbatim as one path component (legacy datasets)."""
    return (
        isinstance(value, str)
        and value not in ("", ".", "..")
        and not any(c in value for c in "/\\\x00")
        and len(value.encode("utf-8", "surrogatepass")) <= 255
        and value.isprintable()
    )


def confined(root: Path, *parts: str) -> Path:
    """``root / parts``, refusing any result that does not resolve to a place under ``root``."""
    for part in parts:
        if part in ("", ".", "..") or "/" in part or "\x00" in part or Path(part).is_absolute():
            raise InvalidIdError(f"unsafe path component {part!r}")
    path = root.joinpath(*parts)
    base = root.resolve()
    if not path.resolve().is_relative_to(base):
        raise InvalidIdError(f"path {path} leaves the store root")
    return path
