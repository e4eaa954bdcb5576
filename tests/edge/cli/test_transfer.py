"""``bdi export-model`` / ``bdi import-model`` (edge/cli/transfer.py) between two real stores."""

from __future__ import annotations

import dataclasses
import io
import json
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import numpy as np
import pytest

from edge.cli import main
from store import ModelState, ModelStore, archive
from tests.helpers.settings import tiny_settings

IDS = {"recipe": "Disc-A", "role": "Master1", "roi": "inner ring/1"}
ARGS = ["--recipe", IDS["recipe"], "--role", IDS["role"], "--roi", IDS["roi"]]
MM = 0.05


@dataclasses.dataclass(frozen=True)
class Source:
    root: Path
    engine: Any
    images: list[np.ndarray]
    first_threshold: float  # the calibration of the previous revision
    archive: Path  # the current revision, exported once


def _use_store(monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
    monkeypatch.setenv("BDI_MODELS_DIR", str(root))


def _bdi(monkeypatch: pytest.MonkeyPatch, root: Path, *argv: str) -> int:
    _use_store(monkeypatch, root)
    return main(list(argv))


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Source:
    """A store holding one trained model in two revisions (a recalibration on top)."""
    from edge.simulator.discs import make_ok
    from engine import Engine

    root = tmp_path_factory.mktemp("source") / "models"
    settings = tiny_settings(models_dir=root)
    engine = Engine.from_settings(settings)
    images = [make_ok(seed, 64).image for seed in range(5)]
    model = engine.fit(images[:4], mm_per_px=MM).model
    store = ModelStore(settings)
    store.save_model(store.ref(IDS["recipe"], IDS["role"], IDS["roi"]), model)
    assert model.calibration is not None
    first = model.calibration.threshold
    recal = dataclasses.replace(model.calibration, threshold=first * 1.5)
    store.save_calibration(store.ref(IDS["recipe"], IDS["role"], IDS["roi"]), recal)
    archive = tmp_path_factory.mktemp("out") / "model.tar.gz"
    with pytest.MonkeyPatch.context() as mp:
        assert _bdi(mp, root, "export-model", *ARGS, "--out", str(archive)) == 0
    return Source(root, engine, images, first, archive)


def _state(root: Path) -> ModelState:
    store = ModelStore(root=root)
    return store.state(store.ref(**IDS))


def _members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path, "r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar}  # type: ignore[union-attr]


def _write(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _regular(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def test_round_trip_scores_identically(
    source: Source, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    dest = tmp_path / "dest"
    assert _bdi(monkeypatch, dest, "import-model", str(source.archive), "--json") == 0
    result = json.loads(capsys.readouterr().out)
    assert result["stored"] is True

    src, dst = ModelStore(root=source.root), ModelStore(root=dest)
    a, b = src.state(src.ref(**IDS)), dst.state(dst.ref(**IDS))
    assert b.ready and b.source == "recipe"
    assert (b.version, b.revision, b.threshold) == (a.version, a.revision, a.threshold)
    assert dst.recipe_mm_per_px("disc-a") == MM  # the scale is locked on the new machine too
    src_files = src.locate(src.ref(**IDS)).files  # type: ignore[union-attr]
    dst_files = dst.locate(dst.ref(**IDS)).files  # type: ignore[union-attr]
    assert {s: p.read_bytes() for s, p in src_files.items()} == {
        s: p.read_bytes() for s, p in dst_files.items()
    }
    before = source.engine.image_scores(src.load_model(src.ref(**IDS)), source.images)
    after = source.engine.image_scores(dst.load_model(dst.ref(**IDS)), source.images)
    np.testing.assert_array_equal(before, after)


def test_manifest_names_the_model(source: Source) -> None:
    members = _members(source.archive)
    assert set(members) == {"manifest.json", "model.npz", "model_index.faiss", "model_calib.json"}
    manifest = json.loads(members["manifest.json"])
    state = _state(source.root)
    assert manifest["format"] == "bdi-model" and manifest["format_version"] == 1
    assert (manifest["recipe_id"], manifest["role_id"], manifest["roi_id"]) == (
        "disc-a",
        IDS["role"],
        IDS["roi"],
    )
    assert manifest["model_key"] == "inner_ring_1"
    assert (manifest["version"], manifest["revision"]) == (state.version, state.revision)
    assert manifest["mm_per_px"] == MM and manifest["backbone"] == "efficientnet_lite0"
    assert manifest["files"]["_index.faiss"]["size"] == len(members["model_index.faiss"])


def test_default_archive_name_and_reimport_is_idempotent(
    source: Source, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert _bdi(monkeypatch, source.root, "export-model", *ARGS) == 0
    state = _state(source.root)
    archive = tmp_path / f"disc-a_inner_ring_1_{state.revision}.tar.gz"
    assert archive.is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left
    dest = tmp_path / "dest"
    for _ in range(2):
        assert _bdi(monkeypatch, dest, "import-model", str(archive)) == 0
        assert _state(dest).revision == state.revision


def test_previous_revision_rolls_back(
    source: Source, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    dest = tmp_path / "dest"
    assert _bdi(monkeypatch, dest, "import-model", str(source.archive)) == 0
    current = _state(dest)
    assert _bdi(monkeypatch, dest, "export-model", *ARGS, "--previous") == 2  # nothing kept yet
    capsys.readouterr()

    prev = tmp_path / "prev.tar.gz"
    argv = ["export-model", *ARGS, "--previous", "--out", str(prev), "--json"]
    assert _bdi(monkeypatch, source.root, *argv) == 0
    out, err = capsys.readouterr()
    exported = json.loads(out)
    assert exported["current"] is False and exported["revision"] != current.revision
    assert exported["threshold"] == pytest.approx(source.first_threshold)
    # said plainly: which revision, and that it is not the one served now
    assert f"exported the previous revision {exported['revision']}, not the current one" in err
    assert f"threshold {source.first_threshold}" in err and "not calibrated" in err

    assert _bdi(monkeypatch, dest, "import-model", str(prev), "--json") == 0
    imported = json.loads(capsys.readouterr().out)
    assert (imported["revision"], imported["stored"]) == (exported["revision"], True)
    assert imported["threshold"] == pytest.approx(source.first_threshold)
    rolled = _state(dest)
    assert rolled.version == current.version  # a recalibration keeps the version
    assert rolled.revision != current.revision
    assert rolled.threshold == pytest.approx(source.first_threshold)


def test_export_and_import_print_threshold_and_revision(
    source: Source, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    state = _state(source.root)
    out = tmp_path / "m.tar.gz"
    assert _bdi(monkeypatch, source.root, "export-model", *ARGS, "--out", str(out)) == 0
    printed, err = capsys.readouterr()
    assert err == ""  # the current revision: nothing to warn about
    lines = dict(line.split(maxsplit=1) for line in printed.splitlines())
    assert lines["revision"] == state.revision and lines["current"] == "True"
    assert float(lines["threshold"]) == pytest.approx(state.threshold)
    assert _bdi(monkeypatch, tmp_path / "dest", "import-model", str(out)) == 0
    lines = dict(line.split(maxsplit=1) for line in capsys.readouterr().out.splitlines())
    assert lines["revision"] == state.revision
    assert float(lines["threshold"]) == pytest.approx(state.threshold)


def test_export_a_stored_revision_by_id(
    source: Source, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    store = ModelStore(root=source.root)
    _, previous = store.revisions(store.ref(**IDS))
    out = tmp_path / "m.tar.gz"
    argv = ["export-model", *ARGS, "--revision", previous.revision, "--out", str(out)]
    assert _bdi(monkeypatch, source.root, *argv) == 0
    assert f"stored revision {previous.revision}" in capsys.readouterr().err
    assert json.loads(_members(out)["manifest.json"])["revision"] == previous.revision
    argv = ["export-model", *ARGS, "--revision", "0" * 16, "--out", str(out)]
    assert _bdi(monkeypatch, source.root, *argv) == 2
    assert "no revision" in capsys.readouterr().err


def test_dry_run_stores_nothing(
    source: Source, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    dest = tmp_path / "dest"
    assert _bdi(monkeypatch, dest, "import-model", str(source.archive), "--dry-run") == 0
    assert "stored           False" in capsys.readouterr().out
    assert not dest.exists()


def test_mm_per_px_conflict_is_refused(
    source: Source, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    dest = tmp_path / "dest"
    other = source.engine.fit(source.images[:2], mm_per_px=0.1).model
    store = ModelStore(root=dest)
    store.save_model(store.ref(IDS["recipe"], IDS["role"], "outer"), other)
    snapshot = sorted(p for p in dest.rglob("*"))
    assert _bdi(monkeypatch, dest, "import-model", str(source.archive)) == 2
    assert "mm_per_px" in capsys.readouterr().err
    assert sorted(p for p in dest.rglob("*")) == snapshot


def test_export_into_a_folder_or_nowhere(
    source: Source, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    assert _bdi(monkeypatch, source.root, "export-model", *ARGS, "--out", str(tmp_path)) == 0
    (archive,) = tmp_path.glob("disc-a_inner_ring_1_*.tar.gz")
    assert _members(archive) == _members(source.archive) | {"manifest.json": ANY}
    missing = tmp_path / "no" / "such" / "m.tar.gz"
    assert _bdi(monkeypatch, source.root, "export-model", *ARGS, "--out", str(missing)) == 2
    assert "cannot write" in capsys.readouterr().err


def test_export_without_a_model_fails_clearly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    out = tmp_path / "x.tar.gz"
    assert _bdi(monkeypatch, tmp_path / "empty", "export-model", *ARGS, "--out", str(out)) == 2
    assert "no model stored" in capsys.readouterr().err
    assert not out.exists()


Mutation = Callable[[dict[str, bytes], dict[str, Any]], list[tuple[tarfile.TarInfo, bytes | None]]]


def _entries(members: dict[str, bytes], manifest: dict[str, Any]) -> list[Any]:
    members = {**members, "manifest.json": json.dumps(manifest).encode()}
    return [_regular(n, d) for n, d in members.items()]


def _traversal(members: dict[str, bytes], manifest: dict[str, Any]) -> list[Any]:
    return [*_entries(members, manifest), _regular("../escape.txt", b"x")]


def _absolute(members: dict[str, bytes], manifest: dict[str, Any]) -> list[Any]:
    return [_regular("/tmp/model.npz", members["model.npz"]), *_entries(members, manifest)]


def _symlink(members: dict[str, bytes], manifest: dict[str, Any]) -> list[Any]:
    link = tarfile.TarInfo("model_calib.json")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    rest = {n: d for n, d in members.items() if n != "model_calib.json"}
    return [*_entries(rest, manifest), (link, None)]


def _missing_index(members: dict[str, bytes], manifest: dict[str, Any]) -> list[Any]:
    return _entries({n: d for n, d in members.items() if n != "model_index.faiss"}, manifest)


def _unlisted_index(members: dict[str, bytes], manifest: dict[str, Any]) -> list[Any]:
    files = {s: e for s, e in manifest["files"].items() if s != "_index.faiss"}
    return _entries(members, {**manifest, "files": files})


def _bad_hash(members: dict[str, bytes], manifest: dict[str, Any]) -> list[Any]:
    calib = bytearray(members["model_calib.json"])
    calib[-2] ^= 1
    return _entries({**members, "model_calib.json": bytes(calib)}, manifest)


def _bad_recipe(members: dict[str, bytes], manifest: dict[str, Any]) -> list[Any]:
    return _entries(members, {**manifest, "recipe_id": "../up"})


def _other_version(members: dict[str, bytes], manifest: dict[str, Any]) -> list[Any]:
    return _entries(members, {**manifest, "version": "0" * 16})


def _other_scale(members: dict[str, bytes], manifest: dict[str, Any]) -> list[Any]:
    return _entries(members, {**manifest, "mm_per_px": 0.5})


def _no_manifest(members: dict[str, bytes], manifest: dict[str, Any]) -> list[Any]:
    return [_regular(n, d) for n, d in members.items() if n != "manifest.json"]


def _duplicate(members: dict[str, bytes], manifest: dict[str, Any]) -> list[Any]:
    return [*_entries(members, manifest), _regular("model.npz", members["model.npz"])]


def _future_format(members: dict[str, bytes], manifest: dict[str, Any]) -> list[Any]:
    return _entries(members, {**manifest, "format_version": 2})


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (_traversal, "unexpected member '../escape.txt'"),
        (_absolute, "unexpected member '/tmp/model.npz'"),
        (_symlink, "'model_calib.json' is not a regular file"),
        (_missing_index, "lacks model_index.faiss"),
        (_unlisted_index, "files must list"),
        (_bad_hash, "model_calib.json does not match its sha256"),
        (_bad_recipe, "recipe"),
        (_other_version, "version differs"),
        (_other_scale, "mm_per_px differs"),
        (_no_manifest, "no manifest.json"),
        (_duplicate, "appears twice"),
        (_future_format, "format version 2 is not supported"),
    ],
)
def test_bad_archives_fail_without_touching_the_store(
    source: Source,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: Any,
    mutate: Mutation,
    message: str,
) -> None:
    members = _members(source.archive)
    manifest = json.loads(members.pop("manifest.json"))
    bad = _write(tmp_path / "bad.tar.gz", mutate(members, manifest))
    dest = tmp_path / "dest"
    assert _bdi(monkeypatch, dest, "import-model", str(bad)) == 2
    err = capsys.readouterr().err
    assert err.startswith("bdi: error:") and message in err, err
    assert "Traceback" not in err
    assert not dest.exists()
    assert not (tmp_path / "escape.txt").exists()


def test_oversized_and_unreadable_archives(
    source: Source, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    dest = tmp_path / "dest"
    with monkeypatch.context() as mp:
        mp.setattr(archive, "MAX_FILE_BYTES", 1024)
        assert _bdi(mp, dest, "import-model", str(source.archive)) == 2
        assert "is larger than 1024 bytes" in capsys.readouterr().err

    garbage = tmp_path / "garbage.tar.gz"
    garbage.write_bytes(b"not a gzip stream")
    assert _bdi(monkeypatch, dest, "import-model", str(garbage)) == 2
    assert "not a readable .tar.gz" in capsys.readouterr().err

    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(source.archive.read_bytes()[:2000])
    assert _bdi(monkeypatch, dest, "import-model", str(truncated)) == 2
    assert "not a readable .tar.gz" in capsys.readouterr().err

    assert _bdi(monkeypatch, dest, "import-model", str(tmp_path / "absent.tar.gz")) == 2
    assert "no such file" in capsys.readouterr().err
    assert not dest.exists()


def test_a_corrupt_model_with_matching_hashes_does_not_load(
    source: Source, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    """A crafted archive whose manifest matches broken files is still refused."""
    import hashlib

    members = _members(source.archive)
    manifest = json.loads(members.pop("manifest.json"))
    index = b"not a faiss index"
    members["model_index.faiss"] = index
    manifest["files"]["_index.faiss"] = {
        "sha256": hashlib.sha256(index).hexdigest(),
        "size": len(index),
    }
    bad = _write(tmp_path / "bad.tar.gz", _entries(members, manifest))
    dest = tmp_path / "dest"
    assert _bdi(monkeypatch, dest, "import-model", str(bad)) == 2
    assert "does not load" in capsys.readouterr().err
    assert not dest.exists()
