"""Model artifact: the npz / faiss / calibration triple round-trips bit for bit."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from engine import artifact
from engine.artifact import ArtifactError
from engine.engine import Engine
from engine.patchcore import PatchCoreModel


@pytest.fixture(scope="module")
def model(trained_model: Callable[[str], PatchCoreModel]) -> PatchCoreModel:
    fitted = trained_model("stripes")
    assert fitted.calibration is not None
    return fitted


@pytest.fixture(scope="module")
def saved(model: PatchCoreModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("artifact")
    artifact.save(model, directory, "base")
    return directory


@pytest.fixture
def copy_of_saved(saved: Path, tmp_path: Path) -> Path:
    for f in saved.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    return tmp_path


def test_three_files_are_written(saved: Path) -> None:
    assert sorted(p.name for p in saved.iterdir()) == [
        "base.npz", "base_calib.json", "base_index.faiss",
    ]  # fmt: skip


def test_round_trip_preserves_the_model(model: PatchCoreModel, saved: Path) -> None:
    loaded = artifact.load(saved, "base")
    np.testing.assert_array_equal(loaded.index.bank(), model.index.bank())
    assert loaded.index.kind == model.index.kind
    assert loaded.meta == model.meta
    assert loaded.calibration == model.calibration
    assert loaded.threshold == model.threshold
    assert loaded.version == model.version != ""


def test_round_trip_scores_identically(
    model: PatchCoreModel, saved: Path, tiny_engine: Engine, make_texture, add_defect
) -> None:
    images = [make_texture("stripes", 50), add_defect(make_texture("stripes", 51))]
    loaded = artifact.load(saved, "base")
    before = tiny_engine.image_scores(model, images)
    after = tiny_engine.image_scores(loaded, images)
    np.testing.assert_array_equal(before, after)
    assert before[1] > before[0]


def test_version_is_the_content_hash(model: PatchCoreModel, saved: Path) -> None:
    """A loaded artifact keeps its stored version; recomputing it gives the same name."""
    loaded = artifact.load(saved, "base")
    rebuilt = PatchCoreModel(meta=loaded.meta, index=loaded.index)
    assert rebuilt.version == model.version


def test_the_baseline_keeps_its_file_format_names(model: PatchCoreModel, tmp_path: Path) -> None:
    """Artifacts written before and after name the baseline ``nominal`` (array) and
    ``nominal_images`` (metadata), so that stored models load and keep their versions."""
    baseline = np.linspace(0.0, 1.0, model.meta.grid[0] * model.meta.grid[1], dtype=np.float32)
    with_baseline = PatchCoreModel(
        meta=replace(model.meta, baseline_images=16), index=model.index,
        baseline=baseline.reshape(model.meta.grid),
    )  # fmt: skip
    artifact.save(with_baseline, tmp_path, "b")
    with np.load(tmp_path / "b.npz") as npz:
        assert "nominal" in npz and json.loads(str(npz["meta"]))["nominal_images"] == 16
    loaded = artifact.load(tmp_path, "b")
    assert loaded.meta.baseline_images == 16 and loaded.version == with_baseline.version
    np.testing.assert_array_equal(loaded.baseline, with_baseline.baseline)


def test_uncalibrated_model_has_no_calibration_file(model: PatchCoreModel, tmp_path: Path) -> None:
    bare = PatchCoreModel(meta=model.meta, index=model.index, version=model.version)
    paths = artifact.save(bare, tmp_path, "bare")
    assert not paths[artifact.CALIB].exists()
    loaded = artifact.load(tmp_path, "bare")
    assert loaded.calibration is None
    assert loaded.version == model.version


def test_bank_only_artifact_rebuilds_an_exact_index(
    model: PatchCoreModel, copy_of_saved: Path
) -> None:
    (copy_of_saved / "base_index.faiss").unlink()
    loaded = artifact.load(copy_of_saved, "base")
    assert loaded.index.kind == "exact"
    np.testing.assert_array_equal(loaded.index.bank(), model.index.bank())


def test_missing_npz(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="no memory bank"):
        artifact.load(tmp_path, "base")


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda data: b"\x00garbage\xff" * 50,
        lambda data: data[: len(data) // 2],  # a torn write: zip without central directory
        lambda data: data[:100] + bytes(b ^ 0xFF for b in data[100:400]) + data[400:],
    ],
    ids=["garbage", "truncated", "flipped-bytes"],
)
def test_corrupted_npz(copy_of_saved: Path, corrupt: Callable[[bytes], bytes]) -> None:
    npz = copy_of_saved / "base.npz"
    npz.write_bytes(corrupt(npz.read_bytes()))
    with pytest.raises(ArtifactError):
        artifact.load(copy_of_saved, "base")


def test_corrupted_index(copy_of_saved: Path) -> None:
    (copy_of_saved / "base_index.faiss").write_bytes(b"not an index")
    with pytest.raises(ArtifactError):
        artifact.load(copy_of_saved, "base")


def test_corrupted_calibration(copy_of_saved: Path) -> None:
    (copy_of_saved / "base_calib.json").write_bytes(b"{not json")
    with pytest.raises(ArtifactError, match="calibration"):
        artifact.load(copy_of_saved, "base")


def test_round_trip_keeps_the_positional_shortlist(model: PatchCoreModel, saved: Path) -> None:
    assert model.shortlist is not None
    loaded = artifact.load(saved, "base")
    assert loaded.shortlist is not None
    np.testing.assert_array_equal(loaded.shortlist, model.shortlist)


def test_shortlist_naming_rows_outside_the_bank_is_refused(
    model: PatchCoreModel, copy_of_saved: Path
) -> None:
    npz = copy_of_saved / "base.npz"
    with np.load(npz, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["shortlist"] = arrays["shortlist"] + model.index.size
    with npz.open("wb") as f:
        np.savez(f, **arrays)
    with pytest.raises(ArtifactError, match="shortlist"):
        artifact.load(copy_of_saved, "base")


def test_an_fp32_model_stores_no_compute_dtype_and_loads_as_fp32(
    model: PatchCoreModel, saved: Path
) -> None:
    """Every model stored before the key existed was fitted in fp32: absent means fp32."""
    with np.load(saved / "base.npz") as npz:
        assert "compute_dtype" not in json.loads(str(npz["meta"]))
    assert artifact.load(saved, "base").meta.compute_dtype == "float32"


def test_a_bf16_model_keeps_its_compute_dtype(model: PatchCoreModel, tmp_path: Path) -> None:
    bf16 = PatchCoreModel(meta=replace(model.meta, compute_dtype="bfloat16"), index=model.index)
    artifact.save(bf16, tmp_path, "b")
    with np.load(tmp_path / "b.npz") as npz:
        assert json.loads(str(npz["meta"]))["compute_dtype"] == "bfloat16"
    loaded = artifact.load(tmp_path, "b")
    assert loaded.meta.compute_dtype == "bfloat16"
    assert loaded.version == bf16.version != model.version


@pytest.mark.parametrize("stored", ["float64", "bf16", "", 16, None, ["bfloat16"]])
def test_an_unknown_compute_dtype_is_refused_at_load(copy_of_saved: Path, stored: object) -> None:
    npz = copy_of_saved / "base.npz"
    with np.load(npz, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    meta = json.loads(str(arrays["meta"]))
    arrays["meta"] = np.array(json.dumps({**meta, "compute_dtype": stored}))
    with npz.open("wb") as f:
        np.savez(f, **arrays)
    with pytest.raises(ArtifactError, match="compute dtype"):
        artifact.load(copy_of_saved, "base")
