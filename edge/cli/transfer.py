"""``bdi export-model`` and ``bdi import-model``: move a trained model between stores.

An archive (``.tar.gz``) holds exactly ``manifest.json`` and the model's files under fixed
names (``model.npz``, ``model_index.faiss``, ``model_calib.json``). The manifest names the
model (ids, version, revision, ``mm_per_px``, backbone) and the sha256 and size of each file.

Import never uses a name from the archive as a path: members must be regular files with
one of the fixed names, sizes are bounded before anything is read, every file must match
its sha256 and the model must deserialise -- all before the store is touched. The store
then saves the files as the model's new current version (atomic, versioned; a recipe whose
``mm_per_px`` is locked to another value refuses it with a ``ConflictError``).

Every failure raises a ``ValueError`` subclass, which ``bdi``'s main reports as
``bdi: error: ...`` with exit status 2.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import os
import tarfile
import tempfile
import time
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from configs.settings import load_settings
from store import CorruptModelError, MissingModelError, ModelRef, ModelStore, naming
from store import models as files_on_disk
from store import recipes as recipe_rules
from store.atomic import dumps, fsync_dir, temp_path

if TYPE_CHECKING:
    from engine.patchcore import PatchCoreModel

FORMAT = "bdi-model"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
NPZ, INDEX, CALIB = files_on_disk.NPZ, files_on_disk.INDEX, files_on_disk.CALIB
MEMBERS = {NPZ: "model.npz", INDEX: "model_index.faiss", CALIB: "model_calib.json"}
MAX_MANIFEST_BYTES = 1 << 20
MAX_FILE_BYTES = 2 << 30  # far above any PatchCore bank; files are held in memory


class TransferError(ValueError):
    """An archive is unusable, or a model cannot be exported (exit status 2)."""


@dataclass(frozen=True)
class ModelArchive:
    manifest: dict[str, Any]
    files: dict[str, bytes]  # suffix (".npz", "_index.faiss", "_calib.json") -> content


def add_transfer_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    exp = sub.add_parser(
        "export-model", help="write a stored model to a .tar.gz (for import-model elsewhere)"
    )
    exp.add_argument("--recipe", required=True, help="recipe id (case-insensitive)")
    exp.add_argument("--role", required=True, help="role id")
    exp.add_argument("--roi", required=True, help="ROI id")
    exp.add_argument("--model-key", default=None, help="model folder (default: the ROI id)")
    exp.add_argument(
        "--previous", action="store_true", help="the previous revision the store keeps (rollback)"
    )
    exp.add_argument(
        "--out", type=Path, default=None, help="archive file, or a folder for the derived name"
    )
    exp.add_argument("--json", action="store_true", help="print the manifest as one JSON line")
    exp.set_defaults(func=cmd_export)

    imp = sub.add_parser(
        "import-model", help="validate a model archive and store it as the current version"
    )
    imp.add_argument("archive", type=Path, help="a .tar.gz written by export-model")
    imp.add_argument("--dry-run", action="store_true", help="validate only, store nothing")
    imp.add_argument("--json", action="store_true", help="print the result as one JSON line")
    imp.set_defaults(func=cmd_import)


# --- export --------------------------------------------------------------------------------
def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _npz_facts(data: bytes, what: str) -> tuple[str, dict[str, Any]]:
    """The ``version`` and ``meta`` members of a memory-bank file (nothing else is read)."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            version = str(npz["version"]) if "version" in npz.files else ""
            meta = json.loads(str(npz["meta"]))
    except Exception as exc:  # zip and payload damage surface as many types
        raise TransferError(f"{what}: not a memory bank in the engine's format ({exc})") from None
    if not isinstance(meta, dict):
        raise TransferError(f"{what}: memory-bank metadata is not an object")
    return version, meta


def _location(store: ModelStore, ref: ModelRef, previous: bool) -> files_on_disk.ModelLocation:
    ids = f"recipe {ref.recipe_id!r}, role {ref.role_id!r}, roi {ref.roi_id!r}"
    if not previous:
        loc = store.locate(ref)
        if loc is None:
            raise MissingModelError(f"no model stored for {ids} (model key {ref.model_key!r})")
        return loc
    ptr = files_on_disk.read_pointer(ref.directory, ref.base_name)
    if not ptr or not ptr.get("previous"):
        raise TransferError(f"the store keeps no previous revision for {ids}")
    revision = str(ptr["previous"])
    vdir = files_on_disk.versions_dir(ref.directory, ref.base_name) / revision
    paths = {s: vdir / f"{ref.base_name}{s}" for s in files_on_disk.SUFFIXES}
    present = {s: p for s, p in paths.items() if p.is_file()}
    return files_on_disk.ModelLocation("recipe", present, (), revision=revision)


