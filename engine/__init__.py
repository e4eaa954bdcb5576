"""PatchCore anomaly engine: backbones, coreset, kNN, anomaly maps, regions, thresholds."""

from engine.engine import Engine, FitResult, Inference, InferItem
from engine.errors import EngineError
from engine.patchcore import ModelMeta, PatchCoreModel

__all__ = [
    "Engine",
    "EngineError",
    "FitResult",
    "InferItem",
    "Inference",
    "ModelMeta",
    "PatchCoreModel",
]
