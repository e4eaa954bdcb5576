"""The trace store as the REST API reads it (docs/TRACE.md, "Reading the trace").

:class:`TraceReader` opens the database named by the settings on the first request and
only reads it: the tables are created and migrated by ``bdi trace``, never here, and while
there is no database the endpoints answer 503 ``trace_unavailable`` saying so. The
functions below are the blocking work of the endpoints (run in a worker thread): a part
with its frames, a page of verdicts, a frame, its crop, and its heatmap drawn on demand
with the model revision that judged the frame.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

from edge.api.errors import BdiError, Gone, NotFound, Unavailable
from store import ModelRef, ModelStore, history, models
from store.errors import CorruptModelError
from store.trace import Cursor, Page, TraceDbError, TraceStore, VerdictFilter, queries
from store.trace.crops import CropFiles
from store.trace.db import Database, db_errors, target
from store.trace.schema import SCHEMA_VERSION

if TYPE_CHECKING:
    from configs.settings import Settings
    from engine import Engine
    from engine.patchcore import PatchCoreModel

log = logging.getLogger(__name__)
T = TypeVar("T")
GB = 1 << 30
SCORED = frozenset({"OK", "NG"})  # verdicts a model's anomaly map stands behind
MEDIA = {"png": "image/png", "jpg": "image/jpeg"}


def unavailable(message: str) -> Unavailable:
    return Unavailable(message, code="trace_unavailable")


class TraceReader:
    """The trace database of ``settings``, opened on first use and shared by the worker
    threads (one at a time: a database connection is not shared across threads at once)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._store: TraceStore | None = None
        self._lock = threading.Lock()

    def where(self) -> str:
        """Where the database is, as the caller is told (a setting, not a server path)."""
        if not self.settings.trace_db_url:
            return "BDI_MODELS_DIR/trace/trace.db"
        return "BDI_TRACE_DB_URL"

    def read(self, func: Callable[[TraceStore], T]) -> T:
        """``func(store)`` under the lock; a failing database is closed (the next request
        opens it again) and answered 503."""
        with self._lock:
            store = self._open()
            try:
                return func(store)
            except db_errors() as exc:
                log.warning("trace database read failed", extra={"error": str(exc)})
                self._close()
                raise unavailable(
                    f"the trace database ({self.where()}) failed to answer; try again"
                ) from None

    def _open(self) -> TraceStore:
        if self._store is not None:
            return self._store
        s = self.settings
        run = "run `bdi trace` (or `bdi up`, which runs it) to create and fill it"
        try:
            where = target(s.trace_db_url, s.models_dir)
            if where.dialect == "sqlite" and not Path(where.location).is_file():
                raise unavailable(f"no trace database yet at {self.where()}: {run}")
            db = Database.open(where)
        except TraceDbError as exc:
            log.warning("trace database unavailable", extra={"error": str(exc)})
            raise unavailable(f"the trace database ({self.where()}) cannot be opened") from None
        failures: tuple[type[BaseException], ...] = (*db_errors(), IndexError)
        try:
            found = int(db.read("SELECT version FROM schema_version")[0][0])
        except failures:
            db.close()
            raise unavailable(
                f"the trace database ({self.where()}) has no tables yet: {run}"
            ) from None
        if found != SCHEMA_VERSION:
            db.close()
            step = "upgrade bdi" if found > SCHEMA_VERSION else "run `bdi trace` to migrate it"
            raise unavailable(
                f"the trace database ({self.where()}) has schema version {found}, this API "
                f"reads {SCHEMA_VERSION}: {step}"
            )
        self._store = TraceStore(
            db, CropFiles(s.models_dir / "trace"), ok_sample=s.trace_ok_sample,
            max_bytes=int(s.trace_max_gb * GB), ng_days=s.trace_ng_days,
        )  # fmt: skip
        return self._store

    def _close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def close(self) -> None:
        with self._lock:
            self._close()


# --- links and the shape of a frame -------------------------------------------------------
def frame_url(frame_id: str, what: str = "") -> str:
    return f"/frames/{quote(frame_id, safe='')}{what}"


