"""The model artifact: ``<base>.npz`` + ``<base>_index.faiss`` + ``<base>_calib.json``.

This module only (de)serialises; where the files live and how they are written atomically
is the store's business. Nothing is pickled.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import faiss
import numpy as np
import orjson

from engine.calibration import Calibration
from engine.device import COMPUTE_DTYPES
from engine.errors import EngineError
from engine.knn import KnnIndex
from engine.patchcore import ModelMeta, PatchCoreModel

NPZ = ".npz"
# the per-position OK baseline's array in the npz (its name in the file format)
BASELINE = "nominal"
INDEX = "_index.faiss"
CALIB = "_calib.json"


class ArtifactError(EngineError):
    """A model file is missing, unreadable or inconsistent."""


def artifact_paths(directory: Path, base_name: str) -> dict[str, Path]:
    return {s: directory / f"{base_name}{s}" for s in (NPZ, INDEX, CALIB)}


def to_bytes(model: PatchCoreModel) -> dict[str, bytes]:
    """Serialise a model to ``{suffix: bytes}``; the calibration file only when calibrated."""
    buf = io.BytesIO()
    arrays = {
        "memory_bank": model.index.bank(),
        "meta": np.array(json.dumps(model.meta.to_dict(), sort_keys=True)),
        "version": np.array(model.version),
    }
    if model.baseline is not None:
        arrays[BASELINE] = model.baseline
    if model.shortlist is not None:
        arrays["shortlist"] = model.shortlist
    if model.held_out is not None:
        arrays["held_out"] = model.held_out
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    index = model.index.cpu_index()
    out = {NPZ: buf.getvalue(), INDEX: faiss.serialize_index(index).tobytes()}
    if model.calibration is not None:
        out[CALIB] = calibration_bytes(model.calibration)
    return out


def calibration_bytes(calibration: Calibration) -> bytes:
    return orjson.dumps(calibration.to_dict(), option=orjson.OPT_INDENT_2)


def load(directory: Path, base_name: str, nprobe: int = 8, use_gpu: bool = False) -> PatchCoreModel:
    paths = artifact_paths(directory, base_name)
    if not paths[NPZ].is_file():
        raise ArtifactError(f"no memory bank at {paths[NPZ]}")
    try:
        with np.load(paths[NPZ], allow_pickle=False) as npz:
            bank = npz["memory_bank"].astype(np.float32, copy=False)
            meta = ModelMeta.from_dict(json.loads(str(npz["meta"])))
            version = str(npz["version"]) if "version" in npz else ""
            baseline = npz[BASELINE].astype(np.float32) if BASELINE in npz else None
            shortlist = npz["shortlist"].astype(np.int32) if "shortlist" in npz else None
            held_out = npz["held_out"].astype(bool) if "held_out" in npz else None
    except Exception as exc:  # zip, header and payload damage surface as many types
        raise ArtifactError(f"unreadable memory bank {paths[NPZ]}: {exc}") from exc
    # checked now, not at the model's first frame (JSON may hold any type there)
    if not isinstance(meta.compute_dtype, str) or meta.compute_dtype not in COMPUTE_DTYPES:
        raise ArtifactError(
            f"{paths[NPZ]} records compute dtype {meta.compute_dtype!r}; "
            f"expected one of {', '.join(COMPUTE_DTYPES)}"
        )
    if paths[INDEX].is_file():
        try:
            index = KnnIndex.read(paths[INDEX], nprobe=nprobe)
        except (RuntimeError, TypeError) as exc:
            raise ArtifactError(f"unreadable index {paths[INDEX]}: {exc}") from exc
        if index.size != len(bank):
            raise ArtifactError(f"{paths[INDEX]} holds {index.size} rows, bank {len(bank)}")
        # outside the file checks: a GPU failure here (out of memory, a driver error) is a
        # DeviceError, never a damaged model
        if use_gpu:
            index = index.to_device()
    else:  # older artifacts may carry the bank only; rebuild the exact index
        index = KnnIndex("exact", use_gpu=use_gpu).fit(bank)
    calibration = None
    if paths[CALIB].is_file():
        try:
            calibration = Calibration.from_dict(orjson.loads(paths[CALIB].read_bytes()))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"unreadable calibration {paths[CALIB]}: {exc}") from exc
    try:
        return PatchCoreModel(meta, index, calibration, version, baseline, shortlist, held_out)
    except ValueError as exc:  # a baseline or shortlist that does not fit the model
        raise ArtifactError(f"inconsistent memory bank {paths[NPZ]}: {exc}") from exc


def save(model: PatchCoreModel, directory: Path, base_name: str) -> dict[str, Path]:
    """Plain write of the triple (the store wraps this with atomic replace and locks)."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = artifact_paths(directory, base_name)
    for suffix, data in to_bytes(model).items():
        paths[suffix].write_bytes(data)
    return paths
