"""What the engine reads from the service's settings, as one small frozen value."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from configs.settings import KnnMode, Settings, ThresholdMethod


@dataclass(frozen=True)
class EngineConfig:
    """The engine's part of :class:`configs.settings.Settings`: each field has the name and
    meaning of the setting it comes from (``BDI_<NAME>``, documented in the README)."""

    backbone: str
    backbone_weights: str | None  # a weights file, "random", or None for the packaged one
    image_size: int
    input_mode: str  # "square", "aspect" or "auto": how new fits shape their input (engine.meta)
    coreset_rate: float
    coreset_projection_dim: int
    knn_mode: KnnMode
    knn_ivf_nprobe: int
    knn_shortlist: int  # bank rows kept per grid position as first kNN bounds; 0 = none
    anomaly_sigma: float
    score_reweight: bool
    position_norm: bool  # subtract the per-position OK baseline from patch distances
    fewshot_below: int  # new fits on fewer OK images get the few-shot options; 0 = never
    score_percentile: float
    threshold_method: ThresholdMethod  # "conformal" (held-out split) or "percentile" (legacy)
    target_frr: float  # the conformal threshold's false-reject rate bound
    calibration_share: float  # share of the OK images held out for it
    area_mm2_thr: float  # regions smaller than this (mm²) do not make a frame NG
    engine_batch_size: int  # images per backbone forward; 0 = by device
    seed: int

    @classmethod
    def from_settings(cls, settings: Settings) -> EngineConfig:
        return cls(**{f.name: getattr(settings, f.name) for f in fields(cls)})
