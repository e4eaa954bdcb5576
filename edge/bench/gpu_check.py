"""The GPU path's one-shot check: correctness first, then speed. Run on a CUDA machine:

    python edge/bench/gpu_check.py [--out FILE]

Each stage prints one JSON line (and appends it to ``--out``) as soon as it ends, flushed,
so a crash or a timeout loses nothing measured before it; a failed stage says why and the
next one still runs. The exit status is 0 only when every stage passed. Without CUDA it
refuses to run (``--allow-cpu`` runs every stage on the CPU at toy sizes, for the tests).

Stages: ``environment`` (nvidia-smi, torch, CUDA arch list, bf16, faiss, kNN backend);
``backbone`` (DINOv2 ViT-S/14, random weights, at 224/448 px and batch 1/32/64/256: img/s and
peak memory); ``precision`` (EfficientNet-Lite0's real weights: a model fitted in fp32 on the
CPU, scored there and on the GPU in its own fp32 and in bf16: score shifts over the
threshold); ``coreset`` (device vs CPU greedy k-center: radius, overlap, time); ``knn`` (the
device kNN vs CPU faiss: same neighbours, distances, time); ``fit_infer_save_load`` (fit 200
images, infer 64, save, load back on the GPU: same version and scores); ``threads`` (four
threads scoring one model); ``oom`` (a forced out-of-memory gives ERROR verdicts, and the
next batch succeeds); ``rest_batching`` (edge/bench/gpu_rest.py). See docs/GPU.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import faiss  # noqa: E402
import numpy as np  # noqa: E402
import orjson  # noqa: E402
import torch  # noqa: E402

from configs.settings import load_settings  # noqa: E402
from edge.bench.gpu_rest import rest_batching  # noqa: E402
from edge.simulator.discs import make_ng, make_ok  # noqa: E402
from engine import artifact, device_knn  # noqa: E402
from engine.coreset import coverage_radius, greedy_coreset, random_projection  # noqa: E402
from engine.decision import InferItem  # noqa: E402
from engine.device import DeviceSpec  # noqa: E402
from engine.engine import Engine  # noqa: E402
from engine.errors import DeviceMemoryError  # noqa: E402
from engine.knn import KnnIndex  # noqa: E402

Stage = Callable[[argparse.Namespace], dict[str, Any]]


class CheckFailed(Exception):
    """A stage's result is wrong (not merely slow)."""


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _timed(fn: Callable[[], object], repeat: int = 3) -> float:
    """Seconds per call after one warm-up call."""
    fn()
    _sync()
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    _sync()
    return (time.perf_counter() - t0) / repeat


def _engine(args: argparse.Namespace, device: str, **overrides: object) -> Engine:
    """An engine on ``device`` ("gpu": CUDA where present, else the CPU) with ``overrides``."""
    settings = load_settings(require_cuda=False, **overrides)
    engine = Engine.from_settings(settings)
    if device == "cpu" and engine.spec.is_cuda:
        engine = Engine(engine.config, DeviceSpec(torch.device("cpu"), torch.float32))
    return engine


def _discs(n: int, size: int, seed: int = 0, ng_every: int = 0) -> list[np.ndarray]:
    return [
        (make_ng(seed + i, size) if ng_every and i % ng_every == ng_every - 1 else
         make_ok(seed + i, size)).image
        for i in range(n)
    ]  # fmt: skip


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


