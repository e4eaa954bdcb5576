"""Channel modes: a grey camera's crops are never judged against colour training images, or
the reverse (engine.images.channel_mode, ModelMeta.channel_mode, Engine.infer)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from engine import artifact
from engine.engine import Engine, InferItem
from engine.errors import ChannelMismatchError
from engine.images import COLOUR, GREY, channel_mode, common_mode, decode_image
from engine.patchcore import ModelMeta, PatchCoreModel
from tests.helpers.images import png, texture


def grey(image: np.ndarray) -> np.ndarray:
    """The RGB image a grey camera would send of the same scene: R = G = B."""
    return cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)


@pytest.fixture(scope="module")
def colour_model(trained_model: Callable[[str], PatchCoreModel]) -> PatchCoreModel:
    return trained_model("stripes")


@pytest.fixture(scope="module")
def grey_model(tiny_engine: Engine) -> PatchCoreModel:
    return tiny_engine.fit([grey(texture("stripes", seed)) for seed in range(4)]).model


def test_a_decoded_grey_png_or_jpeg_is_grey_and_a_colour_one_colour() -> None:
    rgb = texture("checker", 0)
    one_channel = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    ok, jpeg = cv2.imencode(".jpg", one_channel)
    assert ok
    assert channel_mode(decode_image(png(one_channel))) == GREY
    assert channel_mode(decode_image(jpeg.tobytes())) == GREY
    assert channel_mode(decode_image(png(rgb))) == COLOUR
    assert channel_mode(one_channel) == GREY


def test_one_coloured_pixel_anywhere_makes_a_colour_image() -> None:
    image = grey(texture("stripes", 1))
    assert channel_mode(image) == GREY
    for y, x, c in ((0, 0, 0), (63, 63, 2), (40, 7, 1)):
        touched = image.copy()
        touched[y, x, c] ^= 1
        assert channel_mode(touched) == COLOUR


def test_a_mix_of_grey_and_colour_images_is_refused_with_the_counts() -> None:
    colour = [texture("stripes", s) for s in range(3)]
    assert common_mode(colour) == COLOUR
    assert common_mode([grey(i) for i in colour]) == GREY
    with pytest.raises(ChannelMismatchError, match="1 grey, 3 colour"):
        common_mode([*colour, grey(colour[0])])


def test_fit_records_the_channel_mode(colour_model: PatchCoreModel, grey_model: PatchCoreModel):
    assert colour_model.meta.channel_mode == COLOUR
    assert grey_model.meta.channel_mode == GREY


def test_fit_on_mixed_images_is_refused_before_any_work(tiny_engine: Engine) -> None:
    images = [texture("stripes", 0), texture("stripes", 1), grey(texture("stripes", 2))]
    with pytest.raises(ChannelMismatchError, match="1 grey, 2 colour"):
        tiny_engine.fit(images)


def test_a_frame_of_the_other_mode_is_an_error_confined_to_it(
    tiny_engine: Engine, colour_model: PatchCoreModel, grey_model: PatchCoreModel
) -> None:
    frame = texture("stripes", 100)
    results = tiny_engine.infer([
        InferItem(colour_model, grey(frame)),
        InferItem(colour_model, frame),
        InferItem(grey_model, frame),
        InferItem(grey_model, grey(frame)),
    ])  # fmt: skip
    assert [r.verdict for r in results] == ["ERROR", "OK", "ERROR", "OK"]
    assert results[0].error_kind == "ChannelMismatchError"
    assert results[0].error == (
        "ChannelMismatchError: model trained on colour images, frame is grey"
    )
    assert results[2].error == (
        "ChannelMismatchError: model trained on grey images, frame is colour"
    )
    assert results[0].score is None and results[0].model_version == colour_model.version


def test_a_model_stored_before_modes_scores_any_frame_as_before(
    tiny_engine: Engine, colour_model: PatchCoreModel
) -> None:
    legacy = replace(colour_model, meta=replace(colour_model.meta, channel_mode=None))
    frame = grey(texture("stripes", 100))
    (result,) = tiny_engine.infer([InferItem(legacy, frame)])
    assert result.verdict in ("OK", "NG") and result.score is not None
    np.testing.assert_allclose(tiny_engine.image_scores(legacy, [frame]), [result.score])


def test_calibration_images_of_the_other_mode_are_refused(
    tiny_engine: Engine, colour_model: PatchCoreModel
) -> None:
    with pytest.raises(ChannelMismatchError, match="an image is grey"):
        tiny_engine.image_scores(colour_model, [texture("stripes", 7), grey(texture("stripes", 8))])


def test_appending_images_of_the_other_mode_is_refused(
    tiny_engine: Engine, colour_model: PatchCoreModel
) -> None:
    with pytest.raises(ChannelMismatchError, match="the added images are grey"):
        tiny_engine.append(colour_model, [grey(texture("stripes", 9))])
    out = tiny_engine.append(colour_model, [texture("stripes", 9)])
    assert out.model.meta.channel_mode == COLOUR


def test_the_mode_survives_the_artifact_and_old_metadata_loads_without_it(
    colour_model: PatchCoreModel, tmp_path: Path
) -> None:
    artifact.save(colour_model, tmp_path, "base")
    assert artifact.load(tmp_path, "base").meta.channel_mode == COLOUR
    old = colour_model.meta.to_dict()
    del old["channel_mode"]
    meta = ModelMeta.from_dict(old)
    assert meta.channel_mode is None
    assert "channel_mode" not in meta.to_dict()  # an old model's version stays what it was