def part_url(part_id: str | None) -> str | None:
    return None if part_id is None else f"/parts/{quote(part_id, safe='')}"


def no_crop(state: tuple[str | None, str | None] | None) -> str | None:
    """Why a frame has no crop to show (None: it has one)."""
    if state is None:
        return "no image of this frame is stored: bdi trace has not read it from bdi.frames"
    keep, kind = state
    if kind is not None:
        return None
    if keep == "drop":
        return "not kept: an OK frame outside the sample of 1 in BDI_TRACE_OK_SAMPLE"
    return "evicted to keep the crops within BDI_TRACE_MAX_GB"


def _text(doc: dict[str, Any], *names: str) -> str | None:
    for name in names:
        value = doc.get(name)
        if isinstance(value, str) and value:
            return value
    return None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def frame_public(
    doc: dict[str, Any], stored: dict[str, Any] | None, crop: dict[str, Any]
) -> dict[str, Any]:
    """One frame of a part: what the part record (or late record) says of it, completed by
    its stored frame verdict, with the links to its crop and heatmap."""
    merged = {**(stored or {}), **{k: v for k, v in doc.items() if v is not None}}
    frame_id = str(merged["frame_id"])
    why = no_crop(crop.get(frame_id))
    verdict = _text(merged, "verdict")
    model_version = _text(merged, "model_version")
    drawable = why is None and verdict in SCORED and model_version is not None
    regions = merged.get("regions")
    return {
        "frame_id": frame_id,
        "role_id": _text(merged, "role_id", "role"),
        "roi_id": _text(merged, "roi_id", "roi"),
        "verdict": verdict,
        "score": _number(merged.get("score")),
        "threshold": _number(merged.get("threshold")),
        "p_value": _number(merged.get("p_value")),
        "regions": regions if isinstance(regions, list) else [],
        "error_class": _text(merged, "error_class"),
        **{k: _text(merged, k) for k in PROVENANCE},
        "produced_at": _text(stored or {}, "produced_at"),
        "seen_at": _text(merged, "seen_at"),
        "verdict_stored": stored is not None,
        "frame_url": frame_url(frame_id),
        "crop_url": frame_url(frame_id, "/crop") if why is None else None,
        "heatmap_url": frame_url(frame_id, "/heatmap") if drawable else None,
        "no_crop": why,
    }


RECORD_TEXTS = ("verdict", "recipe_id", "first_frame_at", "last_frame_at", "decided_at",
                "code_version")  # fmt: skip
PROVENANCE = (
    "model_version", "calibration_version", "image_sha256", "code_version", "settings_fingerprint",
)  # fmt: skip


# --- the endpoints' work ------------------------------------------------------------------
def part(reader: TraceReader, part_id: str) -> dict[str, Any]:
    """``GET /parts/{part_id}``: its record and frames; 404 when nothing is known of it.
    Frames stored with its id but no record yet: 200 with ``decided: false``."""

    def read(store: TraceStore) -> tuple[dict[str, Any] | None, dict[str, Any]]:
        found = store.part(part_id)
        if found is None:
            return None, {}
        ids = [f["frame_id"] for f in found["frames"] + found["other_frames"]]
        ids += [_late_frame(doc).get("frame_id") for doc in found["late"]]
        return found, queries.crops_of(store.db, [i for i in ids if isinstance(i, str)])

    found, crop = reader.read(read)
    if found is None:
        raise NotFound(f"no part {part_id!r} in the trace: no part record and no frame verdict "
                       "names it", code="part_not_found")  # fmt: skip
    stored = {f["frame_id"]: f["stored_verdict"] for f in found["frames"] + found["other_frames"]}
    record: dict[str, Any] = found["record"] or {}

    def frames(docs: Any) -> list[dict[str, Any]]:
        usable = [d for d in docs or () if isinstance(d, dict) and _text(d, "frame_id")]
        return [frame_public(d, stored.get(d["frame_id"]), crop) for d in usable]

    late = [_late_frame(doc) for doc in found["late"]]
    late_ids = {f.get("frame_id") for f in late}
    others = [f for f in found["other_frames"] if f["frame_id"] not in late_ids]
    pending = (
        f"no part record yet: {len(others)} frame verdicts stored with this part_id (the part "
        "is open, or its recipe has no inspection plan)"
    )
    return {
        **_record_fields(record),
        "part_id": part_id,
        "decided": bool(record),
        "reason": _text(record, "reason") or (None if record else pending),
        "frames": frames(record.get("frames")),
        "unexpected": frames(record.get("unexpected")),
        "other_frames": [
            frame_public(f["stored_verdict"], f["stored_verdict"], crop) for f in others
        ],
        "late": frames(late),
        "record": found["record"],
    }


