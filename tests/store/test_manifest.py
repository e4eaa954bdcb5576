"""Manifest and state: what exists per recipe / role / ROI, and readiness."""

from __future__ import annotations

import numpy as np
import pytest

from store import InvalidIdError, ModelStore
from tests.helpers.store import Trained

ROLE = "Master1"


def test_empty_store(store: ModelStore) -> None:
    assert store.manifest() == {
        "root": str(store.root),
        "recipes": [],
        "legacy": {"models": [], "datasets": []},
    }
    state = store.state(store.ref("r", ROLE, "roi"))
    assert state.source is None and not state.ready and state.dataset == {"ok": 0, "ng": 0}


def test_manifest_reports_models_datasets_and_readiness(
    store: ModelStore, model_a: Trained
) -> None:
    store.save_model(store.ref("Disc-A", ROLE, "calibrated"), model_a.model)
    bare = {s: b for s, b in model_a.files.items() if s != "_calib.json"}
    store.save_artifacts(
        store.ref("disc-a", ROLE, "bare"), bare, version=model_a.version, mm_per_px=0.1
    )
    store.datasets.add(store.ref("disc-a", ROLE, "calibrated"), "ok", np.zeros((4, 4, 3), np.uint8))
    store.datasets.add(store.ref("disc-a", ROLE, "data only"), "ng", np.zeros((4, 4, 3), np.uint8))
    store.datasets.add(store.ref("disc-b", "other", "x"), "ok", np.zeros((4, 4, 3), np.uint8))

    manifest = store.manifest()
    assert [r["recipe_id"] for r in manifest["recipes"]] == ["disc-a", "disc-b"]
    disc_a = manifest["recipes"][0]
    assert disc_a["mm_per_px"] == 0.1
    entries = {e["roi_id"]: e for e in disc_a["models"]}
    assert set(entries) == {"bare", "calibrated", "data only"}
    ready = entries["calibrated"]
    assert ready["ready"] and ready["version"] == model_a.version and ready["revision"]
    assert ready["has_calibration"] and ready["threshold"] == pytest.approx(model_a.model.threshold)
    assert ready["dataset"] == {"ok": 1, "ng": 0} and ready["source"] == "recipe"
    assert not entries["bare"]["ready"] and entries["bare"]["threshold"] is None
    assert entries["data only"]["source"] is None and entries["data only"]["dataset"]["ng"] == 1
    assert entries["data only"]["model_key"] == "data_only"

    only_b = store.manifest("DISC-B")
    assert [r["recipe_id"] for r in only_b["recipes"]] == ["disc-b"]
    with pytest.raises(InvalidIdError):
        store.manifest("../etc")


def test_state_of_a_damaged_model_is_not_ready(store: ModelStore, model_a: Trained) -> None:
    saved = store.save_model(store.ref("r", ROLE, "roi"), model_a.model)
    for path in saved.files.values():
        path.unlink()
    state = store.state(store.ref("r", ROLE, "roi"))
    assert not state.ready and state.error
    assert state.to_dict()["ready"] is False


def test_the_manifest_names_the_calibration_the_loaded_model_has(
    store: ModelStore, model_a: Trained
) -> None:
    """Recalibrating changes the calibration's version, not the model's; a calibration file
    written before calibration versions existed gets the one its loaded model names."""
    import orjson

    from tests.helpers.store import recalibrated

    ref = store.ref("r", ROLE, "roi")
    store.save_model(ref, model_a.model)
    first = store.state(ref)
    assert first.calibration_version == model_a.model.calibration.version
    again = recalibrated(model_a, model_a.model.threshold + 1.0)
    store.save_artifacts(ref, again.files, version=again.version, mm_per_px=0.1)
    second = store.state(ref)
    assert second.version == first.version
    assert second.calibration_version == again.model.calibration.version
    assert second.calibration_version not in (None, first.calibration_version)
    assert store.load_model(ref).calibration.version == second.calibration_version

    old = orjson.loads(again.files["_calib.json"])
    for name in ("method", "ok_reject_rate"):  # an older release's file
        del old[name]
    old["threshold"] = 12  # written as an integer
    files = {**again.files, "_calib.json": orjson.dumps(old)}
    store.save_artifacts(ref, files, version=again.version, mm_per_px=0.1)
    third = store.state(ref)
    assert third.calibration_version == store.load_model(ref).calibration.version
    assert third.calibration_version not in (first.calibration_version, second.calibration_version)
    entry = store.manifest("r")["recipes"][0]["models"][0]
    assert entry["calibration_version"] == third.calibration_version
    revisions = store.revisions(ref)
    assert [r.calibration_version for r in revisions][:1] == [third.calibration_version]
