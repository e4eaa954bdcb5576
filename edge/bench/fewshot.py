"""``bdi bench fewshot``: image (and pixel) AUROC of models fitted on 1, 2, 4, … OK images
drawn at random, per few-shot option set (:mod:`engine.fewshot`), beside the full-training
score of the same run.

The backbone runs once per image: the test images, the training pool and the rotated
views of the images that some draw picks are embedded once and cached; every model is then
fitted and scored from those features through the production code
(:func:`engine.training.fit_embedded`, :func:`engine.patchcore.score`).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import orjson

from edge.bench.engine import _progress, _read, engine_from_args, load_mvtec
from engine.anomaly_map import anomaly_maps
from engine.engine import Engine
from engine.fewshot import FewShot, rotated_views
from engine.images import common_mode
from engine.meta import ASPECT, SQUARE, ModelMeta
from engine.metrics import auroc
from engine.patchcore import score
from engine.training import fit_embedded, input_shape

# each piece alone, and together (AnomalyDINO's recipe)
OPTION_SETS: dict[str, FewShot] = {
    "plain": FewShot(),
    "norm": FewShot(feature_norm=True),
    "rot8": FewShot(rotations=8),
    "top1": FewShot(top_share=0.01),
    "rot8+top1": FewShot(rotations=8, top_share=0.01),
    "norm+rot8+top1": FewShot(feature_norm=True, rotations=8, top_share=0.01),
    # a per-position baseline from as few as 2 leave-one-out images
    "base2": FewShot(baseline_min=2),
    "rot8+top1+base2": FewShot(rotations=8, top_share=0.01, baseline_min=2),
}


def _noop(stage: str, done: int, total: int) -> None:
    pass


def run_fewshot_benchmark(args: argparse.Namespace) -> int:
    extra = {"threshold_method": args.threshold_method} if args.threshold_method else {}
    engine = engine_from_args(args, **extra)
    names = args.options or list(OPTION_SETS)
    result = fewshot_table(
        Path(args.data), engine, args.shots, args.draws, names, args.max_train, args.seed
    )
    print(orjson.dumps(result).decode())
    return 0


class _Features:
    """Backbone features of a data set's images, each image embedded once."""

    def __init__(
        self, engine: Engine, train: list[np.ndarray], size: int | tuple[int, int]
    ) -> None:
        self.engine, self.train, self.size = engine, train, size
        self.bb = engine.backbone(None, size)
        self.dtype = engine.spec.dtype
        self.pool = self.embed(train)
        self._views: dict[tuple[int, int], np.ndarray] = {}

    def embed(self, images: list[np.ndarray]) -> np.ndarray:
        return self.engine.embed(images, self.bb, self.size, _noop, self.dtype)

    def views(self, draw: np.ndarray, rotations: int) -> Callable[[np.ndarray], np.ndarray]:
        """``views(idx)`` of :func:`fit_embedded` for the pool images ``draw``."""

        def get(picked: np.ndarray) -> np.ndarray:
            out = []
            for i in draw[picked].tolist():
                if (i, rotations) not in self._views:
                    rotated = rotated_views([self.train[i]], rotations)
                    self._views[(i, rotations)] = self.embed(rotated)
                out.append(self._views[(i, rotations)])
            return np.concatenate(out)

        return get