def recent_parts(
    reader: TraceReader, verdict: tuple[str, ...] | None, recipe_id: str | None, limit: int
) -> dict[str, Any]:
    """``GET /parts``: the newest decided parts, each in brief."""
    records = reader.read(lambda s: queries.recent_parts(s.db, verdict, recipe_id, limit))

    def brief(record: dict[str, Any]) -> dict[str, Any]:
        frames = [f for f in record.get("frames") or () if isinstance(f, dict)]
        return {
            **_record_fields(record), "part_id": str(record.get("part_id")),
            "reason": _text(record, "reason"), "frames": len(frames),
            "not_ok": sum(f.get("verdict") != "OK" for f in frames),
            "part_url": part_url(str(record.get("part_id"))),
        }  # fmt: skip

    parts = [brief(r) for r in records]
    return {"parts": parts, "count": len(parts)}


def _record_fields(record: dict[str, Any]) -> dict[str, Any]:
    """The part record's own fields, each checked for its type (None where absent)."""
    plan, deadline = record.get("plan_version"), record.get("deadline_ms")
    return {
        **{k: _text(record, k) for k in RECORD_TEXTS},
        "plan_version": None if plan is None else str(plan),
        "deadline_ms": deadline
        if isinstance(deadline, int) and not isinstance(deadline, bool)
        else None,
        "missing": [m for m in record.get("missing") or () if isinstance(m, dict)],
    }


def _late_frame(doc: dict[str, Any]) -> dict[str, Any]:
    frame = doc.get("frame")
    return frame if isinstance(frame, dict) else doc


def verdicts(
    reader: TraceReader, where: VerdictFilter, after: Cursor | None, limit: int
) -> dict[str, Any]:
    page: Page = reader.read(lambda store: store.verdicts(where, after, limit))
    for doc in page.verdicts:
        doc["frame_url"] = frame_url(str(doc["frame_id"]))
        doc["part_url"] = part_url(_text(doc, "part_id"))
    cursor = page.next.encode() if page.next is not None else None
    return {"verdicts": page.verdicts, "count": len(page.verdicts), "next_cursor": cursor}


def _frame_and_crop(
    store: TraceStore, frame_id: str
) -> tuple[dict[str, Any] | None, dict[str, tuple[str | None, str | None]]]:
    return store.frame(frame_id), queries.crops_of(store.db, [frame_id])


def frame(reader: TraceReader, frame_id: str) -> dict[str, Any]:
    """``GET /frames/{frame_id}``: the stored verdict, its image, links; 404 when unknown."""
    found, crop = reader.read(lambda store: _frame_and_crop(store, frame_id))
    if found is None:
        raise _frame_not_found(frame_id)
    doc: dict[str, Any] = found["verdict"] or {}
    image = found["image"]
    part_id = _text(doc, "part_id") or (image or {}).get("part_id")
    why = no_crop(crop.get(frame_id))
    drawable = why is None and _text(doc, "verdict") in SCORED and _text(doc, "model_version")
    return {
        "frame_id": frame_id,
        "part_id": part_id,
        "part_url": part_url(part_id),
        "verdict": found["verdict"],
        "image": None if image is None else {"sha256": image["sha256"], "size": image["size"]},
        "crop_url": frame_url(frame_id, "/crop") if why is None else None,
        "heatmap_url": frame_url(frame_id, "/heatmap") if drawable else None,
        "no_crop": why,
    }


