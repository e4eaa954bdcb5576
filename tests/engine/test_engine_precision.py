"""The precision travels with the model: fitted in the device's dtype, recorded, and scored
in that dtype by any engine (engine/engine.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pytest
import torch

from engine import artifact
from engine.config import EngineConfig
from engine.device import DeviceSpec
from engine.engine import Engine, InferItem
from engine.errors import EngineError
from engine.patchcore import PatchCoreModel
from tests.helpers.images import texture
from tests.helpers.settings import tiny_settings


@pytest.fixture(scope="module")
def stripes(trained_model: Callable[[str], PatchCoreModel]) -> PatchCoreModel:
    return trained_model("stripes")


@pytest.fixture(scope="module")
def defective(make_texture, add_defect) -> np.ndarray:
    return add_defect(make_texture("stripes", 200), y=20, x=24, size=16)


@pytest.fixture(scope="module")
def bf16_engine() -> Engine:
    """A CPU engine whose device default is bf16, as a GPU's is."""
    config = EngineConfig.from_settings(tiny_settings(knn_mode="exact"))
    return Engine(config, DeviceSpec(torch.device("cpu"), torch.bfloat16))


@pytest.fixture(scope="module")
def bf16_stripes(bf16_engine: Engine) -> PatchCoreModel:
    return bf16_engine.fit([texture("stripes", seed) for seed in range(4)]).model


def test_a_model_records_the_dtype_it_was_fitted_in(stripes, bf16_stripes) -> None:
    assert stripes.meta.compute_dtype == "float32"
    assert bf16_stripes.meta.compute_dtype == "bfloat16"
    assert bf16_stripes.version != stripes.version


def test_a_model_is_scored_in_its_own_dtype_on_any_engine(
    tiny_engine: Engine, bf16_engine: Engine, bf16_stripes: PatchCoreModel, defective, tmp_path
) -> None:
    """Its threshold was calibrated on bf16 features: an fp32 engine (a CPU) scores it with
    the bf16 backbone, after a save and load too, never with its own fp32 default."""
    images = [texture("stripes", 300), defective]
    own = bf16_engine.image_scores(bf16_stripes, images)
    artifact.save(bf16_stripes, tmp_path, "m")
    loaded = artifact.load(tmp_path, "m")
    assert loaded.meta.compute_dtype == "bfloat16"
    for model in (bf16_stripes, loaded):
        np.testing.assert_array_equal(tiny_engine.image_scores(model, images), own)
        results = tiny_engine.infer([InferItem(model, im) for im in images])
        np.testing.assert_allclose([r.score for r in results], own, rtol=1e-6)
    as_fp32 = replace(bf16_stripes, meta=replace(bf16_stripes.meta, compute_dtype="float32"))
    fp32_scores = tiny_engine.image_scores(as_fp32, images)
    assert not np.allclose(fp32_scores, own, rtol=1e-4, atol=0)


def test_frames_of_models_of_different_dtypes_do_not_share_a_forward(
    make_engine: Callable[..., Engine], stripes, bf16_stripes, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = make_engine()
    images = [texture("stripes", 310 + i) for i in range(2)]
    alone = [engine.image_scores(m, images) for m in (stripes, bf16_stripes)]
    bb = engine.backbone()
    forward = bb.forward
    dtypes: list[torch.dtype | None] = []

    def recording(x, dtype=None):
        dtypes.append(dtype)
        return forward(x, dtype)

    monkeypatch.setattr(bb, "forward", recording)
    items = [InferItem(m, im) for im in images for m in (stripes, bf16_stripes)]
    scores = [r.score for r in engine.infer(items)]
    assert sorted(map(str, dtypes)) == ["torch.bfloat16", "torch.float32"]
    np.testing.assert_allclose(scores[0::2], alone[0], rtol=1e-6)
    np.testing.assert_allclose(scores[1::2], alone[1], rtol=1e-6)


def test_an_unknown_compute_dtype_is_an_error_never_a_verdict(
    tiny_engine: Engine, stripes: PatchCoreModel, defective: np.ndarray
) -> None:
    odd = replace(stripes, meta=replace(stripes.meta, compute_dtype="float64"))
    (result,) = tiny_engine.infer([InferItem(odd, defective)])
    assert result.verdict == "ERROR"
    assert result.error is not None and "compute dtype" in result.error
    with pytest.raises(EngineError, match="compute dtype"):
        tiny_engine.image_scores(odd, [defective])