# --- stages ----------------------------------------------------------------------------
def stage_environment(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"torch": torch.__version__, "cuda": torch.version.cuda,
                           "faiss": faiss.__version__,
                           "faiss_gpu": device_knn.faiss_gpu_available()}  # fmt: skip
    try:
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,compute_cap",
             "--format=csv,noheader"], capture_output=True, text=True, timeout=20,
        )  # fmt: skip
        out["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        out["nvidia_smi"] = f"unavailable: {exc}"
    if torch.cuda.is_available():
        out["device"] = torch.cuda.get_device_name(0)
        out["capability"] = list(torch.cuda.get_device_capability(0))
        out["arch_list"] = torch.cuda.get_arch_list()
        out["bf16_native"] = torch.cuda.is_bf16_supported(including_emulation=False)
    out["knn_backend"] = device_knn.device_backend()
    out["engine"] = _engine(args, "gpu").spec.describe()
    return out


def stage_backbone(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"weights": "random"}
    for size in args.image_sizes:
        engine = _engine(args, "gpu", backbone="dinov2_vits14", backbone_weights="random",
                         image_size=size)  # fmt: skip
        bb = engine.backbone()
        out["dtype"] = str(engine.spec.dtype).removeprefix("torch.")
        for b in args.batches:
            x = torch.randn(b, 3, size, size)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            rate = b / _timed(functools.partial(bb, x))
            row = {"img_per_s": round(rate, 1)}
            if torch.cuda.is_available():
                row["peak_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
            out[f"{size}px_b{b}"] = row
    return out


def stage_precision(args: argparse.Namespace) -> dict[str, Any]:
    """The same fp32 model scored on the CPU (its reference) and on the device, in the
    model's own fp32 and, to show why it matters, in bf16."""
    size = args.precision_size
    cpu = _engine(args, "cpu", backbone="efficientnet_lite0", image_size=size)
    gpu = _engine(args, "gpu", backbone="efficientnet_lite0", image_size=size)
    model = cpu.fit(_discs(args.precision_images, size)).model
    threshold = model.threshold
    _check(threshold is not None and threshold > 0, "the fit gave no OK threshold")
    assert threshold is not None
    frames = _discs(args.precision_images, size, seed=1000, ng_every=2)
    ref = np.array([r.score for r in cpu.infer([InferItem(model, f) for f in frames])])
    as_bf16 = dataclasses.replace(model, meta=dataclasses.replace(
        model.meta, compute_dtype="bfloat16"))  # fmt: skip
    out: dict[str, Any] = {"images": len(frames), "threshold": round(threshold, 5),
                           "model_dtype": model.meta.compute_dtype}  # fmt: skip
    for name, scored in (("gpu_model_dtype", model), ("gpu_bf16", as_bf16)):
        got = np.array([r.score for r in gpu.infer([InferItem(scored, f) for f in frames])])
        shift = np.abs(got - ref)
        flips = int(((got >= threshold) != (ref >= threshold)).sum())
        out[name] = {"max_shift_over_threshold": round(float(shift.max() / threshold), 6),
                     "median_shift_over_threshold": round(float(np.median(shift) / threshold), 6),
                     "verdict_flips": flips}  # fmt: skip
    _check(out["gpu_model_dtype"]["verdict_flips"] == 0, "fp32 scoring flipped verdicts")
    return out


def stage_coreset(args: argparse.Namespace) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    n = args.bank_images * 256
    feats = torch.from_numpy(rng.standard_normal((n, 384), dtype=np.float32))
    k = n // 10
    t0 = time.perf_counter()
    cpu = greedy_coreset(feats, k)
    cpu_s = time.perf_counter() - t0
    dev_feats = feats.to("cuda") if torch.cuda.is_available() else feats
    _sync()
    t0 = time.perf_counter()
    dev = _dense_on(dev_feats, k)
    _sync()
    dev_s = time.perf_counter() - t0
    z = random_projection(feats, 128)
    dev_idx = dev.indices.cpu()
    overlap = len(set(cpu.indices.tolist()) & set(dev_idx.tolist())) / k
    out: dict[str, Any] = {
           "rows": n, "selected": k, "cpu_s": round(cpu_s, 3), "device_s": round(dev_s, 3),
           "cpu_radius": round(coverage_radius(z, cpu.indices), 5),
           "device_radius": round(coverage_radius(z, dev_idx), 5),
           "overlap": round(overlap, 4), "device_distinct": len(set(dev_idx.tolist()))}  # fmt: skip
    _check(out["device_distinct"] == k, "the device coreset picked a row twice")
    _check(out["device_radius"] <= out["cpu_radius"] * 1.05, "device radius over CPU's +5 %")
    return out


def _dense_on(features: torch.Tensor, k: int) -> Any:
    """The device's greedy k-center; on a CPU-only run, the dense rule on the CPU."""
    if features.device.type != "cpu":
        return greedy_coreset(features, k)
    from engine.coreset import Coreset, _greedy_dense

    z = random_projection(features, 128)
    start = int(torch.randint(len(z), (1,), generator=torch.Generator().manual_seed(0)))
    idx, radius = _greedy_dense(z, k, start)
    return Coreset(idx, float(radius))


def stage_knn(args: argparse.Namespace) -> dict[str, Any]:
    rng = np.random.default_rng(1)
    bank = rng.standard_normal((args.bank_images * 26, 384), dtype=np.float32)
    queries = rng.standard_normal((32 * 256, 384), dtype=np.float32)
    cpu = KnnIndex("exact").fit(bank)
    dev = KnnIndex("exact", use_gpu=True).fit(bank)
    want_d, want_i = cpu.search(queries, 3)
    got_d, got_i = dev.search(queries, 3)
    rel = np.abs(got_d - want_d) / np.maximum(want_d, 1e-6)
    out: dict[str, Any] = {"backend": dev.backend, "bank_rows": len(bank), "queries": len(queries),
           "same_ids": round(float((got_i == want_i).mean()), 6),
           "max_rel_distance_diff": float(rel.max()),
           "cpu_ms": round(_timed(lambda: cpu.search(queries, 1)) * 1e3, 2),
           "device_ms": round(_timed(lambda: dev.search(queries, 1)) * 1e3, 2)}  # fmt: skip
    _check(out["same_ids"] > 0.999, "device kNN neighbours differ from faiss")
    _check(out["max_rel_distance_diff"] < 1e-3, "device kNN distances differ from faiss")
    return out


def _gpu_model(args: argparse.Namespace) -> tuple[Engine, Any, list[np.ndarray]]:
    engine = _engine(args, "gpu", backbone="dinov2_vits14", backbone_weights="random",
                     image_size=args.fit_size)  # fmt: skip
    model = engine.fit(_discs(args.fit_images, args.fit_size)).model
    frames = _discs(args.infer_images, args.fit_size, seed=500, ng_every=4)
    return engine, model, frames


def stage_fit_infer_save_load(args: argparse.Namespace) -> dict[str, Any]:
    engine, _, _ = _gpu_model(args)  # warm: kernels and allocator, not timed
    t0 = time.perf_counter()
    engine, model, frames = _gpu_model(args)
    fit_s = time.perf_counter() - t0
    items = [InferItem(model, f) for f in frames]
    infer_s = _timed(lambda: engine.infer(items))
    first = engine.infer(items)
    with tempfile.TemporaryDirectory() as tmp:
        artifact.save(model, Path(tmp), "m")
        loaded = artifact.load(Path(tmp), "m", use_gpu=engine.spec.is_cuda)
    again = engine.infer([InferItem(loaded, f) for f in frames])
    same = all(a.score == b.score for a, b in zip(first, again, strict=True))
    out: dict[str, Any] = {"fit_images": args.fit_images, "fit_s": round(fit_s, 2),
           "infer_img_per_s": round(len(items) / infer_s, 1),
           "knn_backend": model.index.backend, "loaded_backend": loaded.index.backend,
           "same_version": loaded.version == model.version, "same_scores": same,
           "verdicts": sorted({r.verdict for r in first})}  # fmt: skip
    _check(out["same_version"] and same, "a saved model loads back different")
    _check("ERROR" not in out["verdicts"], "ERROR verdicts from a sound model")
    return out


def stage_threads(args: argparse.Namespace) -> dict[str, Any]:
    engine, model, frames = _gpu_model(args)
    want = [r.score for r in engine.infer([InferItem(model, f) for f in frames])]
    results: list[list[float | None]] = []
    errors: list[str] = []

    def work() -> None:
        try:
            for _ in range(3):
                results.append(
                    [r.score for r in engine.infer([InferItem(model, f) for f in frames])]
                )
        except Exception as exc:  # counted below
            errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    agree = all(np.allclose(r, want, rtol=1e-6) for r in results)  # type: ignore[arg-type]
    out: dict[str, Any] = {
        "threads": 4,
        "batches": len(results),
        "errors": errors[:3],
        "scores_agree": agree,
    }
    _check(not errors and agree and len(results) == 12, "threads disagreed or failed")
    return out


def stage_oom(args: argparse.Namespace) -> dict[str, Any]:
    engine, model, frames = _gpu_model(args)
    items = [InferItem(model, f) for f in frames]
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.set_per_process_memory_fraction(1e-4)
        try:
            failed = engine.infer(items)
        finally:
            torch.cuda.set_per_process_memory_fraction(1.0)
    else:  # no device memory to exhaust on a CPU run: the search reports it instead
        failed = _with_search_oom(engine, items)
    after = engine.infer(items)
    out: dict[str, Any] = {"during": sorted({r.verdict for r in failed}),
           "error_kinds": sorted({str(r.error_kind) for r in failed}),
           "after": sorted({r.verdict for r in after})}  # fmt: skip
    _check(out["during"] == ["ERROR"], "an out-of-memory batch gave non-ERROR verdicts")
    _check("ERROR" not in out["after"], "the batch after an out-of-memory failed")
    return out


def _with_search_oom(engine: Engine, items: list[InferItem]) -> list[Any]:
    index = items[0].model.index  # type: ignore[union-attr]
    real = index.search

    def oom(*a: object, **k: object) -> Any:
        raise DeviceMemoryError("simulated: the GPU ran out of memory")

    index.search = oom  # type: ignore[method-assign]
    try:
        return engine.infer(items)
    finally:
        index.search = real  # type: ignore[method-assign]


STAGES: dict[str, Stage] = {
    "environment": stage_environment, "backbone": stage_backbone,
    "precision": stage_precision, "coreset": stage_coreset, "knn": stage_knn,
    "fit_infer_save_load": stage_fit_infer_save_load, "threads": stage_threads,
    "oom": stage_oom, "rest_batching": lambda a: rest_batching(
        *_gpu_model(a), a.rest_clients, a.rest_requests),
}  # fmt: skip


def _emit(record: dict[str, Any], sink: IO[bytes] | None) -> None:
    line = orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n"
    sys.stdout.buffer.write(line)
    sys.stdout.flush()
    if sink is not None:
        sink.write(line)
        sink.flush()


def _ints(text: str) -> list[int]:
    return [int(s) for s in text.split(",") if s]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, help="also append each JSON line to this file")
    p.add_argument("--stages", default=",".join(STAGES), help="comma-separated subset")
    p.add_argument("--allow-cpu", action="store_true", help="run without CUDA (tests only)")
    p.add_argument("--image-sizes", type=_ints, default=[224, 448])
    p.add_argument("--batches", type=_ints, default=[1, 32, 64, 256])
    p.add_argument("--precision-images", type=int, default=16)
    p.add_argument("--precision-size", type=int, default=224)
    p.add_argument("--bank-images", type=int, default=200, help="256-patch images (coreset)")
    p.add_argument("--fit-images", type=int, default=200)
    p.add_argument("--infer-images", type=int, default=64)
    p.add_argument("--fit-size", type=int, default=224)
    p.add_argument("--rest-clients", type=_ints, default=[1, 16, 64])
    p.add_argument("--rest-requests", type=int, default=512)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    names = [s for s in args.stages.split(",") if s]
    unknown = [s for s in names if s not in STAGES]
    if unknown:
        print(f"unknown stage(s) {unknown}; choose from {list(STAGES)}", file=sys.stderr)
        return 2
    if not torch.cuda.is_available() and not args.allow_cpu:
        print("gpu_check: CUDA is not available here; this check is for a GPU machine "
              "(--allow-cpu runs it on the CPU, for tests)", file=sys.stderr)  # fmt: skip
        return 2
    sink = args.out.open("ab") if args.out else None
    failed = 0
    t_all = time.perf_counter()
    for name in names:
        t0 = time.perf_counter()
        try:
            record = {"stage": name, "ok": True, **STAGES[name](args)}
        except Exception as exc:  # reported and counted; the next stage still runs
            failed += 1
            record = {"stage": name, "ok": False, "error": f"{type(exc).__name__}: {exc}",
                      "trace": traceback.format_exc(limit=4)[-1500:]}  # fmt: skip
        record["seconds"] = round(time.perf_counter() - t0, 2)
        _emit(record, sink)
    _emit({"stage": "done", "ok": failed == 0, "failed": failed,
           "seconds": round(time.perf_counter() - t_all, 1)}, sink)  # fmt: skip
    if sink is not None:
        sink.close()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