def collect(store: ModelStore, ref: ModelRef, previous: bool = False) -> ModelArchive:
    """Read one consistent revision of a stored model and describe it in a manifest."""
    for _ in range(files_on_disk.READ_ATTEMPTS):
        loc = _location(store, ref, previous)
        try:
            files = {s: p.read_bytes() for s, p in loc.files.items()}
        except FileNotFoundError:
            continue  # two newer writes removed that revision meanwhile: look again
        if NPZ in files:
            return _describe(ref, loc, files)
    raise TransferError(f"the files of model {ref.base_name} are gone or kept changing")


def _describe(
    ref: ModelRef, loc: files_on_disk.ModelLocation, files: dict[str, bytes]
) -> ModelArchive:
    where = loc.files[NPZ].parent
    if INDEX not in files:
        raise TransferError(f"{where}: no kNN index file; save the model again before exporting")
    digests = {s: _sha256(d) for s, d in files.items()}
    for suffix, expected in loc.digests.items():
        if digests.get(suffix) != expected:
            raise CorruptModelError(f"{loc.files[suffix]} does not match its sha256")
    revision = files_on_disk.revision_of(digests)
    if loc.revision is not None and loc.revision != revision:
        raise CorruptModelError(f"the files of revision {loc.revision} in {where} are damaged")
    version, meta = _npz_facts(files[NPZ], str(loc.files[NPZ]))
    version = loc.version or version or _load_model(files).version
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "recipe_id": ref.recipe_id,
        "role_id": ref.role_id,
        "roi_id": ref.roi_id,
        "model_key": ref.model_key,
        "version": version,
        "revision": revision,
        "mm_per_px": meta.get("mm_per_px"),
        "backbone": meta.get("backbone"),
        "backbone_weights": meta.get("backbone_weights"),
        "image_size": meta.get("image_size"),
        "source": loc.source,
        "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "files": {s: {"sha256": digests[s], "size": len(files[s])} for s in sorted(files)},
    }
    return ModelArchive(manifest, files)


def write_archive(path: Path, archive: ModelArchive) -> None:
    """Write the archive atomically (temp file beside ``path``, fsync, rename)."""
    entries = [(MANIFEST, dumps(archive.manifest))]
    entries += [(MEMBERS[s], archive.files[s]) for s in sorted(archive.files)]
    tmp = temp_path(path)
    try:
        with open(tmp, "xb") as fh:
            with tarfile.open(fileobj=fh, mode="w:gz") as tar:
                for name, data in entries:
                    info = tarfile.TarInfo(name)
                    info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
                    tar.addfile(info, io.BytesIO(data))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def default_archive_name(manifest: dict[str, Any]) -> str:
    return f"{manifest['recipe_id']}_{manifest['model_key']}_{manifest['revision']}.tar.gz"


# --- import --------------------------------------------------------------------------------
def _read_members(path: Path) -> dict[str, bytes]:
    """The archive's members by name, refusing anything but the fixed regular files."""
    allowed = {MANIFEST, *MEMBERS.values()}
    blobs: dict[str, bytes] = {}
    try:
        with tarfile.open(path, mode="r:gz") as tar:
            for member in tar:
                name = member.name
                if name not in allowed:
                    raise TransferError(
                        f"{path}: unexpected member {name!r} "
                        f"(a model archive holds only {', '.join(sorted(allowed))})"
                    )
                if not member.isreg():
                    raise TransferError(f"{path}: member {name!r} is not a regular file")
                if name in blobs:
                    raise TransferError(f"{path}: member {name!r} appears twice")
                limit = MAX_MANIFEST_BYTES if name == MANIFEST else MAX_FILE_BYTES
                if member.size > limit:
                    raise TransferError(f"{path}: {name} is larger than {limit} bytes")
                fh = tar.extractfile(member)
                blobs[name] = fh.read() if fh is not None else b""
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise TransferError(f"{path}: no such file") from None
        raise TransferError(f"{path}: not a readable .tar.gz ({exc})") from None
    return blobs


def _text(manifest: dict[str, Any], key: str) -> str:
    value = manifest.get(key)
    if not isinstance(value, str):
        raise TransferError(f"manifest: {key} must be a string")
    return value


