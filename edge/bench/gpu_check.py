"""CUDA path check: prints one JSON object of numbers. Run on a GPU machine:

    python edge/bench/gpu_check.py [--sizes 1,32,256] [--fit-images 200] [--bank-images 200]

bf16 backbone throughput of dinov2_vits14 (random weights: speed only) at several batch
sizes, GPU coreset time, exact GPU kNN time, and a full fit of 200 synthetic images.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402
import orjson  # noqa: E402
import torch  # noqa: E402

from configs.settings import load_settings  # noqa: E402
from engine.coreset import greedy_coreset  # noqa: E402
from engine.engine import Engine, InferItem  # noqa: E402
from engine.knn import KnnIndex  # noqa: E402


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _timed(fn, repeat: int = 3) -> float:
    fn()
    _sync()
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    _sync()
    return (time.perf_counter() - t0) / repeat


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1,32,256")
    parser.add_argument("--fit-images", type=int, default=200)
    parser.add_argument("--image-size", type=int, default=224)
    # images of 256 patches behind the coreset and kNN timings
    parser.add_argument("--bank-images", type=int, default=200)
    args = parser.parse_args()
    settings = load_settings(backbone="dinov2_vits14", backbone_weights="random",
                             require_cuda=False, image_size=args.image_size)  # fmt: skip
    engine = Engine.from_settings(settings)
    out: dict[str, object] = {"device": engine.spec.describe(), "torch": torch.__version__,
                              "backbone": "dinov2_vits14 (random weights)",
                              "image_size": args.image_size}  # fmt: skip
    bb = engine.backbone()
    for b in (int(s) for s in args.sizes.split(",")):
        x = torch.randn(b, 3, args.image_size, args.image_size)
        out[f"backbone_img_per_s_b{b}"] = round(b / _timed(lambda x=x: bb(x)), 1)
    rng = np.random.default_rng(0)
    n = args.bank_images * 256
    feats = torch.from_numpy(rng.standard_normal((n, 384), dtype=np.float32))
    feats = feats.to(engine.spec.device)
    t = _timed(lambda: greedy_coreset(feats, n // 10), repeat=1)
    out[f"coreset_s_{n}_to_{n // 10}"] = round(t, 3)
    bank = rng.standard_normal((n // 10, 384), dtype=np.float32)
    index = KnnIndex("exact", use_gpu=True).fit(bank)
    queries = rng.standard_normal((32, 256, 384), dtype=np.float32)
    out["knn_gpu_index"] = index.use_gpu
    out["knn_ms_per_32_images"] = round(_timed(lambda: index.search_images(queries)) * 1e3, 2)
    images = [rng.integers(0, 255, (300, 400, 3), dtype=np.uint8) for _ in range(args.fit_images)]
    t0 = time.perf_counter()
    fit = engine.fit(images)
    _sync()
    out[f"fit_s_{args.fit_images}_images"] = round(time.perf_counter() - t0, 2)
    out["fit_timings_s"] = {k: round(v, 3) for k, v in fit.timings_s.items()}
    items = [InferItem(fit.model, img) for img in images[:64]]
    out[f"infer_img_per_s_b{len(items)}"] = round(
        len(items) / _timed(lambda: engine.infer(items)), 1
    )
    print(orjson.dumps(out).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
