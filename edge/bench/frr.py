"""``bdi bench frr``: the false-reject rate of the conformal OK-only threshold, measured on
OK images that neither the memory bank nor the threshold saw, over many random splits.

Every OK image of the data set (``train/good`` and ``test/good``) goes into one pool; the
defect images (``test/<defect>``) are the NG set. Each split draws, from the pool, a
training part (the memory bank), a calibration part (the threshold) and a test part
(unseen OK frames), of the sizes the product would use (:func:`split_sizes`). On each split:

- the bank is fitted on the training part exactly as :meth:`Engine.fit` fits it
  (``engine.training.fit_bank``: coreset, index, per-position baseline, shortlist);
- the calibration part is scored against it and the threshold is the conformal one
  (``engine.calibration.from_conformal``, target ``alpha``);
- the false-reject rate is the share of the test part scoring at or above it, and the NG
  miss rate the share of the NG images scoring below it.

Each image is embedded once. A bank fit is the costly step (a greedy coreset over every
training patch), so the ``n_splits`` splits are ``draws`` distinct training parts, each
with ``n_splits / draws`` random calibration/test splits of the rest of the pool; the
images of the rest are scored once per bank, and a split is then only a permutation.

The product then folds the calibration images into the bank (``engine.training``); that
continues the greedy coreset (tens of seconds per split on 2 CPU cores), so it is done on
``folded`` of the splits only, with the engine's own code: there the test and NG images
are scored again against the folded bank, as production scores them. Rows only added, no
score can rise: the rate measured on every split before the fold is an upper bound of the
product's (and the NG miss rate a lower bound); ``folded`` reports both on those splits,
and the largest score change the fold made (never above 0).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import orjson
import torch

from edge.bench.engine import _progress, _read, engine_from_args, load_mvtec
from engine import calibration as calib
from engine import conformal, training
from engine.device import dtype_name
from engine.engine import Engine
from engine.patchcore import ModelMeta, PatchCoreModel, score

TEST_SHARE = 0.25  # of the pool, the unseen OK frames; less where alpha needs the images
TEST_MIN_SHARE = 0.10


class SplitSizes(NamedTuple):
    train: int
    calibration: int
    test: int


def split_sizes(n: int, alpha: float, calibration_share: float) -> SplitSizes:
    """Sizes of the three parts of a pool of ``n`` OK images.

    The test part is a quarter of the pool, down to a tenth where the calibration part
    needs the images; the rest is what ``Engine.fit`` would be given, and it holds out for
    calibration what it would (:func:`engine.training.held_out_count`: what ``alpha``
    needs, or the calibration share, at most half). So calibration reaches what ``alpha``
    needs whenever the pool has twice that plus a tenth."""
    if n < 4:
        raise ValueError(f"{n} OK images: the benchmark needs at least 4 (train, calibrate, test)")
    need = conformal.needed(alpha)
    n_test = max(math.ceil(TEST_MIN_SHARE * n), min(math.ceil(TEST_SHARE * n), n - 2 * need))
    n_cal = training.held_out_count(n - n_test, alpha, calibration_share)
    return SplitSizes(n - n_test - n_cal, n_cal, n_test)


def run_frr_benchmark(args: argparse.Namespace) -> int:
    if not 0.0 < args.alpha < 1.0:
        raise ValueError(f"--alpha must be in (0, 1), got {args.alpha}")
    if args.draws > args.splits:
        raise ValueError(f"--draws ({args.draws}) must not exceed --splits ({args.splits})")
    result = measure(
        Path(args.data), engine_from_args(args), args.alpha, args.splits, args.draws,
        args.folded, args.seed,
    )  # fmt: skip
    print(orjson.dumps(result, option=0 if args.json else orjson.OPT_INDENT_2).decode())
    return 0


def _noop(stage: str, done: int, total: int) -> None:
    return None


def load_pool(root: Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Every OK image of ``root`` (``train/good`` then ``test/good``) and its NG images."""
    train, tests = load_mvtec(root)
    ok = [_read(p) for p in train] + [_read(p) for p, label, _ in tests if not label]
    ng = [_read(p) for p, label, _ in tests if label]
    return ok, ng