def _frame_not_found(frame_id: str) -> NotFound:
    return NotFound(f"no frame {frame_id!r} in the trace", code="frame_not_found")


def crop(reader: TraceReader, frame_id: str) -> tuple[bytes, str, str]:
    """The crop's bytes, media type and SHA-256; 404 ``crop_not_kept`` saying why not."""
    found, states = reader.read(lambda store: _frame_and_crop(store, frame_id))
    if found is None:
        raise _frame_not_found(frame_id)
    why = no_crop(states.get(frame_id)) or "evicted just now"
    if found["crop"] is not None:
        path: Path = found["crop"]["path"]
        try:
            data = path.read_bytes()
        except FileNotFoundError:  # evicted between the query and the read
            pass
        else:
            return data, MEDIA.get(path.suffix.lstrip("."), "application/octet-stream"), path.stem
    raise NotFound(f"no crop of frame {frame_id!r}: {why}", code="crop_not_kept")


def heatmap(
    reader: TraceReader, store: ModelStore, engine: Engine, frame_id: str, max_pixels: int
) -> bytes:
    """The crop scored again by the model revision that judged it, drawn as the consumers
    draw heatmaps (full red at twice the threshold). 404 when there is no crop or the frame
    was not scored by a model; 410 ``model_version_gone`` when that revision is no longer
    stored."""
    from edge.api.service import decode
    from engine import InferItem

    found = reader.read(lambda trace: trace.frame(frame_id))
    if found is None:
        raise _frame_not_found(frame_id)
    doc: dict[str, Any] = found["verdict"] or {}
    version = _text(doc, "model_version")
    if found["verdict"] is None or _text(doc, "verdict") not in SCORED or version is None:
        what = "no verdict of it is stored yet" if found["verdict"] is None else (
            f"its verdict is {doc.get('verdict')}, not scored by a model")  # fmt: skip
        raise NotFound(f"no heatmap of frame {frame_id!r}: {what}", code="heatmap_unavailable")
    data, _, _ = crop(reader, frame_id)
    ref = store.ref(_text(doc, "recipe_id"), str(doc.get("role_id")), str(doc.get("roi_id")))
    model = model_at(store, ref, version, _text(doc, "calibration_version"))
    (result,) = engine.infer([InferItem(model, decode(data, max_pixels), want_heatmap=True)])
    if result.heatmap_png is None:
        raise BdiError(f"frame {frame_id}: {result.error or 'no heatmap drawn'}", 500,
                       "heatmap_failed")  # fmt: skip
    return result.heatmap_png


def model_at(
    store: ModelStore, ref: ModelRef, version: str, calibration_version: str | None
) -> PatchCoreModel:
    """The stored model whose ``version`` is ``version``: the current one when it is, else
    the newest kept revision of it (the one with the same calibration first, so that the
    colours mean what they meant). 410 when the store no longer keeps it."""
    current = store.locate(ref)
    if current is not None and store.model_version(ref) == version:
        model = store.load_model(ref)
        if calibration_version is None or model.calibration_version == calibration_version:
            return model
    kept = [r for r in store.revisions(ref) if r.version == version]
    kept.sort(key=lambda r: r.calibration_version != calibration_version)  # stable: newest
    for revision in kept:
        try:
            history.read(ref, revision)  # checks the files against the revision's id
            files = models.revision_files(ref.directory, ref.base_name, revision.revision)
            loc = models.ModelLocation("recipe", files, (), revision.revision, version)
            return models.load_location(loc, store.nprobe, store.use_gpu, verify=False)
        except (FileNotFoundError, CorruptModelError):  # removed by a newer write meanwhile
            continue
    if current is not None and store.model_version(ref) == version:
        return store.load_model(ref)  # another calibration, the same memory bank
    raise Gone(
        f"model version {version} of {ref.describe()} is no longer stored (the store keeps "
        "the newest BDI_MODEL_REVISIONS_KEPT revisions of a model): no heatmap can be drawn",
        code="model_version_gone",
    )
