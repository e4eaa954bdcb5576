"""``bdi bench engine --input-mode``: the input keys of its JSON, and the pixel metric
against masks at the images' own resolution (a tiny MVTec-layout folder of strips)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.bench.engine import evaluate
from engine.config import EngineConfig
from engine.device import select_device
from engine.engine import Engine
from tests.helpers.images import texture
from tests.helpers.settings import tiny_settings

STRIP = (48, 144)  # H, W: a crop three times as wide as it is high


def _write(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image)


@pytest.fixture(scope="module")
def strips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("strips")
    for seed in range(6):
        _write(root / "train" / "good" / f"{seed:03d}.png", texture("checker", seed, *STRIP))
    for seed in range(6, 9):
        _write(root / "test" / "good" / f"{seed:03d}.png", texture("checker", seed, *STRIP))
    for seed in range(9, 12):
        image = texture("checker", seed, *STRIP)
        mask = np.zeros(STRIP, np.uint8)
        y, x = 10 + seed, 20 + 8 * seed
        image[y : y + 8, x : x + 10] = 255
        mask[y : y + 8, x : x + 10] = 255
        _write(root / "test" / "defect" / f"{seed:03d}.png", image)
        _write(root / "ground_truth" / "defect" / f"{seed:03d}_mask.png", mask)
    return root


def _engine(**overrides: object) -> Engine:
    return Engine(EngineConfig.from_settings(tiny_settings(**overrides)), select_device(False))


@pytest.mark.parametrize(
    ("mode", "shape"), [("square", [64, 64]), ("aspect", [64, 192])]
)  # fmt: skip
def test_the_json_names_the_input_mode_and_shape(strips: Path, mode: str, shape: list[int]):
    result = evaluate(strips, _engine(input_mode=mode), batch_size=4, rounds=1)
    assert (result["input_mode"], result["input_shape"]) == (mode, shape)
    assert result["tiles_per_image"] == 1
    assert result["n_test"] == 6 and 0.0 <= result["pixel_auroc"] <= 1.0
    assert result["image_auroc"] >= 0.9  # white boxes on a checker: plain to see


def test_a_mask_not_at_its_image_size_is_refused(strips: Path, tmp_path: Path) -> None:
    root = tmp_path / "copy"
    for path in strips.rglob("*.png"):
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if path.name.endswith("_mask.png"):
            image = cv2.resize(image, (STRIP[1] // 2, STRIP[0] // 2))
        _write(root / path.relative_to(strips), image)
    with pytest.raises(ValueError, match="a mask has its image's size"):
        evaluate(root, _engine(), batch_size=4, rounds=1)
