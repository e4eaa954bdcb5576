"""The model archive (``.tar.gz``) that moves a trained model between stores.

An archive holds exactly ``manifest.json`` and the model's files under fixed names
(``model.npz``, ``model_index.faiss``, ``model_calib.json``). The manifest names the model
(ids, version, revision, threshold, ``mm_per_px``, backbone) and the sha256 and size of
each file.

Reading never uses a name from the archive as a path: members must be regular files with
one of the fixed names, sizes are bounded before anything is read, every file must match
its sha256 and the model must deserialise -- all before a store is touched. Installing
saves the files as the model's new current revision (atomic, versioned; a recipe whose
``mm_per_px`` is locked to another value refuses it with a ``ConflictError``).

Every failure is a :class:`~store.errors.StoreError` (:class:`ArchiveError` for the
archive itself).
"""

from __future__ import annotations

import io
import math
import tarfile
import tempfile
import time
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from store import history, models, naming, recipes
from store.atomic import dumps, replacing
from store.errors import ArchiveError, CorruptModelError, MissingModelError
from store.naming import ModelRef

if TYPE_CHECKING:
    from engine.patchcore import PatchCoreModel
    from store.store import ModelStore, SavedModel

FORMAT = "bdi-model"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
NPZ, INDEX, CALIB = models.NPZ, models.INDEX, models.CALIB
MEMBERS = {NPZ: "model.npz", INDEX: "model_index.faiss", CALIB: "model_calib.json"}
MAX_MANIFEST_BYTES = 1 << 20
MAX_FILE_BYTES = 2 << 30  # far above any PatchCore bank; files are held in memory


@dataclass(frozen=True)
class ModelArchive:
    manifest: dict[str, Any]
    files: dict[str, bytes]  # suffix (".npz", "_index.faiss", "_calib.json") -> content

    @property
    def threshold(self) -> float | None:
        """The threshold of the archived calibration file (``None``: not calibrated)."""
        return threshold_of(self.files)

    def ref(self, store: ModelStore) -> ModelRef:
        m = self.manifest
        return store.ref(m["recipe_id"], m["role_id"], m["roi_id"], m["model_key"])


def threshold_of(files: dict[str, bytes]) -> float | None:
    return models.calibration_facts(files.get(CALIB))[0]


def _npz_facts(data: bytes, what: str) -> tuple[str, dict[str, Any]]:
    try:
        version, meta = models.npz_facts(data)
    except ValueError as exc:
        raise ArchiveError(f"{what}: {exc}") from None
    if not isinstance(meta, dict):
        raise ArchiveError(f"{what}: memory-bank metadata is missing or not an object")
    return version or "", meta


# --- export --------------------------------------------------------------------------------
def _location(store: ModelStore, ref: ModelRef, revision: str | None) -> models.ModelLocation:
    if revision is None:
        loc = store.locate(ref)
        if loc is None:
            raise MissingModelError(f"no model stored for {ref.describe()}")
        return loc
    found = history.find(ref, revision)
    files = models.revision_files(ref.directory, ref.base_name, found.revision)
    return models.ModelLocation("recipe", files, (), revision=found.revision,
                                version=found.version)  # fmt: skip


def previous_revision(ref: ModelRef) -> str:
    """The revision that was current before the current one (what ``--previous`` means)."""
    pointer = models.read_pointer(ref.directory, ref.base_name)
    if not pointer or not pointer.get("previous"):
        raise ArchiveError(f"the store keeps no previous revision for {ref.describe()}")
    return str(pointer["previous"])


def collect(store: ModelStore, ref: ModelRef, revision: str | None = None) -> ModelArchive:
    """Read one consistent revision (default: the current one) of a stored model and
    describe it in a manifest."""
    for _ in range(models.READ_ATTEMPTS):
        loc = _location(store, ref, revision)
        try:
            files = {s: p.read_bytes() for s, p in loc.files.items()}
        except FileNotFoundError:
            continue  # two newer writes removed that revision meanwhile: look again
        if NPZ in files:
            return _describe(ref, loc, files)
    raise ArchiveError(f"the files of model {ref.base_name} are gone or kept changing")


def _describe(ref: ModelRef, loc: models.ModelLocation, files: dict[str, bytes]) -> ModelArchive:
    where = loc.files[NPZ].parent
    if INDEX not in files:
        raise ArchiveError(f"{where}: no kNN index file; save the model again before exporting")
    digests = {s: models.digest(d) for s, d in files.items()}
    for suffix, expected in loc.digests.items():
        if digests.get(suffix) != expected:
            raise CorruptModelError(f"{loc.files[suffix]} does not match its sha256")
    revision = models.revision_of(digests)
    if loc.revision is not None and loc.revision != revision:
        raise CorruptModelError(f"the files of revision {loc.revision} in {where} are damaged")
    version, meta = _npz_facts(files[NPZ], str(loc.files[NPZ]))
    version = loc.version or version or _load_model(files).version
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        **ref.ids(),
        "version": version,
        "revision": revision,
        "threshold": threshold_of(files),
        "mm_per_px": meta.get("mm_per_px"),
        "backbone": meta.get("backbone"),
        "backbone_weights": meta.get("backbone_weights"),
        "image_size": meta.get("image_size"),
        "source": loc.source,
        "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "files": {s: {"sha256": digests[s], "size": len(files[s])} for s in sorted(files)},
    }
    return ModelArchive(manifest, files)


