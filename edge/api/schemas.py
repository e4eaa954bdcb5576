"""Request and response schemas of the REST API (documented in ``docs/API_CONTRACTS.md``)."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from engine.calibration import ScoreStats
from engine.decision import Verdict
from store.plans import DEFAULT_DEADLINE_MS

Label = Literal["ok", "ng"]
Apply = Literal["balanced", "conformal"]  # the threshold a calibration stores


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
    threshold: float | None = Field(
        description="OK-only threshold (conformal, or legacy leave-one-out), if any"
    )
    calibration_version: str | None = Field(
        description="content hash of that threshold's calibration"
    )
    timings_s: dict[str, float]
    source: Literal["upload", "dataset"]
    # issue 22: the conformal threshold, and appending OK images (docs/API_CONTRACTS.md)
    mode: Literal["fit", "append"] = Field(description="append: added to the stored model")
    calibration_method: str | None = Field(description="conformal, ok_percentile or ok_ng")
    target_frr: float | None = Field(description="conformal alpha; null: legacy threshold")
    conformal: ConformalPublic | None = Field(description="the conformal choice; null: legacy")
    n_calibration: int = Field(description="images this call held out for the threshold")
    added_rows: int | None = Field(description="append: memory-bank rows added")
    previous_model_version: str | None = Field(description="append: the model added to")
    warnings: list[str] = Field(description="e.g. the false-reject bound is not guaranteed")


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
    # required (1 or more) but with apply=conformal alone: the stored held-out scores then
    ok_scores: list[float] = Field(default_factory=list, max_length=1_000_000)
    ng_scores: list[float] = Field(default_factory=list, max_length=1_000_000)
    apply: Apply = "balanced"  # the OK/NG choice, or the model's conformal threshold
    target_frr: float | None = Field(default=None, ge=1e-6, lt=1, allow_inf_nan=False)
    # a part of m ROIs, NG when any is: each ROI's threshold gets target_frr / m
    per_part_rois: int = Field(default=1, ge=1, le=10_000, strict=True)

    _check_ok = field_validator("ok_scores")(_finite)
    _check_ng = field_validator("ng_scores")(_finite)

    @model_validator(mode="after")
    def _needs(self) -> CalibrateRequest:
        if not self.ok_scores and (self.apply != "conformal" or self.ng_scores):
            raise ValueError("ok_scores: at least one score (unless apply=conformal alone)")
        if self.per_part_rois > 1 and self.target_frr is None:
            raise ValueError("per_part_rois needs target_frr (the part's false-reject rate)")
        return self


class ConformalPublic(BaseModel):  # of the model's held-out OK scores (docs/THRESHOLDS.md)
    alpha: float = Field(description="per-ROI false-reject rate: target_frr / per_part_rois")
    target_frr: float
    per_part_rois: int
    n: int = Field(description="held-out OK scores")
    k: int = Field(description="the threshold is the k-th smallest of them")
    bound: float = Field(description="(n + 1 - k) / (n + 1): the guaranteed false-reject rate")
    guaranteed: bool = Field(description="n >= needed: the bound reaches alpha")
    needed: int
    threshold: float
    ng_miss_rate: float | None = Field(description="NG scores below it; null without NG")


class BalancedPublic(BaseModel):
    threshold: float
    ng_miss_rate: float
    ok_reject_rate: float


class CalibrationPublic(ModelIds):
    model_version: str
    calibration_version: str = Field(description="content hash of this calibration")
    threshold: float
    method: Literal["conformal", "ok_percentile", "ok_ng"]
    percentile: float
    ok: ScoreStats
    ng: ScoreStats | None
    ok_reject_rate: float
    ng_miss_rate: float | None
    source: Literal["scores", "dataset"]
    applied: Apply
    conformal: ConformalPublic | None = Field(description="null: a legacy model")
    balanced: BalancedPublic | None = Field(description="the OK/NG choice; null without NG")
    warnings: list[str]


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
    calibration_version: str | None = Field(
        description="content hash of the calibration (threshold and the statistics it came "
        "from): changes on recalibration, unlike model_version; null: not calibrated"
    )
    image_sha256: str = Field(description="SHA-256 (hex) of the uploaded file's bytes")
    code_version: str = Field(description="BDI Edge version, + git commit when known")
    settings_fingerprint: str = Field(
        description="hash of the settings that change a score or verdict (docs/KAFKA.md)"
    )
    p_value: float | None = Field(description="conformal p-value (docs/THRESHOLDS.md)")
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
    p_value: float | None = Field(description="as in /infer")
    error: str | None = None


class InferDatasetResult(ModelIds):
    model_version: str | None
    calibration_version: str | None
    threshold: float | None
    results: list[DatasetInferencePublic]
    counts: dict[str, int] = Field(description="verdict -> number of images")
    auroc: float | None = Field(description="image AUROC, when both labels are present")


class DriftReportPublic(BaseModel):
    """One consumer's drift report on a model (consumers.drift_state)."""

    consumer: str | None
    drift: bool
    since: str | None = Field(description="when the current drift started")
    model_version: str | None
    frames: int = Field(description="p-values tested since this version's detector started")
    detector: str
    statistic: float
    updated_at: float | None = Field(description="when the consumer wrote it (Unix time)")


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
    calibration_version: str | None = Field(description="content hash of the calibration")
    revision: str | None
    mm_per_px: float | None
    dataset: dict[str, int]
    error: str | None
    ready: bool
    threshold_method: str | None = Field(description="conformal, ok_percentile or ok_ng")
    target_frr: float | None = Field(description="a conformal threshold's false-reject rate")
    frr_guaranteed: bool | None = Field(description="enough held-out OK images for it")
    n_held_out: int | None = Field(
        None, description="a conformal threshold's held-out OK scores (n); null otherwise"
    )
    drift: bool | None = Field(
        None, description="a consumer finds this model version's p-values drifting (null: "
        "no consumer reports on it; docs/DRIFT.md)"
    )  # fmt: skip
    drift_reports: list[DriftReportPublic] = Field(default_factory=list)


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
    min_ok_samples: int = Field(description="stored OK images a training needs")


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
    calibration_version: str | None = Field(description="content hash of its calibration")


class RevisionsPublic(ModelIds):
    current: str | None = Field(description="the revision served now (null: no model)")
    revisions: list[RevisionPublic] = Field(description="the current one first, then newest")


# --- inspection plans (store/plans.py) -------------------------------------------------------
class PlanRoiPublic(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role_id: str = Field(max_length=256)
    roi_id: str = Field(max_length=256)
    required: bool = Field(default=True, strict=True, description="the part needs this frame")


class PlanRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rois: list[PlanRoiPublic] = Field(
        description="the (role, ROI) frames of one part; none, or one named twice: 400"
    )
    deadline_ms: int = Field(
        default=DEFAULT_DEADLINE_MS,
        strict=True,
        description="ms after a part's first frame by which its required frames must arrive "
        "(1 to 3,600,000; else 400)",
    )


class PlanWarningPublic(BaseModel):
    role_id: str
    roi_id: str
    reason: Literal["no_model", "no_threshold", "unreadable"]
    detail: str


class PlanPublic(BaseModel):
    recipe_id: str
    version: str = Field(description="content hash: the same plan keeps its version")
    rois: list[PlanRoiPublic]
    deadline_ms: int
    created_at: float = Field(description="when this version was first stored (epoch seconds)")
    current: bool = Field(description="this version is the recipe's plan now")
    warnings: list[PlanWarningPublic] = Field(
        description="ROIs whose frames cannot be judged OK/NG now (their parts cannot be OK)"
    )
