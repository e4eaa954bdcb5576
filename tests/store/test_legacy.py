"""The original backend's layouts are still read; new writes go to the recipe layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from store import CorruptModelError, ModelStore, naming
from tests.helpers.store import Trained, tiny_settings

ROLE, ROI = "Master 1", "inspection-1"  # the space is sanitised to "_" in legacy names


def _write(folder: Path, names: dict[str, str], trained: Trained) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for suffix, data in trained.files.items():
        (folder / names[suffix]).write_bytes(data)


def _triple(stem: str) -> dict[str, str]:
    return {s: f"{stem}{s}" for s in (".npz", "_index.faiss", "_calib.json")}


ORIGINAL = {".npz": "memory.npz", "_index.faiss": "index.faiss", "_calib.json": "calib.json"}
FOLDER_NAMINGS = {
    "base_name": _triple(naming.base_name(ROLE, ROI)),
    "model": _triple("model"),
    "original": ORIGINAL,
}


def test_flat_legacy_model_loads(store: ModelStore, root: Path, model_a: Trained) -> None:
    _write(root, _triple("Master_1_inspection-1"), model_a)
    model = store.load_model(store.ref("any-recipe", ROLE, ROI))
    assert model.version == model_a.version
    assert model.threshold == pytest.approx(model_a.model.threshold)
    state = store.state(store.ref("any-recipe", ROLE, ROI))
    assert state.source == "legacy_flat" and state.ready and state.version == model_a.version


@pytest.mark.parametrize("naming_kind", sorted(FOLDER_NAMINGS))
def test_folder_legacy_model_loads(
    store: ModelStore, root: Path, model_a: Trained, naming_kind: str
) -> None:
    _write(root / "Master_1" / "inspection-1", FOLDER_NAMINGS[naming_kind], model_a)
    model = store.load_model(store.ref("default", ROLE, ROI))
    assert model.version == model_a.version
    assert model.index.size == model_a.model.index.size
    assert model.threshold == pytest.approx(model_a.model.threshold)
    assert store.state(store.ref(None, ROLE, ROI)).source == "legacy_dir"
    assert store.model_version(store.ref(None, ROLE, ROI)) == model_a.version


def test_recipe_layout_wins_then_flat_then_folder(
    store: ModelStore, root: Path, model_a: Trained, model_b: Trained, make_trained
) -> None:
    _write(root / "Master_1" / "inspection-1", ORIGINAL, make_trained(3))
    assert store.model_version(store.ref("r", ROLE, ROI)) == make_trained(3).version
    _write(root, _triple("Master_1_inspection-1"), model_b)
    assert store.load_model(store.ref("r", ROLE, ROI)).version == model_b.version
    store.save_model(store.ref("r", ROLE, ROI), model_a.model)
    assert store.load_model(store.ref("r", ROLE, ROI)).version == model_a.version
    assert store.state(store.ref("r", ROLE, ROI)).source == "recipe"
    assert (root / "Master_1_inspection-1.npz").read_bytes() == model_b.files[".npz"]  # untouched


def test_recalibrating_a_legacy_model_moves_it_to_the_recipe_layout(
    store: ModelStore, root: Path, model_a: Trained, engine
) -> None:
    _write(root, _triple("Master_1_inspection-1"), model_a)
    calibration = engine.calibrate(model_a.model, [1.0, 2.0], [5.0, 6.0])
    saved = store.save_calibration(store.ref("r", ROLE, ROI), calibration)
    assert saved.version == model_a.version
    assert store.state(store.ref("r", ROLE, ROI)).source == "recipe"
    assert (root / "Master_1_inspection-1_calib.json").read_bytes() == model_a.files["_calib.json"]


def test_legacy_can_be_switched_off(root: Path, model_a: Trained) -> None:
    _write(root, _triple("Master_1_inspection-1"), model_a)
    store = ModelStore(tiny_settings(root), legacy=False)
    assert store.find_model(store.ref("r", ROLE, ROI)) is None
    assert "legacy" not in store.manifest()


def test_original_npz_schema_is_reported_not_guessed(store: ModelStore, root: Path) -> None:
    folder = root / "Master_1" / "inspection-1"
    folder.mkdir(parents=True)
    np.savez(folder / "memory.npz", emb=np.zeros((4, 8), np.float32), token_h=2, token_w=2)
    assert store.state(store.ref("r", ROLE, ROI)).has_memory
    with pytest.raises(CorruptModelError):
        store.load_model(store.ref("r", ROLE, ROI))


def test_manifest_lists_legacy_files(store: ModelStore, root: Path, model_a: Trained) -> None:
    _write(root, _triple("Master_1_inspection-1"), model_a)
    _write(root / "Master_1" / "inspection-2", ORIGINAL, model_a)
    legacy = store.manifest()["legacy"]["models"]
    assert {"source": "legacy_flat", "path": "Master_1_inspection-1.npz"} in legacy
    assert {"source": "legacy_dir", "path": "Master_1/inspection-2/memory.npz"} in legacy


def _png(value: int) -> bytes:
    import cv2

    return cv2.imencode(".png", np.full((8, 8, 3), value, np.uint8))[1].tobytes()


def test_legacy_dataset_is_listed_read_and_counted(store: ModelStore, root: Path) -> None:
    folder = root / "datasets" / ROLE / ROI / "ok"  # ids verbatim, as the original wrote them
    folder.mkdir(parents=True)
    (folder / "20240101-120000-000001.png").write_bytes(_png(7))
    new = store.datasets.add(store.ref("r", ROLE, ROI), "ok", np.zeros((8, 8, 3), np.uint8))
    items = store.datasets.list_images(store.ref("r", ROLE, ROI))["ok"]
    assert [(i.name, i.legacy) for i in items] == [
        ("20240101-120000-000001.png", True),
        (new.name, False),
    ]
    assert store.datasets.read(
        store.ref("r", ROLE, ROI), "ok", "20240101-120000-000001.png"
    ) == _png(7)
    assert store.datasets.counts(store.ref("r", ROLE, ROI)) == {"ok": 2, "ng": 0}
    assert store.manifest()["legacy"]["datasets"] == [
        {"role_id": ROLE, "roi_id": ROI, "counts": {"ok": 1, "ng": 0}}
    ]
    assert len(store.datasets.load(store.ref("r", ROLE, ROI), "ok")) == 2
    assert (
        store.datasets.clear(store.ref("r", ROLE, ROI)) == 1
    )  # legacy images stay unless asked for
    assert store.datasets.clear(store.ref("r", ROLE, ROI), include_legacy=True) == 1
    assert not list(folder.iterdir())


def test_unsafe_ids_never_reach_legacy_datasets(store: ModelStore, root: Path) -> None:
    (root / "datasets" / "x" / "ok").mkdir(parents=True)
    (root / "datasets" / "x" / "ok" / "a.png").write_bytes(_png(1))
    # role ".." would have pointed the original backend at <root>/datasets/../x/ok
    assert store.datasets.list_images(store.ref("r", "..", "x"))["ok"] == []
    assert store.datasets.list_images(store.ref("r", "datasets", ".."))["ok"] == []
