"""Input shapes: an "aspect" model keeps its crops' aspect ratio (engine.images.aspect_shape,
ModelMeta.input_mode / input_shape), draws its maps at that shape and measures its regions
in the crop's own pixels; a frame of another shape is refused, never squashed silently."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from engine import artifact
from engine.anomaly_map import anomaly_maps
from engine.backbone import load_backbone
from engine.device import DeviceSpec
from engine.engine import Engine, InferItem
from engine.errors import GridMismatchError, ShapeMismatchError
from engine.images import aspect_shape, to_tensor
from engine.meta import ASPECT, SQUARE
from engine.patchcore import ModelMeta, PatchCoreModel, score
from tests.helpers.images import texture

# a strip 3x as wide as it is high, as an unwrapped friction ring is sent
STRIP = (64, 192)


def strip(seed: int, height: int = STRIP[0], width: int = STRIP[1]) -> np.ndarray:
    return texture("checker", seed, height, width)


def with_box(image: np.ndarray, y: int, x: int, h: int, w: int) -> np.ndarray:
    out = image.copy()
    out[y : y + h, x : x + w] = 255
    return out


@pytest.fixture(scope="module")
def aspect_engine(make_engine: Callable[..., Engine]) -> Engine:
    # every image in the bank (no held-out share): enough of them for a per-position baseline
    return make_engine(input_mode="aspect", threshold_method="percentile")


@pytest.fixture(scope="module")
def strip_model(aspect_engine: Engine) -> PatchCoreModel:
    return aspect_engine.fit([strip(seed) for seed in range(20)], mm_per_px=0.5).model


def test_the_shape_is_the_median_aspect_ratio_in_multiples_of_the_stride() -> None:
    tall = [np.zeros((630 + d, 250, 3), np.uint8) for d in (-10, 0, 12)]
    assert aspect_shape(tall, 224, 16, "short") == (560, 224)  # 224 x 2.52 -> 35 x 16
    assert aspect_shape(tall, 224, 16, "area") == (352, 144)  # ~224² pixels
    assert aspect_shape(tall, 224, 14, "short") == (560, 224)
    wide = [np.zeros((300, 400, 3), np.uint8)]
    assert aspect_shape(wide, 224, 16, "short") == (224, 304)
    assert aspect_shape(wide, 224, 16, "area") == (192, 256)
    assert aspect_shape([np.zeros((512, 512, 3), np.uint8)], 224, 16, "area") == (224, 224)


@pytest.mark.parametrize(
    ("shape", "mode"),
    [((64, 64), SQUARE), ((64, 88), SQUARE), ((64, 96), SQUARE), ((64, 112), ASPECT)],
)
def test_auto_keeps_the_aspect_ratio_of_crops_squashed_by_more_than_one_and_a_half(
    make_engine: Callable[..., Engine], shape: tuple[int, int], mode: str
) -> None:
    """4:3 photographs stay square (as they were measured best), 2.5:1 strips do not."""
    engine = make_engine(input_mode="auto", threshold_method="percentile")
    meta = engine.fit([texture("checker", seed, *shape) for seed in range(2)]).model.meta
    assert meta.input_mode == mode
    assert meta.input_shape == (None if mode == SQUARE else (64, 112))


def test_training_crops_of_different_shapes_are_refused() -> None:
    images = [np.zeros((64, 192, 3), np.uint8)] * 3 + [np.zeros((64, 64, 3), np.uint8)]
    with pytest.raises(ShapeMismatchError, match="1 of 4 images differ in aspect ratio"):
        aspect_shape(images, 64, 16)


def test_fit_records_the_mode_and_shape(strip_model: PatchCoreModel) -> None:
    meta = strip_model.meta
    assert (meta.input_mode, meta.input_shape, meta.input_hw) == (ASPECT, STRIP, STRIP)
    assert meta.grid == (8, 24)  # the stride-8 grid of a 64 x 192 input
    assert strip_model.baseline is not None and strip_model.baseline.shape == (8, 24)
    assert strip_model.shortlist is not None and strip_model.shortlist.shape[0] == 8 * 24


def test_an_old_model_is_square_and_keeps_its_metadata(
    trained_model: Callable[[str], PatchCoreModel], strip_model: PatchCoreModel, tmp_path: Path
) -> None:
    square = trained_model("checker").meta
    assert (square.input_mode, square.input_shape, square.input_hw) == (SQUARE, None, (64, 64))
    old = square.to_dict()
    assert "input_mode" not in old and "input_shape" not in old  # versions stay what they were
    assert ModelMeta.from_dict(old) == square
    artifact.save(strip_model, tmp_path, "base")
    loaded = artifact.load(tmp_path, "base")
    assert loaded.meta.input_shape == STRIP and loaded.meta.input_mode == ASPECT
    assert loaded.version == strip_model.version


def test_to_tensor_and_maps_take_a_non_square_shape() -> None:
    x = to_tensor([strip(0, 100, 300)], STRIP)
    assert x.shape == (1, 3, *STRIP)
    grid = np.random.default_rng(0).random((2, 8, 24)).astype(np.float32)
    maps = anomaly_maps(grid, STRIP, 4.0)
    assert maps.shape == (2, *STRIP)
    # the separable operator equals OpenCV's resize + blur drawn on the whole map
    k = 2 * int(4.0 * 4.0 + 0.5) + 1
    up = cv2.resize(grid[1], STRIP[::-1], interpolation=cv2.INTER_LINEAR)
    ref = cv2.GaussianBlur(up, (k, k), 4.0, borderType=cv2.BORDER_REFLECT)
    np.testing.assert_allclose(maps[1], ref, atol=1e-5)


def test_a_strip_defect_is_found_where_it_is_in_the_crop_pixels(
    aspect_engine: Engine, strip_model: PatchCoreModel
) -> None:
    """A crop at the model's shape, and the same scene at twice the resolution: the region
    and its mm² are in each crop's own pixels, on the defect."""
    boxes = []
    for scale in (1, 2):
        y, x, h, w = 24 * scale, 140 * scale, 10 * scale, 14 * scale
        scene = cv2.resize(strip(99), None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
        crop = with_box(scene, y, x, h, w)
        item = InferItem(strip_model, crop, want_map=True, want_heatmap=True)
        (res,) = aspect_engine.infer([item])
        assert res.verdict == "NG", res
        assert res.anomaly_map is not None and res.anomaly_map.shape == crop.shape[:2]
        assert res.heatmap_png is not None
        heat = cv2.imdecode(np.frombuffer(res.heatmap_png, np.uint8), cv2.IMREAD_COLOR)
        assert heat.shape == crop.shape
        region = res.regions[0]
        bx, by, bw, bh = region.bbox
        # the region lies on the defect: inside it, but for the blur's reach each way
        margin = 24 * scale
        assert x - margin <= bx <= x + w and y - margin <= by <= y + h
        assert x <= bx + bw <= x + w + margin and y <= by + bh <= y + h + margin
        assert region.area_mm2 == pytest.approx(region.area_px * 0.25, rel=1e-5)
        hot = np.unravel_index(np.argmax(res.anomaly_map), res.anomaly_map.shape)
        assert y - margin <= hot[0] <= y + h + margin and x - margin <= hot[1] <= x + w + margin
        boxes.append(np.array(region.bbox))
    # twice the resolution, twice the coordinates (to a pixel or two of interpolation)
    assert np.abs(boxes[1] - 2 * boxes[0]).max() <= 3, boxes


def test_a_frame_of_another_shape_is_an_error_confined_to_it(
    aspect_engine: Engine, strip_model: PatchCoreModel
) -> None:
    results = aspect_engine.infer([
        InferItem(strip_model, strip(50, 64, 64)),
        InferItem(strip_model, strip(51)),
        InferItem(strip_model, strip(52, 70, 180)),  # 1.17x off: within the tolerance
    ])  # fmt: skip
    assert [r.verdict for r in results][:2] == ["ERROR", "OK"]
    assert results[2].verdict in ("OK", "NG") and results[2].score is not None
    assert results[0].error_kind == "ShapeMismatchError" and results[0].score is None
    assert results[0].error == (
        "ShapeMismatchError: frame of 64x64 px (H/W 1); the model takes 192x64 "
        "(H/W 0.333), at most 1.25x off"
    )
    with pytest.raises(ShapeMismatchError):
        aspect_engine.image_scores(strip_model, [strip(53, 64, 64)])
    with pytest.raises(ShapeMismatchError):
        aspect_engine.append(strip_model, [strip(54, 64, 64)])


def test_a_square_model_squashes_any_frame_as_before(
    tiny_engine: Engine, trained_model: Callable[[str], PatchCoreModel]
) -> None:
    model = trained_model("checker")
    (res,) = tiny_engine.infer([InferItem(model, strip(60), want_map=True)])
    assert res.verdict in ("OK", "NG") and res.anomaly_map is not None
    assert res.anomaly_map.shape == STRIP


def test_models_of_two_shapes_in_one_call_score_as_they_do_alone(
    aspect_engine: Engine,
    strip_model: PatchCoreModel,
    trained_model: Callable[[str], PatchCoreModel],
) -> None:
    square = trained_model("checker")
    frames = [
        InferItem(strip_model, strip(70)),
        InferItem(square, texture("checker", 71)),
        InferItem(strip_model, with_box(strip(72), 20, 30, 12, 12)),
    ]
    together = aspect_engine.infer(frames)
    alone = [aspect_engine.infer([item])[0] for item in frames]
    assert [r.score for r in together] == pytest.approx([r.score for r in alone], rel=1e-5)
    assert [r.verdict for r in together] == [r.verdict for r in alone]


def test_the_grid_check_still_guards_a_non_square_model(
    aspect_engine: Engine, strip_model: PatchCoreModel
) -> None:
    bb = aspect_engine.backbone_for(strip_model)
    square_feats = aspect_engine.embed([strip(80)], bb, (64, 64))
    with pytest.raises(GridMismatchError, match="token grid 8x8x176 differs"):
        score(strip_model, square_feats)
    shifted = replace(strip_model, meta=replace(strip_model.meta, input_shape=(64, 176)))
    (res,) = aspect_engine.infer([InferItem(shifted, strip(81))])
    assert res.verdict == "ERROR" and res.error_kind == "GridMismatchError"


def test_dinov2_takes_a_non_square_input_with_interpolated_positions(
    cpu_spec: DeviceSpec, tmp_path: Path
) -> None:
    """A square checkpoint's position embeddings are resampled to a non-square token grid
    when the backbone is built for it."""
    square = load_backbone("dinov2_vits14", cpu_spec, "random", 98)
    weights = tmp_path / "dinov2.pth"
    torch.save(square.net.model.state_dict(), weights)
    bb = load_backbone("dinov2_vits14", cpu_spec, str(weights), (56, 140))
    assert bb.net.model.pos_embed.shape[1] == 1 + 4 * 10
    (fmap,) = bb(torch.zeros(1, 3, 56, 140))
    assert fmap.shape == (1, 384, 4, 10)
