"""How far the backbone's precision moves image scores against one model's threshold.

    .venv/bin/python -m edge.bench.precision [--data DIR] [--images N] [--train N]
        [--size PX] [--device cpu|cuda]

Fits EfficientNet-Lite0 (packaged ImageNet weights) on ``DIR/train/good`` twice, with the
backbone in fp32 and in bf16, and scores ``DIR/test`` (OK and NG) against each model with
the backbone in both precisions. Prints one JSON object: for the fp32-fitted model, the
shift of bf16 scores from fp32 ones against its fp32-calibrated threshold; for the
bf16-fitted model, the shift of fp32 scores from its own bf16 ones (:func:`precision_shift`).
``DIR`` defaults to MPDD metal_plate under ``$BDI_TEST_DATA`` or ``../shared/data``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import orjson
import torch

from configs.settings import load_settings
from edge.bench.engine import load_mvtec
from engine.config import EngineConfig
from engine.device import DeviceSpec, dtype_name, select_device
from engine.engine import Engine
from engine.errors import EngineError
from engine.images import read_image
from engine.metrics import auroc
from engine.patchcore import PatchCoreModel, score

REPO = Path(__file__).resolve().parents[2]
METAL_PLATE = Path("mpdd_metal_plate") / "metal_plate"

# patch features of one image set per (device, compute dtype, input size): the backbone
# runs once per precision however many models are scored
Features = dict[tuple[DeviceSpec, int], np.ndarray]


def default_data() -> Path:
    return Path(os.environ.get("BDI_TEST_DATA", REPO.parent / "shared" / "data")) / METAL_PLATE


def _scores(
    engine: Engine, model: PatchCoreModel, images: Sequence[np.ndarray], cache: Features
) -> np.ndarray:
    """Image scores ``(N,)`` of ``images`` against ``model``, the backbone on the engine's
    device in the engine's dtype (deliberately not the model's: that is what is measured)."""
    size = model.meta.image_size
    key = (engine.spec, size)
    if key not in cache:
        bb = engine.backbone(model.meta.backbone, size)
        cache[key] = engine.embed(images, bb, size, dtype=engine.spec.dtype)
    feats = cache[key]
    return score(model, feats, engine.config.score_reweight, np.zeros(len(feats), bool)).image


def _num(x: float) -> float:
    return float(f"{x:.6g}")


def precision_shift(
    engine_ref: Engine,
    engine_other: Engine,
    model: PatchCoreModel,
    images: Sequence[np.ndarray],
    labels: Sequence[int],
    features: Features | None = None,
) -> dict[str, object]:
    """Image scores of ``images`` (RGB ``(H, W, 3)`` uint8; ``labels`` 1 = defective)
    against ``model`` with the backbone as ``engine_ref`` runs it (device and
    ``spec.dtype``) and as ``engine_other`` does, compared against the model's threshold.

    Returns ``n``, ``threshold``, ``reference`` / ``other`` (the two engines' device and
    dtype), ``abs_median`` / ``abs_p95`` / ``abs_max`` of ``|other - ref|``, the same
    divided by the threshold (``rel_*``), ``mean_shift`` (mean of ``other - ref``),
    ``flips`` (images whose verdict, ``score >= threshold``, differs) and ``auroc_ref`` /
    ``auroc_other``. ``features``: a cache of patch features of these same ``images``,
    filled and reused across calls (one backbone pass per precision).
    """
    threshold = model.threshold
    if threshold is None:
        raise ValueError("the model is not calibrated: no threshold to measure against")
    cache: Features = {} if features is None else features
    ref = _scores(engine_ref, model, images, cache)
    other = _scores(engine_other, model, images, cache)
    shift = other.astype(np.float64) - ref
    size = np.abs(shift)
    y = np.asarray(labels)
    stats = {"median": np.median(size), "p95": np.percentile(size, 95), "max": size.max()}
    out: dict[str, object] = {
        "reference": engine_ref.spec.describe(),
        "other": engine_other.spec.describe(),
        "n": len(images),
        "n_defective": int(y.sum()),
        "threshold": _num(threshold),
    }
    out |= {f"abs_{k}": _num(v) for k, v in stats.items()}
    out |= {f"rel_{k}": _num(v / threshold) for k, v in stats.items()}
    out |= {
        "mean_shift": _num(shift.mean()),
        "flips": int(((ref >= threshold) != (other >= threshold)).sum()),
        "auroc_ref": _num(auroc(y, ref)),
        "auroc_other": _num(auroc(y, other)),
    }
    return out


def _spread(n_all: int, n: int) -> np.ndarray:
    """``n`` indices spread evenly over ``range(n_all)`` (all of them when ``n`` is 0)."""
    if n <= 0 or n >= n_all:
        return np.arange(n_all)
    return np.linspace(0, n_all - 1, n).round().astype(int)


def run(args: argparse.Namespace) -> dict[str, object]:
    t0 = time.perf_counter()
    settings = load_settings(backbone="efficientnet_lite0", backbone_weights=args.weights,
                             image_size=args.size, require_cuda=False)  # fmt: skip
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    config = EngineConfig.from_settings(settings)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: CUDA is not available")
    # on CUDA, select_device also turns TF32 off: fp32 is then real fp32
    device = select_device(True).device if args.device == "cuda" else torch.device("cpu")
    fp32 = Engine(config, DeviceSpec(device, torch.float32))
    bf16 = Engine(config, DeviceSpec(device, torch.bfloat16))
    train_paths, tests = load_mvtec(Path(args.data))
    train = [read_image(str(train_paths[i])) for i in _spread(len(train_paths), args.train)]
    picked = [tests[i] for i in _spread(len(tests), args.images)]
    images = [read_image(str(path)) for path, _, _ in picked]
    labels = [label for _, label, _ in picked]
    out: dict[str, object] = {
        "dataset": Path(args.data).name,
        "backbone": "efficientnet_lite0",
        "weights": args.weights or "packaged",
        "size": args.size,
        "threads": torch.get_num_threads(),
        "n_train": len(train),
    }
    cache: Features = {}
    for name, engine, other in (("fp32_model", fp32, bf16), ("bf16_model", bf16, fp32)):
        t = time.perf_counter()
        model = engine.fit(train).model
        fit_s = time.perf_counter() - t
        shift = precision_shift(engine, other, model, images, labels, cache)
        out[name] = {"fitted_in": dtype_name(engine.spec.dtype), "fit_s": round(fit_s, 2), **shift}
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m edge.bench.precision",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data", default=str(default_data()), help="an MVTec-layout folder")
    parser.add_argument("--images", type=int, default=0, help="test images, spread (0: all)")
    parser.add_argument("--train", type=int, default=0, help="training images (0: all)")
    parser.add_argument("--size", type=int, default=224, help="input size in pixels")
    parser.add_argument("--weights", default=None, help="backbone weights file (default: packaged)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = parser.parse_args(argv)
    try:
        result = run(args)
    except (FileNotFoundError, ValueError, EngineError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(orjson.dumps(result).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
