"""Model files on disk: versioned, crash-safe writes and consistent reads.

One model (recipe / model key / role / ROI) lives in ``recipes/<recipe_id>/<model_key>/``::

    .versions/<base_name>/<revision>/<base_name>{.npz,_index.faiss,_calib.json}
                                    complete, immutable copies, one folder per revision
    <base_name>_version.json        the pointer: current revision, sha256 + size of each file
    <base_name>{.npz,_index.faiss,_calib.json}
                                    hard links to the current revision (the documented layout)

The pointer is replaced last and is the single commit point; readers always go through it.
A write keeps the newest ``kept`` revisions (``BDI_MODEL_REVISIONS_KEPT``), never fewer than
the current and the previous one: a reader holding the pointer of one write ago still finds
its files. See ``docs/STORE.md`` for the crash analysis.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson

from store import atomic, retention
from store.errors import CorruptModelError

log = logging.getLogger(__name__)

if TYPE_CHECKING:  # the engine (and torch) is imported only where a model is (de)serialised
    from engine.patchcore import PatchCoreModel

NPZ, INDEX, CALIB = ".npz", "_index.faiss", "_calib.json"  # = engine.artifact's suffixes
SUFFIXES = (NPZ, INDEX, CALIB)
POINTER = "_version.json"
VERSIONS = ".versions"
POINTER_FORMAT = 1
READ_ATTEMPTS = 3
Stamp = tuple[tuple[int, int, int] | None, ...]


@dataclass(frozen=True)
class ModelLocation:
    """Where the files of one stored model are, as found by a read."""

    source: str  # "recipe" | "recipe_unversioned" | "legacy_flat" | "legacy_dir"
    files: dict[str, Path]  # suffix -> existing file; NPZ always present
    stamp: Stamp  # cheap change detector (see :func:`stat_stamp`)
    revision: str | None = None
    version: str | None = None
    digests: dict[str, str] = field(default_factory=dict)  # suffix -> sha256, from the pointer
    pointer: dict[str, Any] | None = None


def stat_stamp(*paths: Path) -> Stamp:
    """``(inode, size, mtime_ns)`` of each path (``None`` if absent). The pointer is always
    replaced by rename, so its inode changes with every write: no hashing needed."""
    out: list[tuple[int, int, int] | None] = []
    for p in paths:
        try:
            st = os.stat(p)
        except FileNotFoundError:
            out.append(None)
        else:
            out.append((st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(out)


def pointer_path(model_dir: Path, base: str) -> Path:
    return model_dir / f"{base}{POINTER}"


def versions_dir(model_dir: Path, base: str) -> Path:
    return model_dir / VERSIONS / base


def read_pointer(model_dir: Path, base: str) -> dict[str, Any] | None:
    path = pointer_path(model_dir, base)
    try:
        ptr = atomic.read_json(path)
    except ValueError as exc:
        raise CorruptModelError(f"unreadable version record {path}: {exc}") from exc
    if ptr is not None and (not isinstance(ptr, dict) or "revision" not in ptr):
        raise CorruptModelError(f"{path} is not a version record")
    return ptr


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class CalibrationFacts(NamedTuple):
    threshold: float | None
    method: str | None
    version: str | None  # :func:`calibration_version`


def calibration_facts(source: Path | bytes | None) -> CalibrationFacts:
    """Threshold, method and version of a calibration file (its path, or its bytes from an
    archive); all ``None`` if absent or unreadable."""
    if source is None:
        return CalibrationFacts(None, None, None)
    try:
        data = orjson.loads(source) if isinstance(source, bytes) else atomic.read_json(source)
        threshold, method = float(data["threshold"]), str(data.get("method", "ok_percentile"))
        return CalibrationFacts(threshold, method, calibration_version(data))
    except (ValueError, KeyError, TypeError, AttributeError):
        return CalibrationFacts(None, None, None)


def calibration_version(data: dict[str, Any]) -> str:
    """Short content hash of a calibration (its file's JSON object): the threshold and the
    statistics it came from, not ``created_at``. Unlike the model ``version``, it changes
    when only the threshold does. Computed, never stored: older files have one too. Defined
    here, not in the engine, so the store names it without importing torch."""
    content = {k: _as_float(v) for k, v in data.items() if k != "created_at"}
    return digest(orjson.dumps(content, option=orjson.OPT_SORT_KEYS))[:16]


def _as_float(value: Any) -> Any:
    """Numbers as floats, at any depth: ``3`` and ``3.0`` in a file are the same content."""
    if isinstance(value, dict):
        return {k: _as_float(v) for k, v in value.items()}
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return value


def revision_of(digests: dict[str, str]) -> str:
    h = hashlib.sha256()
    for suffix in sorted(digests):
        h.update(f"{suffix}={digests[suffix]};".encode())
    return h.hexdigest()[:16]


def write_model(
    model_dir: Path,
    base: str,
    files: dict[str, bytes],
    info: dict[str, Any],
    kept: int = retention.REVISIONS_KEPT,
) -> dict[str, Any]:
    """Store one model version; the caller holds the recipe lock. Returns the new pointer.

    1. the files go into a private temp folder (each fsynced), which is fsynced and renamed
       to ``.versions/<base>/<revision>`` -- a revision folder is complete or absent;
    2. the pointer is replaced atomically -- **the commit point**;
    3. the top-level files are re-linked to the new revision, one atomic rename each;
    4. revisions beyond the newest ``kept`` are removed, oldest first by the time the history
       records; never the current or the previous one.
    """
    if NPZ not in files or INDEX not in files or set(files) - set(SUFFIXES):
        raise ValueError(f"a model needs {NPZ} and {INDEX} (and optionally {CALIB})")
    retention.check_kept(kept)
    vroot = versions_dir(model_dir, base)
    atomic.ensure_dir(vroot)
    atomic.sweep(model_dir)
    atomic.sweep(vroot)
    digests = {s: digest(data) for s, data in files.items()}
    revision = revision_of(digests)
    old = read_pointer(model_dir, base)
    vdir = vroot / revision
    if vdir.is_dir() and not _intact(vdir, base, digests):
        atomic.remove_tree(vdir)  # damaged since it was written: write it again
    if not vdir.is_dir():
        _write_revision(vroot, vdir, base, files, digests, old)
    previous = old.get("previous") if old and old["revision"] == revision else None
    if old and old["revision"] != revision:
        previous = old["revision"]
    now = time.time()
    history = retention.history(old, revision, previous, info.get("version"), now)
    keep = retention.retained(vroot, history, revision, previous, kept)
    pointer = {
        **info,
        "format": POINTER_FORMAT,
        "base_name": base,
        "revision": revision,
        "previous": previous,
        "files": {s: {"sha256": digests[s], "size": len(files[s])} for s in files},
        "written_at": now,
        "history": {r: history[r] for r in keep if r in history},
    }
    try:
        atomic.write_json(pointer_path(model_dir, base), pointer)
    except OSError:
        if not _committed(model_dir, base, pointer):
            raise  # the old version is still the current one: the save failed, cleanly
        log.warning("model %s/%s stored, but its folder could not be synced", model_dir, base)
    # Past the commit point the new version is served: a failure from here on (a full disk
    # while re-linking) must not fail the save; sweep() repairs the links at start-up.
    try:
        _relink_top_level(model_dir, base, vdir, files)
        retention.collect(vroot, keep=set(keep))
    except OSError as exc:
        log.warning("model %s/%s stored; tidying up failed (%s), repaired by sweep()",
                    model_dir, base, exc)  # fmt: skip
    return pointer


def _committed(model_dir: Path, base: str, pointer: dict[str, Any]) -> bool:
    try:
        current = read_pointer(model_dir, base)
    except (OSError, CorruptModelError):
        return False
    if current is None:
        return False
    same = current.get("revision") == pointer["revision"]
    return same and current.get("written_at") == pointer["written_at"]


def _write_revision(
    vroot: Path,
    vdir: Path,
    base: str,
    files: dict[str, bytes],
    digests: dict[str, str],
    old: dict[str, Any] | None,
) -> None:
    tmp = atomic.new_temp_dir(vroot, vdir.name)
    try:
        old_dir = vroot / old["revision"] if old else None
        old_files = old.get("files", {}) if old else {}
        for suffix, data in files.items():
            name = f"{base}{suffix}"
            same = old_files.get(suffix, {}).get("sha256") == digests[suffix]
            if same and old_dir is not None and _try_link(old_dir / name, tmp / name):
                continue  # unchanged (e.g. the bank on recalibration): share the inode
            atomic.write_file_into(tmp, name, data)
        atomic.publish_dir(tmp, vdir)
    finally:
        if tmp.exists():
            atomic.remove_tree(tmp)


def _intact(vdir: Path, base: str, digests: dict[str, str]) -> bool:
    try:
        present = {p.name for p in vdir.iterdir()}
        return present == {f"{base}{s}" for s in digests} and all(
            digest((vdir / f"{base}{s}").read_bytes()) == d for s, d in digests.items()
        )
    except OSError:
        return False


def _try_link(src: Path, dst: Path) -> bool:
    try:
        os.link(src, dst)
    except OSError:
        return False
    return True


def _relink_top_level(model_dir: Path, base: str, vdir: Path, files: Iterable[str]) -> None:
    files = set(files)
    for suffix in SUFFIXES:
        top = model_dir / f"{base}{suffix}"
        if suffix in files:
            atomic.link_or_copy(vdir / top.name, top)
        else:
            top.unlink(missing_ok=True)
    atomic.fsync_dir(model_dir)


def repair(model_dir: Path, base: str) -> None:
    """After a crash between the pointer swap and the re-linking: make the top-level files
    match the pointer again. The caller holds the recipe lock."""
    atomic.sweep(model_dir)
    atomic.sweep(versions_dir(model_dir, base))
    ptr = read_pointer(model_dir, base)
    if ptr is None:
        return
    vdir = versions_dir(model_dir, base) / ptr["revision"]
    if not vdir.is_dir():
        return
    current = set(ptr["files"])
    stale = any(
        stat_stamp(model_dir / f"{base}{s}")[0] != stat_stamp(vdir / f"{base}{s}")[0]
        for s in current
    ) or any((model_dir / f"{base}{s}").exists() for s in SUFFIXES if s not in current)
    if stale:
        _relink_top_level(model_dir, base, vdir, current)


def locate_versioned(model_dir: Path, base: str) -> ModelLocation | None:
    """The current revision through the pointer; ``None`` when there is no pointer.

    A revision folder can vanish between reading the pointer and opening it only when two
    newer writes happened meanwhile (the previous revision is always kept); then read again.
    """
    ppath = pointer_path(model_dir, base)
    for _ in range(READ_ATTEMPTS):
        stamp = stat_stamp(ppath)
        ptr = read_pointer(model_dir, base)
        if ptr is None:
            return None
        vdir = versions_dir(model_dir, base) / str(ptr["revision"])
        files = {s: vdir / f"{base}{s}" for s in ptr.get("files", {})}
        sizes_ok = all(
            p.is_file() and p.stat().st_size == ptr["files"][s]["size"] for s, p in files.items()
        )
        if sizes_ok and NPZ in files:
            return ModelLocation(
                source="recipe",
                files=files,
                stamp=stamp,
                revision=str(ptr["revision"]),
                version=ptr.get("version"),
                pointer=ptr,
                digests={s: f["sha256"] for s, f in ptr["files"].items()},
            )
        if stat_stamp(ppath) == stamp:  # no writer moved the pointer: this is damage
            raise CorruptModelError(f"files of revision {ptr['revision']} in {vdir} are missing")
    raise CorruptModelError(f"{ppath} keeps changing; try again")


def locate_plain(directory: Path, names: dict[str, str], source: str) -> ModelLocation | None:
    """Unversioned files (older releases, legacy layouts): ``names`` maps suffix -> file name."""
    paths = {s: directory / n for s, n in names.items()}
    if not paths[NPZ].is_file():
        return None
    files = {s: p for s, p in paths.items() if p.is_file()}
    return ModelLocation(source=source, files=files, stamp=stat_stamp(*paths.values()))


def npz_facts(source: Path | bytes) -> tuple[str | None, dict[str, Any] | None]:
    """The ``version`` and ``meta`` members of a memory-bank file, reading nothing else
    (``None`` for an absent member); :class:`ValueError` if it is not a readable ``.npz``."""
    import numpy as np

    try:
        with np.load(io.BytesIO(source) if isinstance(source, bytes) else source,
                     allow_pickle=False) as npz:  # fmt: skip
            version = str(npz["version"]) if "version" in npz.files else None
            meta = json.loads(str(npz["meta"])) if "meta" in npz.files else None
    except Exception as exc:  # zip and payload damage surface as many types
        raise ValueError(f"not a memory bank in the engine's format ({exc})") from None
    return version, meta


def npz_version(path: Path) -> str | None:
    """The ``version`` member of a memory-bank file (``None``: absent or unreadable)."""
    try:
        return npz_facts(path)[0]
    except ValueError:
        return None


def revision_files(model_dir: Path, base: str, revision: str) -> dict[str, Path]:
    """The files of one stored revision (``revision`` comes from a folder listing, never
    from a client: see :func:`store.history.find`)."""
    vdir = versions_dir(model_dir, base) / revision
    paths = {s: vdir / f"{base}{s}" for s in SUFFIXES}
    return {s: p for s, p in paths.items() if p.is_file()}


def load_location(
    loc: ModelLocation, nprobe: int, use_gpu: bool, verify: bool = True
) -> PatchCoreModel:
    """Deserialise a located model with the engine (imported here: it pulls torch)."""
    from engine.artifact import ArtifactError, load

    if verify:
        for suffix, expected in loc.digests.items():
            if digest(loc.files[suffix].read_bytes()) != expected:
                raise CorruptModelError(f"{loc.files[suffix]} does not match its sha256")
    npz = loc.files[NPZ]
    base = npz.name[: -len(NPZ)]
    direct = all(p.parent == npz.parent and p.name == f"{base}{s}" for s, p in loc.files.items())
    try:
        if direct:
            model = load(npz.parent, base, nprobe=nprobe, use_gpu=use_gpu)
            # engine.artifact.load tolerates a missing index or calibration (older layouts);
            # here the pointer lists them, so one gone meanwhile means a writer's clean-up
            # raced this read: the caller re-reads rather than serve a partial model
            gone = [p.name for p in loc.files.values() if not p.is_file()]
            if gone or (CALIB in loc.files and model.calibration is None):
                raise FileNotFoundError(f"{gone or CALIB} vanished while loading {base}")
            return model
        with tempfile.TemporaryDirectory(prefix=".bdi-load-") as tmp:
            # other file names (legacy memory.npz / index.faiss / calib.json): link them under
            # the engine's names, since engine.artifact.load reads <dir>/<base><suffix>
            for suffix, path in loc.files.items():
                os.symlink(path.resolve(), Path(tmp) / f"model{suffix}")
            return load(Path(tmp), "model", nprobe=nprobe, use_gpu=use_gpu)
    except ArtifactError as exc:
        raise CorruptModelError(str(exc)) from exc