def measure(
    root: Path,
    engine: Engine,
    alpha: float,
    n_splits: int = 200,
    draws: int = 10,
    folded: int = 5,
    seed: int = 0,
) -> dict:
    """The false-reject rate of the conformal threshold at ``alpha`` over ``n_splits``
    random splits of ``root``'s OK images (see the module docstring); the numbers as a dict."""
    t_start = time.perf_counter()
    cfg = engine.config
    ok_images, ng_images = load_pool(root)
    sizes = split_sizes(len(ok_images), alpha, cfg.calibration_share)
    print(f"{len(ok_images)} OK ({sizes}) / {len(ng_images)} NG images on "
          f"{engine.spec.describe()}", file=sys.stderr)  # fmt: skip
    bb = engine.backbone()
    dtype = engine.spec.dtype
    t0 = time.perf_counter()
    ok = engine.embed(ok_images, bb, cfg.image_size, _progress, dtype)
    ng = engine.embed(ng_images, bb, cfg.image_size, _progress, dtype) if ng_images else None
    embed_s = time.perf_counter() - t0
    meta = ModelMeta(
        backbone=bb.info.name, backbone_weights=engine.weights_fingerprint(bb),
        image_size=cfg.image_size, grid=ok.shape[1:3], feature_dim=ok.shape[3], mm_per_px=None,
        coreset_rate=cfg.coreset_rate, n_train_images=0, n_patches=0, memory_bank=0,
        compute_dtype=dtype_name(dtype),
    )  # fmt: skip
    rng = np.random.default_rng(seed)
    per_draw = [n_splits // draws + (r < n_splits % draws) for r in range(draws)]
    to_fold = [folded // draws + (r < folded % draws) for r in range(draws)]
    splits: list[_Split] = []
    fold_results: list[_Folded] = []
    fit_s: list[float] = []
    bank_rows: list[int] = []
    for r in range(draws):
        order = rng.permutation(len(ok))
        train, rest = order[: sizes.train], order[sizes.train :]
        t1 = time.perf_counter()
        model, _, _ = training.fit_bank(engine, ok[train], meta, _noop)
        fit_s.append(time.perf_counter() - t1)
        bank_rows.append(model.index.size)
        rest_scores = _scores(model, ok[rest], cfg.score_reweight)
        ng_scores = np.empty(0) if ng is None else _scores(model, ng, cfg.score_reweight)
        for s in range(per_draw[r]):
            pick = rng.permutation(len(rest))
            cal, test = pick[: sizes.calibration], pick[sizes.calibration :]
            split = _Split.of(rest_scores[cal], rest_scores[test], ng_scores, alpha)
            splits.append(split)
            if s < to_fold[r]:
                test_feats = (ok[rest[test]], rest_scores[test])
                fold_results.append(
                    _fold(engine, model, ok[rest[cal]], test_feats, (ng, ng_scores), split)
                )
        print(f"[draw {r + 1}/{draws}] bank {model.index.size} rows in {fit_s[-1]:.1f} s, "
              f"frr so far {np.mean([s.frr for s in splits]):.4f}", file=sys.stderr)  # fmt: skip
    return _report(
        root, engine, alpha, sizes, splits, fold_results, len(ng_images),
        {"draws": draws, "per_draw": per_draw, "seed": seed, "embed_s": embed_s,
         "fit_s": fit_s, "bank_rows": bank_rows, "seconds": time.perf_counter() - t_start},
    )  # fmt: skip


def _scores(model: PatchCoreModel, feats: np.ndarray, reweight: bool) -> np.ndarray:
    """Image scores of ``feats (N, h, w, C)``, as production scores a frame."""
    return score(model, feats, reweight, np.zeros(len(feats), dtype=bool)).image


@dataclass(frozen=True)
class _Split:
    threshold: float
    record: conformal.ConformalRecord
    frr: float  # share of the test OK images at or above the threshold
    ng_miss: float  # share of the NG images below it (NaN without NG images)

    @classmethod
    def of(cls, cal: np.ndarray, test: np.ndarray, ng: np.ndarray, alpha: float) -> _Split:
        record = conformal.record(cal, alpha)  # the threshold calib.from_conformal applies
        t = record.threshold
        return cls(t, record, float((test >= t).mean()), conformal.miss_rate(t, ng))


@dataclass(frozen=True)
class _Folded:
    frr: float  # after the fold
    frr_before: float
    ng_miss: float
    ng_miss_before: float
    max_change: float  # the largest rise of a test or NG image score by the fold (<= 0)
    seconds: float


Scored = tuple[np.ndarray | None, np.ndarray]  # features (N, h, w, C), their scores before


def _fold(
    engine: Engine, model: PatchCoreModel, cal: np.ndarray, test: Scored, ng: Scored,
    split: _Split,
) -> _Folded:  # fmt: skip
    """The product's model of this split: the calibration images (features ``cal``) folded
    into the bank as ``Engine.fit`` folds them (``engine.training``), and the test and NG
    images scored again against it."""
    cfg = engine.config
    reweight = cfg.score_reweight
    record = split.record
    calibrated = replace(
        model, calibration=calib.from_conformal(record.scores, record.alpha, cfg.score_percentile)
    )
    t0 = time.perf_counter()
    product = training._extend(engine, calibrated, cal, held_out=True, progress=_noop)
    seconds = time.perf_counter() - t0
    (test_feats, before), (ng_feats, ng_before) = test, ng
    assert test_feats is not None
    after = _scores(product, test_feats, reweight)
    ng_after = ng_before if ng_feats is None else _scores(product, ng_feats, reweight)
    t = split.threshold
    change = np.concatenate([after - before, ng_after - ng_before])
    return _Folded(
        float((after >= t).mean()), float((before >= t).mean()),
        conformal.miss_rate(t, ng_after), conformal.miss_rate(t, ng_before),
        float(change.max()), seconds,
    )  # fmt: skip


def _mean(values: list[float]) -> float | None:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    return round(float(v.mean()), 5) if v.size else None


def _report(
    root: Path,
    engine: Engine,
    alpha: float,
    sizes: SplitSizes,
    splits: list[_Split],
    folds: list[_Folded],
    n_ng: int,
    run: dict,
) -> dict:
    cfg = engine.config
    frr = np.array([s.frr for s in splits])
    first = splits[0].record
    per_draw = run["per_draw"]
    result = {
        "dataset": root.name,
        "alpha": alpha,
        "n_splits": len(splits),
        "training_draws": run["draws"],
        "splits_per_draw": per_draw[0] if len(set(per_draw)) == 1 else per_draw,
        "splits": "training draws x calibration/test splits of the rest of the pool",
        "n_pool_ok": sizes.train + sizes.calibration + sizes.test,
        "n_train": sizes.train,
        "n_calibration": sizes.calibration,
        "n_test_ok": sizes.test,
        "n_ng": n_ng,
        "guaranteed": first.guaranteed,
        "needed": first.needed,
        "k": first.k,
        "bound": round(first.bound, 5),
        "frr_mean": round(float(frr.mean()), 5),
        "frr_p95": round(float(np.percentile(frr, 95)), 5),
        "frr_max": round(float(frr.max()), 5),
        "frr_std": round(float(frr.std()), 5),
        "ng_miss_rate": _mean([s.ng_miss for s in splits]),
        "threshold_mean": round(float(np.mean([s.threshold for s in splits])), 5),
        "measured_against": "the bank the threshold was chosen with (before the fold)",
        "folded": {
            "n_splits": len(folds),
            "frr_mean": _mean([f.frr for f in folds]),
            "frr_mean_before": _mean([f.frr_before for f in folds]),
            "ng_miss_rate": _mean([f.ng_miss for f in folds]),
            "ng_miss_rate_before": _mean([f.ng_miss_before for f in folds]),
            "max_score_change": round(max(f.max_change for f in folds), 6) if folds else None,
            "fold_s_mean": _mean([f.seconds for f in folds]),
        },
        "backbone": cfg.backbone,
        "size": cfg.image_size,
        "coreset_rate": cfg.coreset_rate,
        "knn": cfg.knn_mode,
        "knn_shortlist": cfg.knn_shortlist,
        "bank_rows_mean": round(float(np.mean(run["bank_rows"])), 1),
        "device": engine.spec.describe(),
        "threads": torch.get_num_threads(),
        "seed": run["seed"],
        "embed_s": round(run["embed_s"], 2),
        "fit_s_mean": round(float(np.mean(run["fit_s"])), 2),
        "seconds": round(run["seconds"], 1),
    }
    return result
