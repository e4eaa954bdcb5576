"""Datasets: server-side PNG re-encoding and naming, sidecars, list / read / delete / clear."""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from store import ConflictError, InvalidIdError, InvalidValueError, ModelStore, NotFoundError
from store.atomic import is_temp

ROLE, ROI = "Master1", "inspection-1"
NAME_RE = re.compile(r"\d{8}-\d{6}-\d{6}_[0-9a-f]{8}\.png")


def _rgb(seed: int = 0, h: int = 12, w: int = 10) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _decode(data: bytes) -> np.ndarray:
    return cv2.cvtColor(
        cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB
    )


def test_add_reencodes_and_names_server_side(store: ModelStore) -> None:
    image = _rgb()
    item = store.datasets.add(
        store.ref("Disc-A", ROLE, ROI),
        "OK",
        image,
        source="../../etc/evil.png",
        mm_per_px=0.05,
        extra={"part_id": "P1"},
    )
    assert NAME_RE.fullmatch(item.name) and "evil" not in item.name
    folder = store.root / "recipes" / "disc-a" / "datasets" / "TWFzdGVyMQ__aW5zcGVjdGlvbi0x" / "ok"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [item.name, item.name.replace(".png", ".json")]
    )
    data = store.datasets.read(store.ref("disc-a", ROLE, ROI), "ok", item.name)
    assert data.startswith(b"\x89PNG") and np.array_equal(_decode(data), image)
    meta = store.datasets.meta(store.ref("disc-a", ROLE, ROI), "ok", item.name)
    assert meta["source"] == "../../etc/evil.png"  # metadata only, never a path
    assert meta["mm_per_px"] == 0.05 and meta["label"] == "ok" and meta["timestamp"]
    assert (meta["width"], meta["height"]) == (10, 12) and meta["extra"] == {"part_id": "P1"}


@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_add_accepts_encoded_bytes(store: ModelStore, ext: str) -> None:
    image = np.full((16, 16, 3), 120, np.uint8)
    encoded = cv2.imencode(ext, image)[1].tobytes()
    item = store.datasets.add(store.ref("r", ROLE, ROI), "ng", encoded)
    assert item.name.endswith(".png")
    assert store.datasets.read(store.ref("r", ROLE, ROI), "ng", item.name).startswith(b"\x89PNG")


def test_grey_images_become_rgb(store: ModelStore) -> None:
    item = store.datasets.add(store.ref("r", ROLE, ROI), "ok", np.full((5, 6), 9, np.uint8))
    assert _decode(store.datasets.read(store.ref("r", ROLE, ROI), "ok", item.name)).shape == (
        5,
        6,
        3,
    )


@pytest.mark.parametrize(
    "bad", [b"not an image", b"", np.zeros((4, 4, 4), np.uint8), np.zeros((4, 4), np.float32)]
)
def test_unreadable_images_are_400(store: ModelStore, bad) -> None:
    with pytest.raises(InvalidValueError):
        store.datasets.add(store.ref("r", ROLE, ROI), "ok", bad)


def test_bad_label_is_an_invalid_id(store: ModelStore) -> None:
    with pytest.raises(InvalidIdError):
        store.datasets.add(store.ref("r", ROLE, ROI), "maybe", _rgb())


def test_mm_per_px_must_match_the_recipe(store: ModelStore, model_a) -> None:
    store.save_model(store.ref("r", ROLE, ROI), model_a.model)  # locks 0.1
    store.datasets.add(store.ref("r", ROLE, ROI), "ok", _rgb(), mm_per_px=0.1)
    with pytest.raises(ConflictError):
        store.datasets.add(store.ref("r", ROLE, ROI), "ok", _rgb(), mm_per_px=0.3)


def test_list_delete_and_clear(store: ModelStore) -> None:
    oks = [store.datasets.add(store.ref("r", ROLE, ROI), "ok", _rgb(i)) for i in range(3)]
    ng = store.datasets.add(store.ref("r", ROLE, ROI), "ng", _rgb(9))
    listing = store.datasets.list_images(store.ref("r", ROLE, ROI), with_meta=True)
    assert [i.name for i in listing["ok"]] == sorted(i.name for i in oks)
    assert listing["ng"][0].meta["label"] == "ng"
    assert store.datasets.counts(store.ref("r", ROLE, ROI)) == {"ok": 3, "ng": 1}

    store.datasets.delete(store.ref("r", ROLE, ROI), "ok", oks[0].name)
    assert store.datasets.counts(store.ref("r", ROLE, ROI)) == {"ok": 2, "ng": 1}
    with pytest.raises(NotFoundError):
        store.datasets.delete(store.ref("r", ROLE, ROI), "ok", oks[0].name)
    with pytest.raises(NotFoundError):
        store.datasets.read(store.ref("r", ROLE, ROI), "ok", ng.name)  # wrong label

    images = store.datasets.load(store.ref("r", ROLE, ROI), "ok")
    assert len(images) == 2 and all(i.dtype == np.uint8 and i.shape == (12, 10, 3) for i in images)
    assert store.datasets.clear(store.ref("r", ROLE, ROI), "ng") == 1
    assert store.datasets.clear(store.ref("r", ROLE, ROI)) == 2
    assert store.datasets.counts(store.ref("r", ROLE, ROI)) == {"ok": 0, "ng": 0}
    assert not [p for p in store.root.rglob("*.json") if p.name != "recipe.json"]


@pytest.mark.parametrize(
    "name",
    [
        "../x.png",
        "/etc/passwd",
        "a/b.png",
        ".hidden.png",
        "x.json",
        "..",
        "x.png\x00.txt",
        "%2e%2e%2fx.png",
    ],
)
def test_image_names_are_validated(store: ModelStore, name: str) -> None:
    store.datasets.add(store.ref("r", ROLE, ROI), "ok", _rgb())
    with pytest.raises(InvalidIdError):
        store.datasets.delete(store.ref("r", ROLE, ROI), "ok", name)
    with pytest.raises(InvalidIdError):
        store.datasets.read(store.ref("r", ROLE, ROI), "ok", name)


def test_no_temp_files_after_writes(store: ModelStore, tmp_path: Path) -> None:
    folder = store.datasets.folder(store.ref("r", ROLE, ROI)) / "ok"
    folder.mkdir(parents=True)
    (folder / ".x.png.1.abcd.tmp").write_bytes(b"left by a killed writer")
    store.datasets.add(store.ref("r", ROLE, ROI), "ok", _rgb())
    assert not [p for p in store.root.rglob("*") if is_temp(p.name)]
