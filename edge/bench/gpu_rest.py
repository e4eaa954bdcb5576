"""gpu_check's ``rest_batching`` stage: REST inference's dynamic batching on the device.

C concurrent requests of one frame each go through the API's :class:`Batcher` (its
defaults: engine-sized batches, 2 ms wait) in this process, without HTTP (``bdi bench
rest`` measures the whole door): images per second and p50 / p99 latency per C, the mean
frames per engine call, and each answer against the same frame scored alone (the right
answer for the right request; on a GPU the last bits of a score may depend on the batch).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np

from edge.api.batching import Batcher
from edge.api.metrics import ApiMetrics
from engine import Engine, InferItem, PatchCoreModel


async def _level(
    batcher: Batcher, items: list[InferItem], clients: int, requests: int
) -> tuple[float, list[float], dict[int, float | None]]:
    issued = 0
    latencies: list[float] = []
    scores: dict[int, float | None] = {}

    async def client() -> None:
        nonlocal issued
        while issued < requests:
            k = issued
            issued += 1
            t0 = time.perf_counter()
            (result,) = await batcher.infer([items[k % len(items)]])
            latencies.append(time.perf_counter() - t0)
            scores[k] = result.score

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return time.perf_counter() - t0, latencies, scores


def _batches(metrics: ApiMetrics) -> tuple[float, float]:
    """(frames, engine calls) the batcher has run so far."""
    get = metrics.registry.get_sample_value
    return get("bdi_rest_batch_frames_sum") or 0.0, get("bdi_rest_batch_frames_count") or 0.0


def _rel(score: float | None, alone: float | None) -> float:
    if score is None or alone is None:
        return 0.0 if score == alone else float("inf")
    return abs(score - alone) / max(abs(alone), 1e-12)


def rest_batching(
    engine: Engine,
    model: PatchCoreModel,
    frames: list[np.ndarray],
    levels: list[int],
    requests: int,
) -> dict[str, Any]:
    """Per level C: img/s, latency, frames per engine call, the worst relative score
    difference against the frame alone."""
    items = [InferItem(model, f) for f in frames]
    alone = [engine.infer([item])[0].score for item in items]
    out: dict[str, Any] = {"requests": requests, "max_frames": engine.batch_size}

    async def run() -> None:
        metrics = ApiMetrics()
        batcher = Batcher(engine, metrics)
        try:
            await _level(batcher, items, max(levels), max(levels))  # warm-up
            for clients in levels:
                before = _batches(metrics)
                seconds, lat, scores = await _level(batcher, items, clients, requests)
                n_frames, calls = np.subtract(_batches(metrics), before)
                diff = max(_rel(s, alone[k % len(items)]) for k, s in scores.items())
                ms = np.asarray(lat) * 1e3
                out[f"c{clients}"] = {
                    "img_per_s": round(requests / seconds, 1),
                    "p50_ms": round(float(np.percentile(ms, 50)), 2),
                    "p99_ms": round(float(np.percentile(ms, 99)), 2),
                    "frames_per_engine_call": round(float(n_frames / max(calls, 1)), 2),
                    "max_rel_diff_vs_alone": diff,
                }
        finally:
            await batcher.stop()

    asyncio.run(run())
    first = out[f"c{levels[0]}"]["img_per_s"]
    for clients in levels:
        out[f"c{clients}"]["img_per_s_over_first"] = round(
            out[f"c{clients}"]["img_per_s"] / first, 2
        )
    return out
