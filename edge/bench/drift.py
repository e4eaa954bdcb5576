"""``bdi bench drift``: false alarms on a stable OK stream, and frames until the alarm on a
shifted one, for the consumers' drift detectors (``consumers.drift_detectors``).

Fits EfficientNet-Lite0 PatchCore (the dev profile, on the CPU unless CUDA is there) on
40 % of ``DIR/train/good``, takes its conformal calibration from the next 30 % (held out:
the bench states ``n_calibration`` itself), and streams frames the model never saw (the
other 30 % of ``train/good`` and ``test/good``) through :meth:`engine.Engine.infer`. Each
frame is a base image with a mild random jitter (a 1-2 px shift; sensor noise with
``--noise``), so that frames are distinct. Scoring 10,000 frames on a CPU takes too long,
so ``--distinct`` jittered frames are scored once each and the stable stream of
``--stable`` frames samples their p-values with replacement; each shift (brightness
-20 %, Gaussian blur, a stripe texture) is scored on ``--shift-distinct`` frames likewise.
A shift run is ``--prefix`` stable frames, then shifted ones until the alarm (at most
``--max-shifted``), then stable ones until the drift ends; median over ``--repeats`` runs.
Both detectors see the same streams.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from statistics import median
from typing import Any

import cv2
import numpy as np
import orjson

from consumers.drift_detectors import ENDED, STARTED, DriftDetector, make_detector

DETECTORS = ("adwin", "martingale")
ALPHA = 0.01  # the calibration's target false-reject rate (p-values do not depend on it)


def jitter(image: np.ndarray, rng: np.random.Generator, noise: float = 0.0) -> np.ndarray:
    """A 1-2 px shift in x and y (edges replicated), and Gaussian sensor noise of ``noise``
    grey levels when above 0 (off by default: on a clean background, such as the tire's,
    even sigma 2 scores every frame above every calibration image, itself a shift)."""
    dx, dy = (int(rng.choice([-2, -1, 1, 2])) for _ in range(2))
    h, w = image.shape[:2]
    m = np.array([[1, 0, dx], [0, 1, dy]], dtype=np.float32)
    moved = cv2.warpAffine(image, m, (w, h), borderMode=cv2.BORDER_REPLICATE)
    if noise <= 0:
        return moved
    noisy = moved.astype(np.float32) + rng.normal(0.0, noise, moved.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def _brightness(image: np.ndarray) -> np.ndarray:
    return np.clip(image.astype(np.float32) * 0.8, 0, 255).astype(np.uint8)


def _blur(image: np.ndarray) -> np.ndarray:
    return cv2.GaussianBlur(image, (0, 0), sigmaX=2.0)


def _texture(image: np.ndarray) -> np.ndarray:
    """Diagonal stripes, 8 px period, +-20 grey levels: a surface finish never trained on."""
    h, w = image.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    stripes = 20.0 * np.sin(2 * np.pi * (xx + yy) / 8.0)
    return np.clip(image.astype(np.float32) + stripes[..., None], 0, 255).astype(np.uint8)


SHIFTS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "brightness_-20%": _brightness,
    "gaussian_blur_sigma2": _blur,
    "stripe_texture": _texture,
}


def score_p_values(
    engine: Any, model: Any, bases: Sequence[np.ndarray], n: int, seed: int,
    shift: Callable[[np.ndarray], np.ndarray] | None = None, batch: int = 16,
    noise: float = 0.0,
) -> np.ndarray:  # fmt: skip
    """p-values of ``n`` jittered (and ``shift``-ed) frames drawn from ``bases``, each
    scored once by the engine as the consumer scores it."""
    from engine import InferItem

    rng = np.random.default_rng(seed)
    out: list[float] = []
    for start in range(0, n, batch):
        frames = []
        for _ in range(min(batch, n - start)):
            frame = jitter(bases[int(rng.integers(len(bases)))], rng, noise)
            frames.append(shift(frame) if shift is not None else frame)
        for inference in engine.infer([InferItem(model, f) for f in frames]):
            if inference.p_value is None:
                raise ValueError(f"frame not scored: {inference.verdict} {inference.error}")
            out.append(inference.p_value)
    return np.asarray(out)


def false_alarms(name: str, pool: np.ndarray, frames: int, seed: int) -> int:
    detector = make_detector(name)
    stream = np.random.default_rng(seed).choice(pool, size=frames)
    return sum(detector.update(float(p)) == STARTED for p in stream)


def _feed_until(detector: DriftDetector, stream: np.ndarray, change: str) -> int | None:
    for i, p in enumerate(stream):
        if detector.update(float(p)) == change:
            return i + 1
    return None


def shift_run(
    name: str, stable: np.ndarray, shifted: np.ndarray, cfg: argparse.Namespace, seed: int
) -> tuple[int | None, int | None, int]:
    """(frames until the alarm, frames until its end once the line is normal again, false
    alarms in the stable prefix)."""
    rng = np.random.default_rng(seed)
    detector = make_detector(name)
    early = sum(detector.update(float(p)) == STARTED for p in rng.choice(stable, cfg.prefix))
    if detector.in_drift:  # an alarm already raised in the prefix: not this shift's
        return None, None, early
    to_alarm = _feed_until(detector, rng.choice(shifted, cfg.max_shifted), STARTED)
    if to_alarm is None:
        return None, None, early
    return to_alarm, _feed_until(detector, rng.choice(stable, cfg.max_shifted * 4), ENDED), early


def _median(values: Sequence[int | None]) -> float | None:
    found = [v for v in values if v is not None]
    return float(median(found)) if found else None


def evaluate(
    name: str, stable: np.ndarray, shifted: dict[str, np.ndarray], cfg: argparse.Namespace
) -> dict[str, Any]:
    alarms = false_alarms(name, stable, cfg.stable, cfg.seed)
    shifts = {}
    for k, (shift, pool) in enumerate(shifted.items()):
        runs = [shift_run(name, stable, pool, cfg, cfg.seed + 100 * k + r)
                for r in range(cfg.repeats)]  # fmt: skip
        shifts[shift] = {
            "detected": all(r[0] is not None for r in runs),
            "detected_runs": sum(r[0] is not None for r in runs),
            "frames_to_alarm": _median([r[0] for r in runs]),
            "frames_to_end": _median([r[1] for r in runs]),
            "p_value_mean": round(float(pool.mean()), 4),
        }
    return {
        "false_alarms": alarms,
        "false_alarm_rate": round(1000.0 * alarms / cfg.stable, 4),  # per 1,000 frames
        "shifts": shifts,
    }


def run(cfg: argparse.Namespace) -> dict[str, Any]:
    import torch

    from configs.settings import load_settings
    from edge.bench.engine import load_mvtec
    from engine import Engine
    from engine.calibration import from_conformal
    from engine.images import read_image

    t0 = time.perf_counter()
    settings = load_settings(backbone="efficientnet_lite0", image_size=cfg.size, require_cuda=False)
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    engine = Engine.from_settings(settings)
    train_paths, tests = load_mvtec(Path(cfg.data))
    order = np.random.default_rng(cfg.seed).permutation(len(train_paths))
    n_fit, n_cal = int(0.4 * len(order)), int(0.3 * len(order))
    if n_fit < 2 or n_cal < 2:
        raise ValueError(f"{cfg.data}: too few train/good images ({len(order)}) to split")
    read = [read_image(str(train_paths[i])) for i in order]
    stream_bases = read[n_fit + n_cal :] + [read_image(str(p)) for p, y, _ in tests if y == 0]
    model = engine.fit(read[:n_fit]).model
    cal_scores = engine.image_scores(model, read[n_fit : n_fit + n_cal])
    model.calibration = from_conformal(cal_scores, ALPHA, settings.score_percentile)
    t_fit = time.perf_counter()
    stable = score_p_values(engine, model, stream_bases, cfg.distinct, cfg.seed, noise=cfg.noise)
    shifted = {}
    for k, (name, shift) in enumerate(SHIFTS.items()):
        shifted[name] = score_p_values(engine, model, stream_bases, cfg.shift_distinct,
                                       cfg.seed + 1 + k, shift, noise=cfg.noise)  # fmt: skip
    t_score = time.perf_counter()
    results = {name: evaluate(name, stable, shifted, cfg) for name in DETECTORS}
    chosen = settings.drift if settings.drift in DETECTORS else "adwin"
    return {
        "dataset": Path(cfg.data).name,
        "detector": chosen,
        "stable_frames": cfg.stable,
        **results[chosen],
        "candidates": results,
        "n_fit": n_fit,
        "n_calibration": n_cal,
        "stream_bases": len(stream_bases),
        "jitter": f"1-2 px shift, noise sigma {cfg.noise:g}",
        "distinct_stable_frames": cfg.distinct,
        "distinct_shifted_frames": cfg.shift_distinct,
        "stable_p_value_mean": round(float(stable.mean()), 4),
        "repeats": cfg.repeats,
        "prefix": cfg.prefix,
        "device": engine.spec.describe(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch threads "
        f"{torch.get_num_threads()}",
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "fit_s": round(t_fit - t0, 1),
        "score_s": round(t_score - t_fit, 1),
        "frames_per_s": round((cfg.distinct + 3 * cfg.shift_distinct) / (t_score - t_fit), 1),
    }


def run_drift_benchmark(args: argparse.Namespace) -> int:
    result = run(args)
    print(orjson.dumps(result, option=0 if args.json else orjson.OPT_INDENT_2).decode())
    return 0
