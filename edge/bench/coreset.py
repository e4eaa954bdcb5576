"""``bdi bench coreset``: the CPU coreset selection on real training patches, against the
pruned greedy (the former CPU path) in the same run and exact greedy on a sample.

Per data set: embed ``DIR/train/good`` as training does (backbone, input size, projection
as configured), select ``k = rate x patches`` rows by lazy greedy
(:func:`engine.coreset_lazy.greedy_lazy`, what :func:`engine.coreset.greedy_coreset` runs
on the CPU) and by :func:`engine.coreset._greedy_pruned` on the same projected features
from the same first row; then, on a random sample of the patches, compare the lazy
selection's coverage radius with exact greedy k-center (:func:`engine.coreset._greedy_dense`
in float64). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

import numpy as np
import orjson
import torch

from edge.bench.engine import _progress, _read, engine_from_args, load_mvtec
from engine.coreset import _greedy_dense, _greedy_pruned, _lazy_kernels, random_projection
from engine.engine import Engine

REPO = Path(__file__).resolve().parents[2]
# the shared data's sets: (folder under the data root, name in its README)
SHARED_SETS = ("mvtec3d_tire/tire", "mpdd_metal_plate/metal_plate", "kolektorsdd/kolektor")
# the README's anomalib measurement: "greedy coreset 1,215 s for 164,640 patches" (or
# "greedy coreset selection takes about 76 s for 42,336 patches")
_ANOMALIB = re.compile(r"greedy coreset[a-z ]*?([\d,]+) s for ([\d,]+) patches")


def data_root() -> Path:
    return Path(os.environ.get("BDI_TEST_DATA", REPO.parent / "shared" / "data"))


def default_sets() -> list[Path]:
    return [data_root() / name for name in SHARED_SETS]


def anomalib_reference(folder: Path) -> dict[str, int] | None:
    """anomalib's coreset time for ``folder`` (``ROOT/<set>/<name>``) from ``ROOT/README.md``,
    its ``## <set>/<name>`` section, as the shared data's README gives them; or None."""
    readme = folder.parent.parent / "README.md"
    if not readme.is_file():
        return None
    heading = f"## {folder.parent.name}/{folder.name}"
    for section in readme.read_text(encoding="utf-8").split("\n## "):
        if ("## " + section).startswith(heading):
            found = _ANOMALIB.search(" ".join(section.split()))
            if found:
                seconds, patches = (int(g.replace(",", "")) for g in found.groups())
                return {"anomalib_coreset_s": seconds, "anomalib_patches": patches}
    return None


def _features(engine: Engine, folder: Path, max_train: int) -> tuple[int, np.ndarray]:
    """The projected training patches of ``folder``: (images, ``z (N, projection_dim)``)."""
    paths, _ = load_mvtec(folder, max_train)
    images = [_read(p) for p in paths]
    size = engine.config.image_size
    feats = engine.embed(images, engine.backbone(), size, _progress)
    x = torch.from_numpy(feats.reshape(-1, feats.shape[-1]))
    z = random_projection(x, engine.config.coreset_projection_dim, engine.config.seed)
    return len(images), np.ascontiguousarray(z.numpy(), dtype=np.float32)


def greedy_lazy(z: np.ndarray, k: int, start: int) -> tuple[np.ndarray, float, int]:
    """:func:`engine.coreset_lazy.greedy_lazy`; without numba, one clear error."""
    kernels = _lazy_kernels()
    if kernels is None:
        raise ValueError("numba is not installed: there is no lazy greedy to measure")
    return kernels.greedy_lazy(z, k, start)  # type: ignore[no-any-return]


def _timed(fn, *args):  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t0, out


def exact_check(z: np.ndarray, rate: float, sample: int, seed: int) -> dict[str, object]:
    """Lazy greedy against exact greedy (the dense rule in float64) on ``sample`` random
    rows of ``z``: their coverage radii and whether the selections are the same."""
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(z), size=min(sample, len(z)), replace=False))
    zs = np.ascontiguousarray(z[rows])
    k = max(1, int(len(zs) * rate))
    lazy_idx, lazy_r, _ = greedy_lazy(zs, k, 0)
    exact_idx, exact_r = _greedy_dense(torch.from_numpy(zs).double(), k, 0)
    exact_radius = float(exact_r)
    return {
        "sample_patches": len(zs),
        "sample_k": k,
        "sample_radius": round(lazy_r, 4),
        "sample_radius_exact": round(exact_radius, 4),
        "radius_ratio": round(lazy_r / exact_radius, 6) if exact_radius > 0 else 1.0,
        "sample_same_selection": bool(np.array_equal(lazy_idx, exact_idx.numpy())),
    }


def measure_set(
    engine: Engine, folder: Path, max_train: int, sample: int, baseline: bool
) -> dict[str, object]:
    """The numbers of one data set (see the module's docstring)."""
    n_images, z = _features(engine, folder, max_train)
    n = len(z)
    rate, seed = engine.config.coreset_rate, engine.config.seed
    k = max(1, min(n, int(n * rate)))
    # the first row greedy_coreset starts from
    start = int(torch.randint(n, (1,), generator=torch.Generator().manual_seed(seed)))
    greedy_lazy(z[:64], 2, 0)  # load (or compile) the kernel outside the timing
    print(f"[coreset] {folder.name}: {n} patches -> {k}", file=sys.stderr)
    lazy_s, (lazy_idx, lazy_r, measured) = _timed(greedy_lazy, z, k, start)
    result: dict[str, object] = {
        "data": folder.name,
        "n_images": n_images,
        "n_patches": n,
        "k": k,
        "coreset_s": round(lazy_s, 3),
        "radius": round(lazy_r, 4),
        "distances_per_step": round(measured / k),
    }
    if baseline:
        print(f"[coreset] {folder.name}: pruned baseline", file=sys.stderr)
        pruned_s, (pruned_idx, pruned_r) = _timed(_greedy_pruned, z, k, start)
        result |= {
            "coreset_s_pruned": round(pruned_s, 3),
            "radius_pruned": round(pruned_r, 4),
            "speedup_vs_pruned": round(pruned_s / lazy_s, 2),
            # both exact: they part only at float32 near-ties, computing distances apart
            "same_selection_as_pruned": bool(np.array_equal(lazy_idx, pruned_idx)),
        }
    reference = anomalib_reference(folder)
    if reference is not None:
        result |= reference
        # as measured, whatever its patch count (fewer than here: the ratio is conservative)
        result["speedup_vs_anomalib"] = round(reference["anomalib_coreset_s"] / lazy_s, 1)
    if sample:
        result |= exact_check(z, rate, sample, seed)
    return result


def run_coreset_benchmark(args: argparse.Namespace) -> int:
    folders = [Path(d) for d in args.data] if args.data else default_sets()
    for folder in folders:
        load_mvtec(folder)  # a wrong folder fails before any long run
    greedy_lazy(np.zeros((2, 1), np.float32), 1, 0)  # so does a missing numba
    engine = engine_from_args(args)
    sets = [
        measure_set(engine, f, args.max_train, args.sample, not args.skip_baseline) for f in folders
    ]
    result = {
        "device": engine.spec.describe(),
        "cpu_threads": torch.get_num_threads(),
        "backbone": engine.config.backbone,
        "size": engine.config.image_size,
        "coreset_rate": engine.config.coreset_rate,
        "projection_dim": engine.config.coreset_projection_dim,
        "sets": sets,
    }
    print(orjson.dumps(result, option=0 if args.json else orjson.OPT_INDENT_2).decode())
    return 0
