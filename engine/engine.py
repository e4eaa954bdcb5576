"""The engine facade both front doors use: fit, calibrate and batched inference."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from engine import calibration as calib
from engine import training
from engine.anomaly_map import anomaly_maps
from engine.backbone import RANDOM_WEIGHTS, Backbone, load_backbone
from engine.config import EngineConfig
from engine.decision import Inference, InferItem, decide, failed, needs_map
from engine.device import DeviceSpec, compute_dtype, select_device
from engine.errors import ChannelMismatchError, EngineError, ShapeMismatchError
from engine.images import ASPECT_SIZING, channel_mode, check_mode, check_shape, to_tensor
from engine.patchcore import MapSpec, PatchCoreModel, aggregate, score
from engine.training import FitOutput, Progress

if TYPE_CHECKING:
    from configs.settings import Settings

# images per backbone forward when BDI_ENGINE_BATCH_SIZE is 0. On the CPU a forward of 8
# keeps the backbone's activations in a 32 MiB L3 cache: measured on 2 EPYC cores, a batch of
# 16 frames scored as two forwards of 8 and one search gives 3-22 % more img/s than one
# forward of 16 (docs/BENCHMARKS.md). A GPU wants large forwards.
CPU_BATCH = 8
CUDA_BATCH = 64


def _noop(stage: str, done: int, total: int) -> None:
    return None


class Engine:
    """Backbones (loaded once, shared) + PatchCore maths on one device. Thread-safe."""

    def __init__(self, config: EngineConfig, spec: DeviceSpec) -> None:
        self.config = config
        self.spec = spec
        self._backbones: dict[tuple[str, tuple[int, ...]], Backbone] = {}
        self._fingerprints: dict[str, str] = {}
        self._lock = threading.Lock()
        # how an "aspect" fit sizes its input from image_size (engine.images.SIZING_RULES)
        self.aspect_sizing = ASPECT_SIZING

    @property
    def batch_size(self) -> int:
        """Images per backbone forward (``BDI_ENGINE_BATCH_SIZE``, or the device's default)."""
        if self.config.engine_batch_size:
            return self.config.engine_batch_size
        return CUDA_BATCH if self.spec.is_cuda else CPU_BATCH

    @classmethod
    def from_settings(cls, settings: Settings) -> Engine:
        """The engine the settings describe, on the device they ask for."""
        spec = select_device(settings.require_cuda, settings.torch_threads)
        return cls(EngineConfig.from_settings(settings), spec)

    # --- backbones -------------------------------------------------------------------
    def backbone(
        self, name: str | None = None, size: int | tuple[int, int] | None = None
    ) -> Backbone:
        """Backbone ``name`` for inputs of ``size`` ``(H, W)`` (an int: a square; None: the
        configured ones). Only DINOv2 is built per input size: its position embeddings are
        interpolated to the token grid when it is loaded."""
        name = name or self.config.backbone
        size = size or self.config.image_size
        hw = (size, size) if isinstance(size, int) else tuple(size)
        key = (name, hw if name == "dinov2_vits14" else (0, 0))
        with self._lock:
            if key not in self._backbones:
                # the configured weights belong to the configured backbone; any other
                # backbone uses its packaged default (or fails with a clear message)
                weights = self.config.backbone_weights if name == self.config.backbone else None
                self._backbones[key] = load_backbone(name, self.spec, weights, (hw[0], hw[1]))
            return self._backbones[key]

    def weights_fingerprint(self, backbone: Backbone) -> str:
        source = backbone.info.weights
        if source == RANDOM_WEIGHTS:
            return RANDOM_WEIGHTS
        if source not in self._fingerprints:
            digest = hashlib.sha256(Path(source).read_bytes()).hexdigest()[:16]
            self._fingerprints[source] = f"sha256:{digest}"
        return self._fingerprints[source]

    def embed(
        self,
        images: Sequence[np.ndarray],
        backbone: Backbone,
        size: int | tuple[int, int],
        progress: Progress = _noop,
        dtype: torch.dtype | None = None,
    ) -> np.ndarray:
        """RGB images -> patch features ``(B, h, w, C)`` float32, each image resized to
        ``size`` ``(H, W)`` (an int: a square), in device-sized batches, the backbone
        computing in ``dtype`` (None: the device's default). A model's images
        are embedded in the model's dtype (:meth:`model_dtype`)."""
        step = self.batch_size
        out: list[np.ndarray] = []
        for start in range(0, len(images), step):
            x = to_tensor(list(images[start : start + step]), size)
            maps = backbone(x, dtype)
            out.append(aggregate(maps, backbone.info.grid_map).cpu().numpy())
            progress("embed", min(start + step, len(images)), len(images))
        if len(out) == 1:
            return out[0]  # one forward (the usual batch): no copy
        return np.concatenate(out) if out else np.empty((0, 0, 0, 0), np.float32)

    def warm_up(self, frames: int, size: tuple[int, int] | None = None) -> float:
        """Run the configured backbone twice on one forward of ``min(frames, batch_size)``
        synthetic images at input size ``size`` ``(H, W)`` (None: the configured square;
        an "aspect" model's ``input_shape`` where it is known), and return the second run's
        seconds per frame. The first run pays for lazy set-up (kernel selection, allocator
        growth), so the first real batch does not; the second is a lower bound of what a
        frame costs (decoding, resizing and the kNN come on top)."""
        hw = size or (self.config.image_size, self.config.image_size)
        n = max(1, min(frames, self.batch_size))
        noise = np.random.default_rng(0).integers(0, 256, (n, *hw, 3), dtype=np.uint8)
        images = list(noise)
        bb = self.backbone(None, hw)
        self.embed(images, bb, hw)
        t0 = time.perf_counter()
        self.embed(images, bb, hw)
        return (time.perf_counter() - t0) / n

    # --- training -------------------------------------------------------------------------
    def fit(
        self,
        images: Sequence[np.ndarray],
        mm_per_px: float | None = None,
        coreset_rate: float | None = None,
        progress: Progress = _noop,
        target_frr: float | None = None,
    ) -> FitOutput:
        """Build a PatchCore model from OK images, with an OK-only threshold when n >= 2
        (``target_frr``: the conformal bound, else ``BDI_TARGET_FRR``; engine.training)."""
        return training.fit(self, images, mm_per_px, coreset_rate, progress, target_frr)

    def append(
        self, model: PatchCoreModel, images: Sequence[np.ndarray], progress: Progress = _noop
    ) -> FitOutput:
        """``model`` with more OK images in its memory bank, without a refit (a new model;
        :func:`engine.training.append`)."""
        return training.append(self, model, images, progress)

    def image_scores(self, model: PatchCoreModel, images: Sequence[np.ndarray]) -> np.ndarray:
        """Image scores of many images against one model (calibration, datasets); each
        image of the model's channel mode, else :class:`ChannelMismatchError` (and of its
        aspect ratio, else :class:`ShapeMismatchError`)."""
        for image in images:
            check_mode(model.meta.channel_mode, channel_mode(image), "an image is")
            check_shape(model.meta.input_shape, image)
        bb = self.backbone_for(model)
        feats = self.embed(images, bb, model.meta.input_hw, dtype=self.model_dtype(model))
        no_maps = np.zeros(len(feats), dtype=bool)
        return score(model, feats, self.config.score_reweight, no_maps).image

    def calibrate(
        self, model: PatchCoreModel, ok_scores: Sequence[float], ng_scores: Sequence[float] | None
    ) -> calib.Calibration:
        """A threshold from OK (and NG) scores; a conformal model keeps its held-out scores
        (and so its p-values) whatever threshold is applied."""
        pct = self.config.score_percentile
        held = None if model.calibration is None else model.calibration.conformal
        if ng_scores is None or len(ng_scores) == 0:
            return replace(calib.from_ok(ok_scores, pct), conformal=held)
        return calib.from_ok_ng(ok_scores, ng_scores, pct, held)

    @staticmethod
    def model_dtype(model: PatchCoreModel) -> torch.dtype:
        """The dtype the model's backbone ran in at fit (and calibration) time: its images
        are embedded in it on any device, whatever the device's default."""
        return compute_dtype(model.meta.compute_dtype)

    def backbone_for(self, model: PatchCoreModel) -> Backbone:
        bb = self.backbone(model.meta.backbone, model.meta.input_hw)
        if bb.info.dim != model.meta.feature_dim:
            raise EngineError(
                f"model has {model.meta.feature_dim}-channel patch features; this engine's "
                f"{bb.info.name} gives {bb.info.dim} (trained by an older feature layout): "
                "retrain the model"
            )
        if self.weights_fingerprint(bb) != model.meta.backbone_weights:
            raise EngineError(
                f"model was trained with {model.meta.backbone} weights "
                f"{model.meta.backbone_weights}; this engine has {self.weights_fingerprint(bb)}"
            )
        return bb

    # --- inference ------------------------------------------------------------------------
    def infer(self, items: Sequence[InferItem]) -> list[Inference]:
        """Score a batch of frames that may belong to different models.

        The backbone runs once per (backbone, input shape, weights, compute dtype) group;
        each model then searches its own memory bank. A failure is confined to the frames
        it concerns, as ERROR.
        """
        t_start = time.perf_counter()
        results: list[Inference | None] = [None] * len(items)
        groups: dict[tuple[str, tuple[int, int], str, str], list[int]] = {}
        for i, item in enumerate(items):
            if item.model is None:
                results[i] = Inference("NO_MODEL", None, None, error="no model for this frame")
                continue
            meta = item.model.meta
            try:  # a grey frame is never judged against colour training images, or the reverse
                check_mode(meta.channel_mode, channel_mode(item.image))
                # nor a frame of another shape against an "aspect" model's, squashed silently
                check_shape(meta.input_shape, item.image)
            except (ChannelMismatchError, ShapeMismatchError) as exc:
                results[i] = failed(exc, item.model)
                continue
            # frames of different input shapes never share a forward
            key = (meta.backbone, meta.input_hw, meta.backbone_weights, meta.compute_dtype)
            groups.setdefault(key, []).append(i)
        for members in groups.values():
            self._infer_group(items, members, results)
        total_ms = (time.perf_counter() - t_start) * 1e3
        out = []
        for r in results:
            assert r is not None
            r.timings_ms.setdefault("total", total_ms)
            out.append(r)
        return out

    def _infer_group(
        self, items: Sequence[InferItem], members: list[int], results: list[Inference | None]
    ) -> None:
        cfg = self.config
        first = items[members[0]].model
        assert first is not None
        try:
            bb = self.backbone_for(first)
            dtype = self.model_dtype(first)
            t0 = time.perf_counter()
            images = [items[i].image for i in members]
            feats = self.embed(images, bb, first.meta.input_hw, dtype=dtype)
            embed_ms = (time.perf_counter() - t0) * 1e3 / len(members)
        except (EngineError, RuntimeError, ValueError) as exc:
            for i in members:
                results[i] = failed(exc)
            return
        by_model: dict[int, list[int]] = {}
        for pos, i in enumerate(members):
            by_model.setdefault(id(items[i].model), []).append(pos)
        for positions in by_model.values():
            model = items[members[positions[0]]].model
            assert model is not None
            t1 = time.perf_counter()
            try:
                wanted = np.array(
                    [items[members[p]].want_map or items[members[p]].want_heatmap
                     for p in positions]
                )  # fmt: skip
                # one model for the whole group (the usual case): its features as they are
                mine = feats if len(positions) == len(feats) else feats[positions]
                scores = score(
                    model, mine, cfg.score_reweight, wanted,
                    MapSpec(*model.meta.input_hw, cfg.anomaly_sigma),
                )  # fmt: skip
            except (EngineError, RuntimeError, ValueError) as exc:
                for pos in positions:
                    results[members[pos]] = failed(exc, model)
                continue
            knn_ms = (time.perf_counter() - t1) * 1e3 / len(positions)
            size, sigma = model.meta.input_hw, cfg.anomaly_sigma
            baseline = model.baseline_map(size, sigma)
            # the pixel maps of the frames that need one, drawn together
            drawn = [
                j
                for j, pos in enumerate(positions)
                if needs_map(
                    items[members[pos]],
                    model.threshold,
                    float(scores.image[j]),
                    cfg.score_reweight,
                )  # fmt: skip
            ]
            amaps = (
                dict(zip(drawn, anomaly_maps(scores.patches[drawn], size, sigma), strict=True))
                if drawn
                else {}
            )
            for j, pos in enumerate(positions):
                i = members[pos]
                res = decide(
                    items[i], model, float(scores.image[j]), scores.patches[j], baseline,
                    amaps.get(j), reweight=cfg.score_reweight, area_mm2_thr=cfg.area_mm2_thr,
                )  # fmt: skip
                res.timings_ms.update({"embed": embed_ms, "knn": knn_ms})
                results[i] = res
