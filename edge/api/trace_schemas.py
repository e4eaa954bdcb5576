"""Response schemas of the trace endpoints (``/parts``, ``/verdicts``, ``/frames``; store/trace,
docs/TRACE.md and docs/API_CONTRACTS.md)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class TraceFramePublic(BaseModel):
    frame_id: str
    role_id: str | None
    roi_id: str | None
    verdict: str | None = Field(description="OK, NG, ERROR or NO_MODEL")
    score: float | None
    threshold: float | None
    p_value: float | None = Field(description="the score's conformal p-value, when known")
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


class PartBriefPublic(BaseModel):
    part_id: str
    verdict: Literal["OK", "NG", "ERROR", "NO_MODEL", "INCOMPLETE"] | None
    reason: str | None
    recipe_id: str | None
    plan_version: str | None
    decided_at: str | None
    first_frame_at: str | None
    frames: int = Field(description="how many frames the verdict is made of")
    not_ok: int = Field(description="how many of them are not OK")
    missing: list[dict[str, Any]] = Field(description="plan ROIs without a frame")
    part_url: str


class PartsPublic(BaseModel):
    parts: list[PartBriefPublic] = Field(description="newest decision first")
    count: int


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
