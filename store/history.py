"""Model history: the revisions the store keeps of one model, what each one is, and the
files to make one current again (see ``ModelStore.revisions`` / ``ModelStore.rollback``).

A revision is one immutable folder ``.versions/<base_name>/<revision>/``; its id is the
hash of its files, so a recalibration (same memory bank, same ``version``) is a new
revision. A write keeps the newest ``BDI_MODEL_REVISIONS_KEPT`` of them
(:mod:`store.retention`). Revision ids given by a client are only ever compared with the
folder names listed here, never joined into a path.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from store import models, retention
from store.errors import CorruptModelError, NotFoundError
from store.naming import ModelRef


@dataclass(frozen=True)
class Revision:
    revision: str
    version: str | None  # the model's content hash (the memory bank's)
    threshold: float | None
    # "conformal" or "ok_percentile" (set by training), or "ok_ng"; None: none
    calibration: str | None
    saved_at: float | None  # when this revision was first stored (seconds since the epoch)
    current: bool
    calibration_version: str | None = None  # models.calibration_version; None: uncalibrated

    @property
    def calibrated(self) -> bool:
        """The threshold was calibrated on OK *and* NG scores, not only trained."""
        return self.calibration == "ok_ng"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "calibrated": self.calibrated}


def revisions(ref: ModelRef) -> list[Revision]:
    """Every revision stored for ``ref``: the current one first, then the newest first.
    Empty for a model without a version record (legacy and pre-pointer layouts)."""
    pointer = models.read_pointer(ref.directory, ref.base_name)
    if pointer is None:
        return []
    history: dict[str, Any] = pointer.get("history") or {}
    out = []
    for name in retention.names(models.versions_dir(ref.directory, ref.base_name)):
        files = models.revision_files(ref.directory, ref.base_name, name)
        if models.NPZ not in files:
            continue  # removed by a writer meanwhile
        record = history.get(name) or {}
        calib = models.calibration_facts(files.get(models.CALIB))
        saved_at = record.get("saved_at") or files[models.NPZ].parent.stat().st_mtime
        version = record.get("version") or models.npz_version(files[models.NPZ])
        current = name == pointer["revision"]
        out.append(
            Revision(name, version, calib.threshold, calib.method, saved_at, current, calib.version)
        )
    return sorted(out, key=lambda r: (not r.current, -(r.saved_at or 0.0), r.revision))


def find(ref: ModelRef, revision: str) -> Revision:
    """The stored revision named ``revision``; :class:`NotFoundError` for any other text."""
    for item in revisions(ref):
        if item.revision == revision:
            return item
    raise NotFoundError(
        f"no revision {revision!r} stored for {ref.describe()} "
        "(`bdi models --revisions` lists them)"
    )


def read(ref: ModelRef, revision: Revision) -> dict[str, bytes]:
    """The files of a revision ``{suffix: bytes}``, checked against the revision's id."""
    paths = models.revision_files(ref.directory, ref.base_name, revision.revision)
    try:
        files = {s: p.read_bytes() for s, p in paths.items()}
    except FileNotFoundError:
        files = {}
    digests = {s: models.digest(data) for s, data in files.items()}
    if models.NPZ not in files or models.revision_of(digests) != revision.revision:
        raise CorruptModelError(f"the files of revision {revision.revision} are damaged or gone")
    return files