def fewshot_table(
    root: Path,
    engine: Engine,
    shots: list[int],
    draws: int,
    names: list[str],
    max_train: int = 0,
    seed: int = 0,
) -> dict:
    """Per option set and shot count: image and pixel AUROC over ``draws`` random draws
    (mean, std, each draw's); ``full``: the same on the whole training set (its first
    ``max_train`` images when given)."""
    t0 = time.perf_counter()
    train_paths, tests = load_mvtec(root, max_train)
    train = [_read(p) for p in train_paths]
    test_images = [_read(p) for p, _, _ in tests]
    if max(shots) > len(train):
        raise ValueError(f"{max(shots)} shots but only {len(train)} training images")
    print(f"{len(train)} train / {len(tests)} test images", file=sys.stderr)
    shape = input_shape(engine, train)  # BDI_INPUT_MODE, as a fit of the pool would take
    hw = shape or (engine.config.image_size, engine.config.image_size)
    feats = _Features(engine, train, hw)
    test_feats = feats.embed(test_images)
    labels = np.array([label for _, label, _ in tests])
    masks = _masks(tests, hw)
    mode = common_mode(train)
    rng = np.random.default_rng(seed)
    picks = {n: [np.sort(rng.choice(len(train), n, replace=False)) for _ in range(draws)]
             for n in shots}  # fmt: skip
    everything = np.arange(len(train))

    def evaluate(opts: FewShot, draw: np.ndarray) -> tuple[float, float]:
        meta = ModelMeta(
            backbone=feats.bb.info.name, backbone_weights=engine.weights_fingerprint(feats.bb),
            image_size=engine.config.image_size, grid=test_feats.shape[1:3],
            feature_dim=test_feats.shape[3], mm_per_px=None,
            coreset_rate=engine.config.coreset_rate, n_train_images=0, n_patches=0,
            memory_bank=0, input_mode=SQUARE if shape is None else ASPECT, input_shape=shape,
            channel_mode=mode, **opts._asdict(),
        )  # fmt: skip
        views = feats.views(draw, opts.rotations)
        model = fit_embedded(engine, feats.pool[draw], views, meta, None, _noop).model
        scores = score(model, test_feats, engine.config.score_reweight)
        image = auroc(labels, scores.image)
        if masks is None:
            return image, float("nan")
        keep, truth = masks
        maps = anomaly_maps(scores.patches[keep], hw, engine.config.anomaly_sigma)
        return image, auroc(truth.ravel(), maps.ravel())

    table: dict[str, dict] = {}
    for name in names:
        opts = OPTION_SETS[name]
        rows: dict[str, dict] = {}
        for n in shots:
            got = np.array([evaluate(opts, d) for d in picks[n]])
            rows[str(n)] = _summary(got)
            _progress(name, shots.index(n) + 1, len(shots))
        # rotating a whole training set: not a few-shot option; and a full training set has
        # 16 leave-one-out images and more, so baseline_min changes nothing there
        if opts.rotations == 1 and opts.baseline_min == FewShot().baseline_min:
            rows["full"] = _summary(np.array([evaluate(opts, everything)]))
        table[name] = rows
    return {
        "dataset": root.name, "backbone": engine.config.backbone,
        "random_weights": feats.bb.info.random_weights, "size": engine.config.image_size,
        "input_mode": SQUARE if shape is None else ASPECT, "input_shape": list(hw),
        "threshold_method": engine.config.threshold_method,
        "coreset_rate": engine.config.coreset_rate, "n_train": len(train),
        "n_test": len(tests), "draws": draws, "seed": seed, "shots": shots,
        "pixel_auroc_at": f"{hw[0]}x{hw[1]}", "table": table,
        "seconds": round(time.perf_counter() - t0, 1),
    }  # fmt: skip


def _summary(got: np.ndarray) -> dict:
    """``got (D, 2)``: image and pixel AUROC of D draws."""
    return {
        "image_auroc": round(float(got[:, 0].mean()), 4),
        "image_std": round(float(got[:, 0].std()), 4),
        "pixel_auroc": round(float(got[:, 1].mean()), 4),
        "pixel_std": round(float(got[:, 1].std()), 4),
        "image_draws": [round(float(v), 4) for v in got[:, 0]],
    }


def _masks(
    tests: list[tuple[Path, int, Path | None]], hw: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray] | None:
    """Which test images have a mask ``(N,) bool`` (good images: all normal; defective ones
    without a mask are left out), and those masks at the maps' size ``hw`` ``(K, H, W)``
    bool. None when no defective image has one."""
    if not any(mask is not None for _, _, mask in tests):
        return None
    keep, out = [], []
    for _, label, path in tests:
        keep.append(path is not None or not label)
        if path is None:
            if not label:
                out.append(np.zeros(hw, bool))
            continue
        raw = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if raw is None:
            raise FileNotFoundError(f"unreadable mask {path}")
        out.append(cv2.resize(raw, (hw[1], hw[0]), interpolation=cv2.INTER_NEAREST) > 127)
    return np.array(keep), np.stack(out)
