"""Request and response schemas of the REST API (documented in ``docs/API_CONTRACTS.md``)."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from engine.calibration import ScoreStats
from engine.decision import Verdict
from store.plans import DEFAULT_DEADLINE_MS

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
    calibration_version: str | None = Field(
        description="content hash of that threshold's calibration"
    )
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
    calibration_version: str = Field(description="content hash of this calibration")
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
    calibration_version: str | None = Field(
        description="content hash of the calibration (threshold and the statistics it came "
        "from): changes on recalibration, unlike model_version; null: not calibrated"
    )
    image_sha256: str = Field(description="SHA-256 (hex) of the uploaded file's bytes")
    code_version: str = Field(description="BDI Edge version, + git commit when known")
    settings_fingerprint: str = Field(
        description="hash of the settings that change a score or verdict (docs/KAFKA.md)"
    )
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
    calibration_version: str | None
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
    calibration_version: str | None = Field(description="content hash of the calibration")
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


# --- the trace (store/trace, docs/TRACE.md) --------------------------------------------------
class TraceFramePublic(BaseModel):
    frame_id: str
    role_id: str | None
    roi_id: str | None
    verdict: str | None = Field(description="OK, NG, ERROR or NO_MODEL")
    score: float | None
    threshold: float | None
    regions: list[dict[str, Any]] = Field(description="as in the frame verdict")
    error_class: str | None
    model_version: str | None
    calibration_version: str | None
    image_sha256: str | None
    code_version: str | None
    settings_fingerprint: str | None
    produced_at: str | None = Field(description="when the frame verdict was built")
    seen_at: str | None = Field(description="when the part aggregator counted it")
    verdict_stored: bool = Field(description="its frame verdict (bdi.verdicts) is stored")
    frame_url: str
    crop_url: str | None = Field(description="the crop as the camera sent it, when kept")
    heatmap_url: str | None = Field(
        description="drawn on demand; null without a kept crop or for a frame no model scored"
    )
    no_crop: str | None = Field(description="why there is no crop_url (null: there is one)")


class PartPublic(BaseModel):
    part_id: str
    decided: bool = Field(description="false: frames are stored but no part record yet")
    verdict: Literal["OK", "NG", "ERROR", "NO_MODEL", "INCOMPLETE"] | None
    reason: str | None
    recipe_id: str | None
    plan_version: str | None
    deadline_ms: int | None
    missing: list[dict[str, Any]] = Field(description="plan ROIs without a frame")
    first_frame_at: str | None
    last_frame_at: str | None
    decided_at: str | None
    code_version: str | None = Field(description="the aggregator's code version")
    frames: list[TraceFramePublic] = Field(description="the frames the verdict is made of")
    unexpected: list[TraceFramePublic] = Field(description="frames of the part not counted")
    other_frames: list[TraceFramePublic] = Field(
        description="frame verdicts stored with this part_id that no record lists"
    )
    late: list[TraceFramePublic] = Field(description="frames that came after the decision")
    record: dict[str, Any] | None = Field(description="the whole bdi.part/1 record")


class VerdictsPublic(BaseModel):
    verdicts: list[dict[str, Any]] = Field(
        description="bdi.verdict/1 documents as stored, newest first, each with frame_url "
        "and part_url"
    )
    count: int
    next_cursor: str | None = Field(description="pass as cursor for the next page; null: last")


class FrameImagePublic(BaseModel):
    sha256: str
    size: int


class FramePublic(BaseModel):
    frame_id: str
    part_id: str | None
    part_url: str | None
    verdict: dict[str, Any] | None = Field(
        description="the bdi.verdict/1 document as stored; null until it comes"
    )
    image: FrameImagePublic | None = Field(description="the frame's image, when read")
    crop_url: str | None
    heatmap_url: str | None
    no_crop: str | None = Field(description="why there is no crop_url (null: there is one)")
