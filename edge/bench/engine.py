"""``bdi bench engine``: train on an MVTec-layout folder, score its test set, print JSON."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import orjson
import torch

from configs.settings import load_settings
from engine.engine import Engine, InferItem
from engine.errors import EngineError
from engine.images import read_image, to_tensor
from engine.metrics import auroc

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _read(path: Path) -> np.ndarray:
    """An image of the data set; a file that cannot be read is named in the error."""
    try:
        return read_image(str(path))
    except (OSError, EngineError) as exc:
        raise ValueError(f"{path}: {exc}") from exc


def _progress(stage: str, done: int, total: int) -> None:
    print(f"\r[{stage}] {done}/{total}", end="\n" if done >= total else "", file=sys.stderr)


def load_mvtec(
    root: Path, max_train: int = 0
) -> tuple[list[Path], list[tuple[Path, int, Path | None]]]:
    """Training paths, and test ``(path, label, mask path or None)``."""
    train_dir = root / "train" / "good"
    if not train_dir.is_dir():
        raise FileNotFoundError(f"{train_dir} not found: --data must be an MVTec-layout folder")
    test_dir = root / "test"
    if not test_dir.is_dir():
        raise FileNotFoundError(f"{test_dir} not found: --data must be an MVTec-layout folder")
    train = _images(train_dir)
    if not train:
        raise ValueError(f"no PNG/JPEG images in {train_dir}")
    if max_train:
        train = train[:max_train]
    tests = []
    for sub in sorted(p for p in test_dir.iterdir() if p.is_dir()):
        for path in _images(sub):
            mask = root / "ground_truth" / sub.name / f"{path.stem}_mask.png"
            tests.append((path, int(sub.name != "good"), mask if mask.is_file() else None))
    if not tests:
        raise ValueError(f"no PNG/JPEG images in the folders of {test_dir} (good, <defect>...)")
    return train, tests


def engine_from_args(args: argparse.Namespace, **extra: object) -> Engine:
    """The engine of a benchmark's ``--backbone/--weights/--size/--coreset-rate/--knn/
    --shortlist`` options (and ``extra`` settings), on the CPU when no GPU is there."""
    overrides: dict[str, object] = {
        "backbone": args.backbone, "image_size": args.size,
        "coreset_rate": args.coreset_rate, "require_cuda": False, **extra,
    }  # fmt: skip
    if args.weights:
        overrides["backbone_weights"] = args.weights
    if args.knn:
        overrides["knn_mode"] = args.knn
    if args.shortlist is not None:
        overrides["knn_shortlist"] = args.shortlist
    return Engine.from_settings(load_settings(**overrides))


def run_engine_benchmark(args: argparse.Namespace) -> int:
    extra: dict[str, object] = {"engine_batch_size": args.chunk}
    if args.input_mode:
        extra["input_mode"] = args.input_mode
    engine = engine_from_args(args, **extra)
    if args.aspect_sizing:
        engine.aspect_sizing = args.aspect_sizing
    result = evaluate(Path(args.data), engine, args.max_train, args.batch, args.rounds)
    print(orjson.dumps(result).decode())
    return 0


def evaluate(
    root: Path, engine: Engine, max_train: int = 0, batch_size: int = 32, rounds: int = 3
) -> dict:
    """Fit on ``root/train/good``, score ``root/test``; the numbers as a dict."""
    config = engine.config
    train_paths, tests = load_mvtec(root, max_train)
    train = [_read(p) for p in train_paths]
    test_images = [_read(p) for p, _, _ in tests]
    print(f"{len(train)} train / {len(test_images)} test images on {engine.spec.describe()}",
          file=sys.stderr)  # fmt: skip

    fit = engine.fit(train, progress=_progress)
    model = fit.model

    # backbone alone on the same images and batches, against the production path (verdict,
    # score, regions, as the front doors call it). Each batch runs through both, one after
    # the other, ``rounds`` times, and each keeps its fastest time per batch: a shared VM's
    # speed drifts by tens of percent within seconds, which whole passes fold into the ratio.
    # Both run the backbone in the engine's forwards of ``engine.batch_size`` images.
    bb = engine.backbone_for(model)
    chunk = engine.batch_size
    batches = [test_images[i : i + batch_size] for i in range(0, len(test_images), batch_size)]

    def backbone_only(batch: list[np.ndarray]) -> None:
        for start in range(0, len(batch), chunk):
            bb(to_tensor(batch[start : start + chunk], model.meta.input_hw))

    backbone_only(batches[0])  # warm-up
    engine.infer([InferItem(model, img) for img in batches[0]])  # warm-up
    backbone_t = np.full(len(batches), np.inf)
    infer_t = np.full(len(batches), np.inf)
    scores: list[float] = []
    for _ in range(max(1, rounds)):
        scores = []
        for i, batch in enumerate(batches):
            t0 = time.perf_counter()
            backbone_only(batch)
            t1 = time.perf_counter()
            results = engine.infer([InferItem(model, img) for img in batch])
            t2 = time.perf_counter()
            backbone_t[i] = min(backbone_t[i], t1 - t0)
            infer_t[i] = min(infer_t[i], t2 - t1)
            scores += [float("nan") if r.score is None else r.score for r in results]
    backbone_s, infer_s = float(backbone_t.sum()), float(infer_t.sum())
    _progress("score", len(tests), len(tests))
    # untimed: full-resolution anomaly maps for the pixel metric
    maps: list[np.ndarray] = []
    for batch in batches:
        for res in engine.infer([InferItem(model, img, want_map=True) for img in batch]):
            assert res.anomaly_map is not None
            maps.append(res.anomaly_map)

    labels = np.array([label for _, label, _ in tests])
    result = {
        "dataset": root.name,
        "backbone": config.backbone,
        "random_weights": model.meta.backbone_weights == "random",
        "size": config.image_size,
        "input_mode": model.meta.input_mode,
        "input_shape": list(model.meta.input_hw),
        "tiles_per_image": 1,  # one backbone pass per frame, at input_shape
        "coreset_rate": config.coreset_rate,
        "knn": model.index.kind,
        "knn_shortlist": 0 if model.shortlist is None else int(model.shortlist.shape[1]),
        "device": engine.spec.describe(),
        "threads": torch.get_num_threads(),
        "batch": batch_size,
        "backbone_batch": chunk,
        "n_train": fit.n_images,
        "n_test": len(tests),
        "n_patches": fit.n_patches,
        "memory_bank": model.meta.memory_bank,
        "fit_s": round(fit.timings_s["fit_s"], 3),
        "coreset_s": round(fit.timings_s["coreset_s"], 3),
        "infer_img_per_s": round(len(tests) / infer_s, 2),
        "backbone_img_per_s": round(len(tests) / backbone_s, 2),
        "engine_vs_backbone": round(backbone_s / infer_s, 3),
        "rounds": max(1, rounds),
        "image_auroc": round(auroc(labels, np.array(scores)), 4),
        # the model's few-shot options (engine.fewshot; defaults by BDI_FEWSHOT_BELOW)
        "feature_norm": model.meta.feature_norm,
        "rotations": model.meta.rotations,
        "top_share": model.meta.top_share,
    }
    if any(mask is not None for _, _, mask in tests):
        result["pixel_auroc"] = round(_pixel_auroc(tests, maps), 4)
    return result


def _pixel_auroc(tests: list[tuple[Path, int, Path | None]], maps: list[np.ndarray]) -> float:
    """Pixel AUROC at the original resolution: ``maps`` are the engine's, at each test
    image's own size, against its mask as it is; good images count as all-normal masks."""
    import cv2

    ys, ss = [], []
    for (_, label, mask_path), amap in zip(tests, maps, strict=True):
        if label and mask_path is None:
            continue  # defective without a mask: cannot be scored per pixel
        if mask_path is None:
            mask = np.zeros(amap.shape, dtype=bool)
        else:
            raw = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE)
            if raw is None:
                raise FileNotFoundError(f"unreadable mask {mask_path}")
            if raw.shape != amap.shape:
                raise ValueError(
                    f"mask {mask_path} is {raw.shape[1]}x{raw.shape[0]} px, its image "
                    f"{amap.shape[1]}x{amap.shape[0]}: a mask has its image's size"
                )
            mask = raw > 127
        ys.append(mask.ravel())
        ss.append(amap.ravel())
    return auroc(np.concatenate(ys), np.concatenate(ss))