def write(path: Path, archive: ModelArchive) -> None:
    """Write the archive atomically (temp file beside ``path``, fsync, rename)."""
    entries = [(MANIFEST, dumps(archive.manifest))]
    entries += [(MEMBERS[s], archive.files[s]) for s in sorted(archive.files)]
    with replacing(path) as fh, tarfile.open(fileobj=fh, mode="w:gz") as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
            tar.addfile(info, io.BytesIO(data))


def default_name(manifest: dict[str, Any]) -> str:
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
                    raise ArchiveError(
                        f"{path}: unexpected member {name!r} "
                        f"(a model archive holds only {', '.join(sorted(allowed))})"
                    )
                if not member.isreg():
                    raise ArchiveError(f"{path}: member {name!r} is not a regular file")
                if name in blobs:
                    raise ArchiveError(f"{path}: member {name!r} appears twice")
                limit = MAX_MANIFEST_BYTES if name == MANIFEST else MAX_FILE_BYTES
                if member.size > limit:
                    raise ArchiveError(f"{path}: {name} is larger than {limit} bytes")
                fh = tar.extractfile(member)
                blobs[name] = fh.read() if fh is not None else b""
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise ArchiveError(f"{path}: no such file") from None
        raise ArchiveError(f"{path}: not a readable .tar.gz ({exc})") from None
    return blobs


def _text(manifest: dict[str, Any], key: str) -> str:
    value = manifest.get(key)
    if not isinstance(value, str):
        raise ArchiveError(f"manifest: {key} must be a string")
    return value


def _files(listed: Any, blobs: dict[str, bytes]) -> dict[str, bytes]:
    """The model files the manifest lists, each checked against its size and sha256."""
    if not isinstance(listed, dict) or not {NPZ, INDEX} <= set(listed) <= set(MEMBERS):
        raise ArchiveError(f"manifest: files must list {NPZ} and {INDEX} (and optionally {CALIB})")
    files: dict[str, bytes] = {}
    for suffix, entry in listed.items():
        name = MEMBERS[suffix]
        if name not in blobs:
            raise ArchiveError(f"the archive lacks {name}, which its manifest lists")
        data = blobs[name]
        if not isinstance(entry, dict) or entry.get("size") != len(data):
            raise ArchiveError(f"{name}: size differs from the manifest")
        if entry.get("sha256") != models.digest(data):
            raise ArchiveError(f"{name} does not match its sha256 in the manifest")
        files[suffix] = data
    unlisted = set(blobs) - {MANIFEST} - {MEMBERS[s] for s in files}
    if unlisted:
        raise ArchiveError(f"the manifest does not list {', '.join(sorted(unlisted))}")
    return files


def _validated(manifest: Any, blobs: dict[str, bytes]) -> ModelArchive:
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArchiveError("not a BDI model archive (manifest format is not 'bdi-model')")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ArchiveError(
            f"archive format version {manifest.get('format_version')!r} is not supported "
            f"(this bdi reads {FORMAT_VERSION})"
        )
    files = _files(manifest.get("files"), blobs)
    naming.recipe_id(_text(manifest, "recipe_id"))  # InvalidIdError for a bad id
    naming.base_name(_text(manifest, "role_id"), _text(manifest, "roi_id"))
    naming.model_key(_text(manifest, "model_key"), manifest["roi_id"])
    version, meta = _npz_facts(files[NPZ], MEMBERS[NPZ])
    if not _text(manifest, "version") or (version and manifest["version"] != version):
        raise ArchiveError("manifest version differs from the memory bank's")
    mm = manifest.get("mm_per_px")
    if mm is not None and (not isinstance(mm, int | float) or not math.isfinite(mm)):
        raise ArchiveError("manifest: mm_per_px must be a number or null")
    if mm != meta.get("mm_per_px"):
        raise ArchiveError("manifest mm_per_px differs from the memory bank's")
    recipes.checked_mm(mm)  # InvalidValueError for <= 0
    if "threshold" in manifest and manifest["threshold"] != threshold_of(files):
        raise ArchiveError("manifest threshold differs from the calibration file's")
    return ModelArchive(manifest, files)


def read(path: Path) -> ModelArchive:
    """Read and validate an archive completely, its model deserialised; touches no store."""
    blobs = _read_members(path)
    if MANIFEST not in blobs:
        raise ArchiveError(f"{path}: no {MANIFEST}")
    try:
        manifest = orjson.loads(blobs[MANIFEST])
    except orjson.JSONDecodeError as exc:
        raise ArchiveError(f"{path}: unreadable {MANIFEST} ({exc})") from None
    archive = _validated(manifest, blobs)
    if _load_model(archive.files).version != archive.manifest["version"]:
        raise ArchiveError("the archive's model is not the version its manifest names")
    return archive


def _load_model(files: dict[str, bytes]) -> PatchCoreModel:
    """Deserialise model files from a private temp folder (the file names are ours)."""
    from engine.artifact import ArtifactError, load

    with tempfile.TemporaryDirectory(prefix=".bdi-transfer-") as tmp:
        for suffix, data in files.items():
            Path(tmp, f"model{suffix}").write_bytes(data)
        try:
            return load(Path(tmp), "model")
        except ArtifactError as exc:
            raise ArchiveError(f"the model does not load: {exc}") from None


def install(store: ModelStore, archive: ModelArchive) -> SavedModel:
    """Store a read archive as its model's new current revision."""
    m = archive.manifest
    return store.save_artifacts(
        archive.ref(store), archive.files, version=m["version"], mm_per_px=m["mm_per_px"]
    )
