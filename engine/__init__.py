"""PatchCore anomaly engine: backbones, coreset, kNN, anomaly maps, regions, thresholds."""

from engine.config import EngineConfig
from engine.decision import Inference, InferItem, Verdict
from engine.engine import Engine, FitOutput
from engine.errors import EngineError
from engine.patchcore import ModelMeta, PatchCoreModel

__all__ = [
    "Engine",
    "EngineConfig",
    "EngineError",
    "FitOutput",
    "InferItem",
    "Inference",
    "ModelMeta",
    "PatchCoreModel",
    "Verdict",
]
