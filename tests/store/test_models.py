"""Saving and loading models: layout, versions, recalibration, mm_per_px lock, cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from store import (
    ConflictError,
    CorruptModelError,
    InvalidValueError,
    MissingModelError,
    ModelStore,
    models,
)
from tests.helpers.store import Trained, tiny_settings

ROLE, ROI = "Master1", "inspection-1"


def _versions(store: ModelStore, recipe: str = "disc-a") -> list[str]:
    ref = store.ref(recipe, ROLE, ROI)
    return sorted(p.name for p in models.versions_dir(ref.directory, ref.base_name).iterdir())


def test_save_then_load_in_the_documented_layout(store: ModelStore, model_a: Trained) -> None:
    saved = store.save_model(store.ref("Disc-A", ROLE, ROI), model_a.model)
    folder = store.root / "recipes" / "disc-a" / ROI
    base = "TWFzdGVyMQ__aW5zcGVjdGlvbi0x"
    for suffix in (".npz", "_index.faiss", "_calib.json", "_version.json"):
        assert (folder / f"{base}{suffix}").is_file()
    assert (folder / f"{base}.npz").read_bytes() == model_a.files[".npz"]
    assert saved.version == model_a.version
    loaded = store.load_model(store.ref("disc-a", ROLE, ROI))
    assert loaded.version == model_a.version
    assert loaded.index.size == model_a.model.index.size
    assert loaded.threshold == pytest.approx(model_a.model.threshold)
    assert loaded.meta.mm_per_px == 0.1


def test_recipe_ids_are_case_insensitive(store: ModelStore, model_a: Trained) -> None:
    store.save_model(store.ref("DISC-A", ROLE, ROI), model_a.model)
    assert store.model_version(store.ref("disc-a", ROLE, ROI)) == model_a.version
    assert store.load_model(store.ref("Disc-a", ROLE, ROI)).version == model_a.version
    assert store.recipes() == ["disc-a"]


def test_roles_and_rois_are_case_sensitive(store: ModelStore, model_a: Trained) -> None:
    store.save_model(store.ref("r", ROLE, ROI), model_a.model)
    assert store.find_model(store.ref("r", ROLE.lower(), ROI)) is None


def test_model_version_does_not_need_a_load(store: ModelStore, model_a: Trained) -> None:
    assert store.model_version(store.ref("r", ROLE, ROI)) is None
    store.save_model(store.ref("r", ROLE, ROI), model_a.model)
    assert store.model_version(store.ref("r", ROLE, ROI)) == model_a.version
    assert len(store.cache) == 0


def test_missing_model_is_a_400(store: ModelStore) -> None:
    with pytest.raises(MissingModelError):
        store.load_model(store.ref("r", ROLE, ROI))
    assert store.find_model(store.ref("r", ROLE, ROI)) is None


def test_new_version_keeps_the_previous_one_only(
    root: Path, model_a: Trained, model_b: Trained, make_trained
) -> None:
    store = ModelStore(tiny_settings(root, model_revisions_kept=2))
    first = store.save_model(store.ref("disc-a", ROLE, ROI), model_a.model)
    second = store.save_model(store.ref("disc-a", ROLE, ROI), model_b.model)
    assert _versions(store) == sorted([first.revision, second.revision])
    third = store.save_model(store.ref("disc-a", ROLE, ROI), make_trained(3).model)
    assert _versions(store) == sorted([second.revision, third.revision])
    ref = store.ref("disc-a", ROLE, ROI)
    pointer = models.read_pointer(ref.directory, ref.base_name)
    assert pointer is not None
    assert pointer["revision"] == third.revision and pointer["previous"] == second.revision
    assert store.load_model(store.ref("disc-a", ROLE, ROI)).version == make_trained(3).version


def test_recalibration_keeps_version_and_shares_the_bank(
    store: ModelStore, model_a: Trained, engine
) -> None:
    first = store.save_model(store.ref("r", ROLE, ROI), model_a.model)
    calibration = engine.calibrate(model_a.model, [1.0, 2.0, 3.0], [10.0, 12.0])
    second = store.save_calibration(store.ref("r", ROLE, ROI), calibration)
    assert second.version == first.version and second.revision != first.revision
    assert os.stat(first.files[".npz"]).st_ino == os.stat(second.files[".npz"]).st_ino
    assert store.load_model(store.ref("r", ROLE, ROI)).threshold == pytest.approx(
        calibration.threshold
    )
    assert store.state(store.ref("r", ROLE, ROI)).threshold == pytest.approx(calibration.threshold)


def test_a_model_without_calibration_drops_the_old_file(
    store: ModelStore, model_a: Trained
) -> None:
    store.save_model(store.ref("r", ROLE, ROI), model_a.model)
    bare = {s: b for s, b in model_a.files.items() if s != "_calib.json"}
    store.save_artifacts(store.ref("r", ROLE, ROI), bare, version=model_a.version, mm_per_px=0.1)
    ref = store.ref("r", ROLE, ROI)
    assert not (ref.directory / f"{ref.base_name}_calib.json").exists()
    assert store.load_model(store.ref("r", ROLE, ROI)).calibration is None
    assert not store.state(store.ref("r", ROLE, ROI)).ready


def test_mm_per_px_is_locked_at_first_training(
    store: ModelStore, model_a: Trained, make_trained
) -> None:
    assert store.check_mm_per_px("r", 0.2) is None  # nothing locked yet
    store.save_model(store.ref("r", ROLE, ROI), model_a.model)  # trained at 0.1
    assert store.recipe_mm_per_px("R") == 0.1
    assert store.check_mm_per_px("r", 0.1) == 0.1
    with pytest.raises(ConflictError):
        store.check_mm_per_px("r", 0.2)
    with pytest.raises(ConflictError):
        store.save_model(store.ref("r", ROLE, "other-roi"), make_trained(1, mm_per_px=0.2).model)
    assert store.find_model(store.ref("r", ROLE, "other-roi")) is None
    store.save_model(
        store.ref("r", ROLE, "third"), make_trained(1, mm_per_px=None).model
    )  # no scale: ok
    store.save_model(store.ref("other-recipe", ROLE, ROI), make_trained(1, mm_per_px=0.2).model)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf"), "x"])
def test_mm_per_px_must_be_positive(store: ModelStore, bad) -> None:
    with pytest.raises(InvalidValueError):
        store.check_mm_per_px("r", bad)


def test_tampered_files_are_refused(store: ModelStore, model_a: Trained) -> None:
    saved = store.save_model(store.ref("r", ROLE, ROI), model_a.model)
    path = saved.files["_index.faiss"]
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))  # same size: only the hash can tell
    with pytest.raises(CorruptModelError):
        store.load_model(store.ref("r", ROLE, ROI))
    store.save_model(
        store.ref("r", ROLE, ROI), model_a.model
    )  # saving the same model again heals it
    assert store.load_model(store.ref("r", ROLE, ROI)).version == model_a.version


def test_pre_pointer_files_in_the_recipe_layout_still_load(
    store: ModelStore, model_a: Trained, model_b: Trained
) -> None:
    ref = store.ref("r", ROLE, ROI)
    ref.directory.mkdir(parents=True)
    for suffix, data in model_a.files.items():
        (ref.directory / f"{ref.base_name}{suffix}").write_bytes(data)
    assert store.state(store.ref("r", ROLE, ROI)).source == "recipe_unversioned"
    assert store.load_model(store.ref("r", ROLE, ROI)).version == model_a.version
    store.save_model(store.ref("r", ROLE, ROI), model_b.model)
    assert store.state(store.ref("r", ROLE, ROI)).source == "recipe"
    assert store.load_model(store.ref("r", ROLE, ROI)).version == model_b.version


def test_model_key_separates_models_of_one_roi(
    store: ModelStore, model_a: Trained, model_b: Trained
) -> None:
    store.save_model(store.ref("r", ROLE, ROI), model_a.model)
    store.save_model(store.ref("r", ROLE, ROI, model_key="v2/../x"), model_b.model)
    assert store.load_model(store.ref("r", ROLE, ROI)).version == model_a.version
    assert (
        store.load_model(store.ref("r", ROLE, ROI, model_key="v2/../x")).version == model_b.version
    )
    assert (store.root / "recipes" / "r" / "v2_.._x").is_dir()


def test_cache_returns_the_loaded_model_until_another_process_writes(
    root: Path, model_a: Trained, model_b: Trained
) -> None:
    worker = ModelStore(tiny_settings(root))
    trainer = ModelStore(tiny_settings(root))  # another process, as far as the files go
    trainer.save_model(trainer.ref("r", ROLE, ROI), model_a.model)
    first = worker.load_model(worker.ref("r", ROLE, ROI))
    assert worker.load_model(worker.ref("r", ROLE, ROI)) is first
    assert worker.cache.loads == 1
    trainer.save_model(trainer.ref("r", ROLE, ROI), model_b.model)
    second = worker.load_model(worker.ref("r", ROLE, ROI))
    assert second is not first and second.version == model_b.version
    assert worker.load_model(worker.ref("r", ROLE, ROI)) is second


def test_cache_is_bounded(root: Path, make_trained) -> None:
    store = ModelStore(tiny_settings(root, cache_max_entries=2))
    for roi in ("a", "b", "c"):
        store.save_model(store.ref("r", ROLE, roi), make_trained(1).model)
        store.load_model(store.ref("r", ROLE, roi))
    assert len(store.cache) == 2


def test_sweep_repairs_top_level_links(store: ModelStore, model_a: Trained) -> None:
    store.save_model(store.ref("r", ROLE, ROI), model_a.model)
    ref = store.ref("r", ROLE, ROI)
    top = ref.directory / f"{ref.base_name}_index.faiss"
    top.unlink()  # as if killed between the pointer swap and the re-linking
    (ref.directory / f".{ref.base_name}.npz.123.abcd.tmp").write_bytes(b"junk")
    store.sweep()
    assert top.read_bytes() == model_a.files["_index.faiss"]
    assert not list(ref.directory.glob(".*.tmp"))
