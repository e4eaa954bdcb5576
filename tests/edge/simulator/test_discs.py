"""Synthetic brake-disc ROIs: determinism, masks, defect footprint, encoding, learnability."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edge.simulator.discs import (
    DEFECT_KINDS,
    SyntheticDisc,
    encode_jpeg,
    encode_png,
    make_disc,
    make_ng,
    make_ok,
    stream,
)
from engine import metrics
from engine.images import decode_image

SEEDS = range(12)


@pytest.mark.parametrize("defect", (None, *DEFECT_KINDS))
def test_deterministic(defect: str | None) -> None:
    a, b = make_disc(7, 96, defect), make_disc(7, 96, defect)
    assert a.image.tobytes() == b.image.tobytes()
    assert np.array_equal(a.mask, b.mask)
    assert make_disc(8, 96, defect).image.tobytes() != a.image.tobytes()


def test_seeds_differ_but_modestly() -> None:
    imgs = [make_ok(s, 128).image.astype(np.float64) for s in range(6)]
    means = [im.mean() for im in imgs]
    assert not np.array_equal(imgs[0], imgs[1])
    assert max(means) - min(means) < 25  # narrow brightness range between OK seeds
    assert all(100 < m < 170 for m in means)


@pytest.mark.parametrize("size", (32, 100, 224))
@pytest.mark.parametrize("defect", (None, *DEFECT_KINDS))
def test_shapes_and_dtypes(size: int, defect: str | None) -> None:
    d = make_disc(3, size, defect)
    assert isinstance(d, SyntheticDisc)
    assert d.image.shape == (size, size, 3) and d.image.dtype == np.uint8
    assert d.mask.shape == (size, size) and d.mask.dtype == np.bool_
    assert d.defect == defect and d.seed == 3
    assert d.area_px == int(d.mask.sum())


def test_ok_mask_empty() -> None:
    for s in SEEDS:
        d = make_ok(s)
        assert d.defect is None and d.area_px == 0 and not d.mask.any()


@pytest.mark.parametrize("kind", DEFECT_KINDS)
def test_defect_area_contrast_and_footprint(kind: str) -> None:
    size = 224
    kernel = np.ones((5, 5), np.uint8)  # 2 px dilation
    for s in SEEDS:
        ng, ok = make_ng(s, size, kind), make_ok(s, size)
        assert ng.defect == kind
        assert ng.area_px == int(ng.mask.sum())
        assert 0.003 <= ng.area_px / size**2 <= 0.03, (kind, s, ng.area_px)
        near = cv2.dilate(ng.mask.astype(np.uint8), kernel).astype(bool)
        diff = np.abs(ng.image.astype(np.int16) - ok.image.astype(np.int16)).max(-1)
        assert diff[~near].max() == 0  # painted on top of the identical OK base
        assert np.array_equal(diff > 0, ng.mask)  # the mask is exactly the changed pixels
        assert diff[ng.mask].mean() >= 40  # clearly visible against the local surface


def test_make_ng_kind_from_seed() -> None:
    kinds = {make_ng(s, 64).defect for s in range(8)}
    assert kinds == set(DEFECT_KINDS)
    assert make_ng(5, 64).image.tobytes() == make_ng(5, 64).image.tobytes()


def test_rust_is_orange() -> None:
    d = make_ng(4, 224, "rust")
    r, g, b = d.image[d.mask].astype(np.float64).mean(0)
    assert r > g + 30 and g > b


@pytest.mark.parametrize("defect", (None, *DEFECT_KINDS))
def test_encode_roundtrip(defect: str | None) -> None:
    img = make_disc(11, 128, defect).image
    assert np.array_equal(decode_image(encode_png(img)), img)
    back = decode_image(encode_jpeg(img, quality=95))
    assert back.shape == img.shape and back.dtype == np.uint8
    assert np.abs(back.astype(np.int16) - img.astype(np.int16)).mean() < 4  # channels not swapped
    assert len(encode_jpeg(img, quality=30)) < len(encode_jpeg(img, quality=95))


def test_encode_rejects_non_rgb() -> None:
    with pytest.raises(ValueError):
        encode_png(np.zeros((8, 8), np.uint8))
    with pytest.raises(ValueError):
        encode_jpeg(np.zeros((8, 8, 3), np.float32))


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="defect kind"):
        make_disc(0, 64, "dent")
    with pytest.raises(ValueError, match="defect kind"):
        make_ng(0, 64, kind="Scratch")
    with pytest.raises(ValueError, match=">= 32"):
        make_ok(0, 31)
    with pytest.raises(ValueError):
        next(stream(0, 5, size=16))
    with pytest.raises(ValueError):
        next(stream(0, 5, ng_fraction=1.5))


def test_stream_mix_and_determinism() -> None:
    items = list(stream(42, 200, size=64, ng_fraction=0.05))
    assert len(items) == 200
    ng = [d for d in items if d.defect is not None]
    assert 6 <= len(ng) <= 14
    assert {d.defect for d in ng} == set(DEFECT_KINDS)
    assert all((d.area_px > 0) == (d.defect is not None) for d in items)
    again = list(stream(42, 200, size=64, ng_fraction=0.05))
    assert [d.image.tobytes() for d in items] == [d.image.tobytes() for d in again]
    other = list(stream(43, 20, size=64))
    assert other[0].image.tobytes() != items[0].image.tobytes()
    d = items[3]
    assert make_disc(d.seed, 64, d.defect).image.tobytes() == d.image.tobytes()
    assert all(d.defect is None for d in stream(1, 50, size=64, ng_fraction=0.0))
    assert all(d.defect is not None for d in stream(1, 20, size=64, ng_fraction=1.0))


@pytest.mark.slow
def test_learnable_by_patchcore() -> None:
    from engine import Engine
    from tests.helpers.settings import tiny_settings

    size = 128
    engine = Engine.from_settings(tiny_settings(image_size=size))
    fit = engine.fit([make_ok(s, size).image for s in range(20)])
    ok = [make_ok(s, size).image for s in range(100, 110)]
    ng = [make_ng(s, size, DEFECT_KINDS[i % 4]).image for i, s in enumerate(range(200, 210))]
    scores = engine.image_scores(fit.model, ok + ng)
    labels = np.array([0] * len(ok) + [1] * len(ng))
    auc = metrics.auroc(labels, scores)
    print(f"synthetic OK/NG image AUROC = {auc:.3f}")
    assert auc >= 0.95
