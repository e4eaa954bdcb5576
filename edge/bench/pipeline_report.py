"""The JSON object of ``bdi bench pipeline`` from the rounds and the paced run it measured
(``edge/bench/pipeline.py``); docs/BENCHMARKS.md, Pipeline, says what each key means."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edge.bench.consumers import PhaseResult
    from edge.bench.pipeline import BenchConfig
    from edge.simulator.camera import CameraFrame
    from engine import Engine


@dataclass
class Round:
    """One engine-only run and one max-rate run."""

    engine_s: float
    engine_cpu_s: float  # CPU seconds of this process during the engine-only run
    frames: list[CameraFrame]
    result: PhaseResult
    cpu_s: list[float]  # during the max-rate run: per consumer, the broker, this process


def pipeline_result(
    cfg: BenchConfig,
    engine: Engine,
    broker: str,
    runs: dict[str, Any],
    load_avg: float,
    consumer_threads: int | None,
) -> dict[str, Any]:
    """The JSON object. With several rounds the rates are each one's best round (the VM's
    neighbours only ever slow a run down); correctness counts cover every round."""
    import torch

    from edge.bench.consumers import batch_profile

    rounds: list[Round] = runs["rounds"]
    paced: PhaseResult = runs["paced"]
    best = max(rounds, key=lambda r: r.result.img_per_s)
    fastest = min(rounds, key=lambda r: r.engine_s)
    maxed = best.result
    engine_rate = cfg.frames / fastest.engine_s
    batches, infer_s = batch_profile(maxed.timings)
    n = cfg.consumers
    max_rate_cpu = {"consumers": sum(best.cpu_s[:n]), "bench": best.cpu_s[-1]}
    if broker.startswith("local "):
        max_rate_cpu["broker"] = best.cpu_s[n]
    return {
        "frames": sum(r.result.frames for r in rounds),
        "verdicts": sum(r.result.answered for r in rounds),
        "lost": sum(r.result.lost for r in rounds),
        "duplicates": sum(r.result.duplicates for r in rounds),
        "wrong": sum(r.result.wrong for r in rounds),
        "pipeline_img_per_s": round(maxed.img_per_s, 2),
        "engine_img_per_s": round(engine_rate, 2),
        "efficiency": round(maxed.img_per_s / engine_rate, 3),
        "latency_ms_p50": maxed.percentile_ms(50),
        "latency_ms_p99": maxed.percentile_ms(99),
        "paced_rate_img_per_s": round(runs["paced_fps"], 2),
        "paced_latency_ms_p50": paced.percentile_ms(50),
        "paced_latency_ms_p99": paced.percentile_ms(99),
        "paced_verdicts": paced.answered,
        "paced_lost": paced.lost,
        "paced_duplicates": paced.duplicates,
        "paced_wrong": paced.wrong,
        "batch": cfg.batch,
        "size": cfg.size,
        "consumers": cfg.consumers,
        "partitions": cfg.partitions,
        "backbone": engine.config.backbone,
        "device": engine.spec.describe(),
        "engine_threads": torch.get_num_threads(),
        "consumer_threads": consumer_threads or torch.get_num_threads(),
        "broker": broker,
        "rounds": [
            {
                "engine_img_per_s": round(cfg.frames / r.engine_s, 2),
                "pipeline_img_per_s": round(r.result.img_per_s, 2),
            }
            for r in rounds
        ],  # fmt: skip
        # where the (best) max-rate run's time went (see docs/BENCHMARKS.md, Pipeline)
        "max_rate_s": round(maxed.window_s, 3),
        "publish_s": round(maxed.publish_s, 3),
        "consumer_batches": batches,
        "consumer_infer_s": round(infer_s, 3),
        # CPU seconds (user + system) while the engine-only run and the max-rate run went
        # on: the engine alone, and everything the pipeline ran on this machine
        "cpu_s": {
            "engine_only": round(fastest.engine_cpu_s, 2),
            "max_rate": {k: round(v, 2) for k, v in max_rate_cpu.items()},
        },
        "load_avg_1m": load_avg,
        # with --models: per K, img/s, its ratio to K = 1 and the consumers' RSS
        **({"models": runs["models"]} if runs.get("models") else {}),
    }
