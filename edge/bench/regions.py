"""``bdi bench regions``: what exact defect regions cost, and what they change.

For each MVTec-layout folder: fit a model with the default kNN path (IVF + positional
shortlist), embed the test set once, then score it in batches with the patches its regions
depend on searched exactly (the product's path) and, in the same run, with the index only
(as before regions were exact), each timed ``rounds`` times in alternating order, fastest
batch kept. Both are compared frame by frame with an exact copy of the model (the same
bank, brute-force search, no shortlist): image scores, verdicts, region boxes and areas.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import orjson
import torch

from configs.settings import load_settings
from edge.bench.coreset import default_sets
from edge.bench.engine import _progress, _read, load_mvtec
from engine.anomaly_map import anomaly_maps
from engine.decision import InferItem, decide
from engine.engine import Engine
from engine.knn import KnnIndex
from engine.patchcore import MapSpec, PatchCoreModel, Scores, score

MM_PER_PX = 0.05  # a scale, so that areas in mm² are compared too
BATCH = 16


def exact_copy(model: PatchCoreModel) -> PatchCoreModel:
    """The same model searched by brute force with no shortlist: every patch exact."""
    index = KnnIndex("exact").fit(model.index.bank())
    return PatchCoreModel(
        model.meta, index, model.calibration, model.version, model.baseline, None,
        model.held_out,
    )  # fmt: skip


def _regions(
    engine: Engine, model: PatchCoreModel, images: list[np.ndarray], scores: Scores
) -> list[tuple[str, list[tuple[object, ...]]]]:  # (verdict, regions) per frame
    """Each frame's verdict and regions (box, px, mm²), drawn as ``Engine.infer`` draws them."""
    size, sigma = model.meta.input_hw, engine.config.anomaly_sigma
    baseline = model.baseline_map(size, sigma)
    maps = anomaly_maps(scores.patches, size, sigma)
    out: list[tuple[str, list[tuple[object, ...]]]] = []
    for j, image in enumerate(images):
        res = decide(
            InferItem(model, image, MM_PER_PX), model, float(scores.image[j]),
            scores.patches[j], baseline, maps[j], reweight=False, area_mm2_thr=0.0,
        )  # fmt: skip
        out.append((res.verdict, [(r.bbox, r.area_px, r.area_mm2) for r in res.regions]))
    return out


def measure(root: Path, engine: Engine, max_train: int, rounds: int) -> dict[str, object]:
    train_paths, tests = load_mvtec(root, max_train)
    model = engine.fit([_read(p) for p in train_paths], mm_per_px=MM_PER_PX).model
    exact = exact_copy(model)
    images = [_read(path) for path, _, _ in tests]
    feats = engine.embed(images, engine.backbone_for(model), model.meta.input_hw)
    spec = MapSpec(*model.meta.input_hw, engine.config.anomaly_sigma)
    batches = [slice(s, s + BATCH) for s in range(0, len(images), BATCH)]
    best = {True: np.full(len(batches), np.inf), False: np.full(len(batches), np.inf)}
    found: dict[bool, list[Scores]] = {True: [], False: []}
    for r in range(max(1, rounds)):
        for exact_regions in (True, False) if r % 2 == 0 else (False, True):
            found[exact_regions] = []
            for i, part in enumerate(batches):
                f = feats[part]
                t0 = time.perf_counter()
                s = score(model, f, False, np.zeros(len(f), bool), spec, exact_regions)
                best[exact_regions][i] = min(best[exact_regions][i], time.perf_counter() - t0)
                found[exact_regions].append(s)
        _progress("score", r + 1, max(1, rounds))
    reference = []
    for part in batches:
        s = score(exact, feats[part], False, np.zeros(len(feats[part]), bool), spec)
        reference += _regions(engine, exact, images[part], s)
    result: dict[str, object] = {
        "dataset": root.name,
        "n_train": len(train_paths),
        "n_test": len(images),
        "knn": model.index.kind,
        "knn_shortlist": 0 if model.shortlist is None else int(model.shortlist.shape[1]),
        "memory_bank": model.index.size,
    }
    for exact_regions, name in ((True, "exact"), (False, "index")):
        mine = []
        image_equal = True
        for part, s in zip(batches, found[exact_regions], strict=True):
            mine += _regions(engine, model, images[part], s)
            ref = score(exact, feats[part], False, np.zeros(len(feats[part]), bool)).image
            image_equal &= bool(np.array_equal(s.image, ref))
        result[f"{name}_score_ms_per_frame"] = round(
            float(1e3 * best[exact_regions].sum() / len(images)), 3
        )
        result[f"{name}_frames_regions_differ"] = sum(
            a != b for a, b in zip(mine, reference, strict=True)
        )
        result[f"{name}_image_scores_identical"] = image_equal
    result["frames_with_regions"] = sum(bool(regions) for _, regions in reference)
    result["exact_vs_index_time"] = round(float(best[True].sum() / best[False].sum()), 3)
    return result


def run_regions_benchmark(args: argparse.Namespace) -> int:
    roots = [Path(d) for d in args.data] or default_sets()
    missing = [str(r) for r in roots if not r.is_dir()]
    if missing:
        print(f"error: no such data folder: {', '.join(missing)}", file=sys.stderr)
        return 2
    settings = load_settings(
        backbone="efficientnet_lite0", require_cuda=False, image_size=224, coreset_rate=0.1
    )
    engine = Engine.from_settings(settings)
    sets = []
    try:
        for root in roots:
            sets.append(measure(root, engine, args.max_train, args.rounds))
            if not args.json:
                print(orjson.dumps(sets[-1]).decode(), file=sys.stderr)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = {"device": engine.spec.describe(), "cpu_threads": torch.get_num_threads(),
           "rounds": args.rounds, "sets": sets}  # fmt: skip
    print(orjson.dumps(out).decode())
    return 0