def _validated(manifest: Any, blobs: dict[str, bytes]) -> ModelArchive:
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise TransferError("not a BDI model archive (manifest format is not 'bdi-model')")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise TransferError(
            f"archive format version {manifest.get('format_version')!r} is not supported "
            f"(this bdi reads {FORMAT_VERSION})"
        )
    listed = manifest.get("files")
    if not isinstance(listed, dict) or not {NPZ, INDEX} <= set(listed) <= set(MEMBERS):
        raise TransferError(f"manifest: files must list {NPZ} and {INDEX} (and optionally {CALIB})")
    files: dict[str, bytes] = {}
    for suffix, entry in listed.items():
        name = MEMBERS[suffix]
        if name not in blobs:
            raise TransferError(f"the archive lacks {name}, which its manifest lists")
        data = blobs[name]
        if not isinstance(entry, dict) or entry.get("size") != len(data):
            raise TransferError(f"{name}: size differs from the manifest")
        if entry.get("sha256") != _sha256(data):
            raise TransferError(f"{name} does not match its sha256 in the manifest")
        files[suffix] = data
    unlisted = set(blobs) - {MANIFEST} - {MEMBERS[s] for s in files}
    if unlisted:
        raise TransferError(f"the manifest does not list {', '.join(sorted(unlisted))}")
    naming.recipe_id(_text(manifest, "recipe_id"))  # InvalidIdError for a bad id
    naming.base_name(_text(manifest, "role_id"), _text(manifest, "roi_id"))
    naming.model_key(_text(manifest, "model_key"), manifest["roi_id"])
    version, meta = _npz_facts(files[NPZ], MEMBERS[NPZ])
    if not _text(manifest, "version") or (version and manifest["version"] != version):
        raise TransferError("manifest version differs from the memory bank's")
    mm = manifest.get("mm_per_px")
    if mm is not None and (not isinstance(mm, int | float) or not math.isfinite(mm)):
        raise TransferError("manifest: mm_per_px must be a number or null")
    if mm != meta.get("mm_per_px"):
        raise TransferError("manifest mm_per_px differs from the memory bank's")
    recipe_rules.checked_mm(mm)  # InvalidValueError for <= 0
    return ModelArchive(manifest, files)


def read_archive(path: Path) -> ModelArchive:
    """Read and validate an archive completely; touches no store."""
    blobs = _read_members(path)
    if MANIFEST not in blobs:
        raise TransferError(f"{path}: no {MANIFEST}")
    try:
        manifest = orjson.loads(blobs[MANIFEST])
    except orjson.JSONDecodeError as exc:
        raise TransferError(f"{path}: unreadable {MANIFEST} ({exc})") from None
    return _validated(manifest, blobs)


def _load_model(files: dict[str, bytes]) -> PatchCoreModel:
    """Deserialise model files from a private temp folder (the file names are ours)."""
    from engine.artifact import ArtifactError, load

    with tempfile.TemporaryDirectory(prefix=".bdi-transfer-") as tmp:
        for suffix, data in files.items():
            Path(tmp, f"model{suffix}").write_bytes(data)
        try:
            return load(Path(tmp), "model")
        except ArtifactError as exc:
            raise TransferError(f"the model does not load: {exc}") from None


def check_loads(archive: ModelArchive) -> None:
    """The archive's model deserialises and is the version its manifest names."""
    if _load_model(archive.files).version != archive.manifest["version"]:
        raise TransferError("the archive's model is not the version its manifest names")


# --- commands ------------------------------------------------------------------------------
def _print(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(orjson.dumps(result).decode())
        return
    for key, value in result.items():
        if key != "files":
            print(f"{key:16} {value}")


def cmd_export(args: argparse.Namespace) -> int:
    store = ModelStore(load_settings())
    ref = store.ref(args.recipe, args.role, args.roi, args.model_key)
    archive = collect(store, ref, previous=args.previous)
    out = args.out if args.out is not None else Path(".")
    if out.is_dir():
        out = out / default_archive_name(archive.manifest)
    try:
        write_archive(out, archive)
    except OSError as exc:
        raise TransferError(f"cannot write {out}: {exc}") from None
    _print({**archive.manifest, "path": str(out)}, args.json)
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    archive = read_archive(args.archive)
    m = archive.manifest
    check_loads(archive)
    store = ModelStore(load_settings())
    ref = store.ref(m["recipe_id"], m["role_id"], m["roi_id"], m["model_key"])
    keys = ("recipe_id", "role_id", "roi_id", "model_key", "version", "backbone")
    result = {k: m.get(k) for k in keys}
    if args.dry_run:
        store.check_mm_per_px(ref.recipe_id, m["mm_per_px"])  # a 409 shows in a dry run too
        _print({**result, "revision": m["revision"], "stored": False}, args.json)
        return 0
    saved = store.save_artifacts(
        ref.recipe_id, ref.role_id, ref.roi_id, archive.files,
        version=m["version"], mm_per_px=m["mm_per_px"], model_key=ref.model_key,
    )  # fmt: skip
    _print(
        {**result, "revision": saved.revision, "mm_per_px": saved.mm_per_px,
         "path": str(ref.directory), "stored": True},
        args.json,
    )  # fmt: skip
    return 0
