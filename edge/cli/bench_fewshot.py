"""``bdi bench fewshot``: its parser (the benchmark is :mod:`edge.bench.fewshot`, imported
when it runs)."""

from __future__ import annotations

import argparse

from edge.cli.bench import _count, _engine_options


def _shots(text: str) -> list[int]:
    """An argparse type: comma-separated image counts, each at least 1."""
    try:
        shots = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of integers") from None
    if not shots or shots[0] < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give counts of at least 1, e.g. 1,2,4,8")
    return shots


def _option_sets(text: str) -> list[str]:
    from edge.bench.fewshot import OPTION_SETS

    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [n for n in names if n not in OPTION_SETS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown option set {', '.join(unknown) or text!r}: "
            f"choose from {', '.join(OPTION_SETS)}"
        )
    return names


def _cmd_bench_fewshot(args: argparse.Namespace) -> int:
    from edge.bench.fewshot import run_fewshot_benchmark

    return run_fewshot_benchmark(args)


def add_bench_fewshot(bench_sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = bench_sub.add_parser(
        "fewshot",
        help="AUROC on 1, 2, 4, ... random OK images per few-shot option set, full training beside",
    )
    _engine_options(p)
    p.add_argument("--shots", type=_shots, default=[1, 2, 4, 8, 16], help="e.g. 1,2,4,8,16")
    p.add_argument("--draws", type=_count(1), default=5, help="random draws per shot count")
    p.add_argument(
        "--options", type=_option_sets, default=None,
        help="option sets, comma-separated (default: all; see docs/FEWSHOT.md)",
    )  # fmt: skip
    p.add_argument(
        "--max-train", type=_count(0), default=0,
        help="training pool: its first N images (0 = all), also the full-training anchor",
    )  # fmt: skip
    p.add_argument("--seed", type=_count(0), default=0, help="seed of the draws")
    p.add_argument(
        "--threshold-method", choices=["conformal", "percentile"], default=None,
        help="BDI_THRESHOLD_METHOD of the fits (what the bank and the baseline see)",
    )  # fmt: skip
    p.set_defaults(func=_cmd_bench_fewshot)
