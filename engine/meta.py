"""A trained model's metadata: what it was fitted on and how, stored as JSON beside it."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

FORMAT_VERSION = 1
# the artifact's name of ModelMeta.baseline_images (and "nominal" the baseline's array):
# file-format names, kept so that stored models load and keep their versions
_BASELINE_IMAGES_KEY = "nominal_images"
FLOAT32 = "float32"  # ModelMeta.compute_dtype of fp32 models, left out of their metadata
SQUARE = "square"  # ModelMeta.input_mode of squashed inputs, left out of their metadata
ASPECT = "aspect"  # ModelMeta.input_mode of inputs that keep the aspect ratio
# BDI_INPUT_MODE only, never stored: "aspect" where a square input would squash the
# training crops by more than engine.images.SQUASH_LIMIT, else "square"
AUTO = "auto"
# the few-shot options: left out of a model's metadata at their field defaults (plain PatchCore)
_FEWSHOT_KEYS = ("feature_norm", "rotations", "top_share", "baseline_min")


@dataclass(frozen=True)
class ModelMeta:
    backbone: str
    backbone_weights: str  # "random", or "sha256:<16 hex>" of the pretrained weights file
    image_size: int
    grid: tuple[int, int]
    feature_dim: int
    mm_per_px: float | None
    coreset_rate: float
    n_train_images: int
    n_patches: int
    memory_bank: int
    baseline_images: int = 0  # training images behind the per-position baseline; 0 = none
    # the backbone's dtype when the model was fitted, and so calibrated: "float32",
    # "bfloat16" or "float16" (engine.device.COMPUTE_DTYPES). The model is scored in it on
    # any device, so that its threshold means what it meant at calibration.
    compute_dtype: str = FLOAT32
    # max over the training patches of the distance to their nearest coreset row, in the
    # coreset's projected space (engine.coreset); None: not recorded (older models)
    coverage_radius: float | None = None
    # how a frame becomes the backbone's input (engine.images): "square" squashes it to
    # image_size x image_size (every model stored before the key existed); "aspect" resizes
    # it to input_shape (H, W), the training images' aspect ratio
    input_mode: str = SQUARE
    input_shape: tuple[int, int] | None = None  # (H, W) of "aspect" models; None: square
    channel_mode: str | None = None  # the training images' (engine.images); None: not recorded
    # few-shot options (engine.fewshot); the defaults are plain PatchCore, as in models
    # stored before they existed
    feature_norm: bool = False  # patch features L2-normalised (bank and queries)
    rotations: int = 1  # views of each bank image, 45° apart (1: the image alone)
    top_share: float = 0.0  # image score = mean of the top share of patch scores; 0: max
    # fewest leave-one-out images a per-position baseline is taken from (fewer: none); 16 =
    # engine.leave_one_out.BASELINE_MIN_IMAGES, as in models stored before the key existed
    baseline_min: int = 16
    created_at: float = field(default_factory=time.time)
    format: int = FORMAT_VERSION

    @property
    def input_hw(self) -> tuple[int, int]:
        """The backbone's input ``(H, W)``: ``input_shape``, or the square of ``image_size``."""
        if self.input_shape is not None:
            return self.input_shape
        return (self.image_size, self.image_size)

    def to_dict(self) -> dict[str, object]:
        """The artifact's JSON metadata (hashed into the model version: keys are stable)."""
        d = asdict(self)
        d["grid"] = list(self.grid)
        if self.input_mode == SQUARE:
            del d["input_mode"]  # as in models stored before it was recorded
        if self.input_shape is not None:
            d["input_shape"] = list(self.input_shape)
        d[_BASELINE_IMAGES_KEY] = d.pop("baseline_images")
        if self.compute_dtype == FLOAT32:
            # absent means fp32, as in every model stored before the key existed: their
            # metadata, and so their versions, stay what they were
            del d["compute_dtype"]
        for key in ("coverage_radius", "input_shape", "channel_mode"):
            if d[key] is None:
                del d[key]  # as in models stored before it was recorded
        for key in _FEWSHOT_KEYS:
            if d[key] == self.__dataclass_fields__[key].default:
                del d[key]  # likewise
        return d

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> ModelMeta:
        data = {**data}
        if _BASELINE_IMAGES_KEY in data:
            data["baseline_images"] = data.pop(_BASELINE_IMAGES_KEY)
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        known["grid"] = tuple(known["grid"])  # type: ignore[arg-type]
        if known.get("input_shape") is not None:
            known["input_shape"] = tuple(known["input_shape"])  # type: ignore[arg-type]
        return cls(**known)  # type: ignore[arg-type]
