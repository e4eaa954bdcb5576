"""Request and response schemas of the REST API (documented in ``docs/API_CONTRACTS.md``)."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from engine.calibration import ScoreStats
from engine.decision import Verdict

Label = Literal["ok", "ng"]


class ErrorPublic(BaseModel):
    error: str = Field(description="stable machine-readable code, e.g. missing_memory")
    detail: str = Field(description="what went wrong, for a human")
    request_id: str | None
    errors: list[dict[str, Any]] | None = Field(
        default=None, description="per-field problems (422 only)"
    )


class HealthPublic(BaseModel):
    status: Literal["ok"]
    device: str
    model: str = Field(description="backbone and input size the engine trains with")
    version: str = Field(description="BDI Edge version")
    request_id: str
    recipe_id: str | None = Field(description="the recipe asked about (normalised), if any")
    ready: bool = Field(description="engine loaded and broker reachable (when one is set)")
    checks: dict[str, str] = Field(
        description='engine: "ready" / "loading" / "error: ..."; broker: "ok" / '
        '"unreachable" / "not configured"'
    )


class ModelIds(BaseModel):
    recipe_id: str
    role_id: str
    roi_id: str
    model_key: str


class FitResult(ModelIds):
    model_version: str = Field(description="content hash of memory bank + metadata")
    revision: str = Field(description="hash of the stored files")
    n_images: int
    n_patches: int
    memory_bank: int = Field(description="patches kept by the coreset")
    coreset_rate: float
    backbone: str
    image_size: int
    grid: tuple[int, int] = Field(description="token grid (rows, cols)")
    mm_per_px: float | None
    threshold: float | None = Field(description="OK-only threshold (leave-one-out), if any")
    timings_s: dict[str, float]
    source: Literal["upload", "dataset"]


def _finite(values: list[float]) -> list[float]:
    if not all(math.isfinite(v) for v in values):
        raise ValueError("scores must be finite numbers")
    return values


class CalibrateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    recipe_id: str | None = None
    role_id: str
    roi_id: str
    model_key: str | None = None
    ok_scores: list[float] = Field(min_length=1, max_length=1_000_000)
    ng_scores: list[float] = Field(default_factory=list, max_length=1_000_000)

    _check_ok = field_validator("ok_scores")(_finite)
    _check_ng = field_validator("ng_scores")(_finite)


class CalibrationPublic(ModelIds):
    model_version: str
    threshold: float
    method: Literal["ok_percentile", "ok_ng"]
    percentile: float
    ok: ScoreStats
    ng: ScoreStats | None
    ok_reject_rate: float
    ng_miss_rate: float | None
    source: Literal["scores", "dataset"]


class RegionPublic(BaseModel):
    bbox: tuple[int, int, int, int] = Field(description="x, y, width, height in image pixels")
    area_px: int
    area_mm2: float | None = Field(description="6 significant digits; null without a scale")
    max_score: float = Field(
        description="highest anomaly-map value inside the region; the map averages "
        "neighbouring patch scores, so this is usually below the image score"
    )
    mean_score: float


class InferencePublic(BaseModel):
    verdict: Verdict
    score: float | None
    threshold: float | None
    regions: list[RegionPublic]
    model_version: str | None
    error: str | None = None
    heatmap_png_base64: str | None = None
    random_backbone: bool = Field(description="true: scored with an untrained backbone (tests)")
    timings_ms: dict[str, float]


class DatasetInferencePublic(BaseModel):
    name: str
    label: Label
    verdict: Verdict
    score: float | None
    threshold: float | None
    regions: list[RegionPublic]
    error: str | None = None


class InferDatasetResult(ModelIds):
    model_version: str | None
    threshold: float | None
    results: list[DatasetInferencePublic]
    counts: dict[str, int] = Field(description="verdict -> number of images")
    auroc: float | None = Field(description="image AUROC, when both labels are present")


class ModelStatePublic(BaseModel):
    recipe_id: str
    role_id: str
    roi_id: str
    model_key: str
    base_name: str
    source: str | None
    has_memory: bool
    has_index: bool
    has_calibration: bool
    threshold: float | None
    version: str | None
    revision: str | None
    mm_per_px: float | None
    dataset: dict[str, int]
    error: str | None
    ready: bool


class RecipeManifest(BaseModel):
    recipe_id: str
    mm_per_px: float | None
    models: list[ModelStatePublic]


class ManifestPublic(BaseModel):
    recipes: list[RecipeManifest]
    legacy: dict[str, Any] | None = Field(
        default=None, description="models and datasets found in the original backend's layouts"
    )


class DatasetImagePublic(BaseModel):
    name: str
    label: Label
    size: int
    legacy: bool
    meta: dict[str, Any] = Field(default_factory=dict)


class DatasetUploadResult(BaseModel):
    recipe_id: str
    role_id: str
    roi_id: str
    label: Label
    stored: list[DatasetImagePublic]
    counts: dict[str, int]


class DatasetListPublic(BaseModel):
    recipe_id: str
    role_id: str
    roi_id: str
    ok: list[DatasetImagePublic]
    ng: list[DatasetImagePublic]
    counts: dict[str, int]


class DeletedPublic(BaseModel):
    deleted: int
    counts: dict[str, int]


class RevisionPublic(BaseModel):
    revision: str = Field(description="hash of the stored files: what a rollback names")
    version: str | None = Field(description="content hash of memory bank + metadata")
    threshold: float | None
    calibration: str | None = Field(
        description='"ok_percentile" (set by training), "ok_ng" (calibrated with NG), or null'
    )
    calibrated: bool = Field(description="the threshold was calibrated on OK and NG scores")
    saved_at: float | None = Field(description="when first stored (seconds since the epoch)")
    current: bool = Field(description="the revision served now")


class RevisionsPublic(ModelIds):
    current: str | None = Field(description="the revision served now (null: no model)")
    revisions: list[RevisionPublic] = Field(description="the current one first, then newest")
