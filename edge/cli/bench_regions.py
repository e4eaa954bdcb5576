"""``bdi bench regions``: the parser (the benchmark is ``edge.bench.regions``)."""

from __future__ import annotations

import argparse

from edge.cli.bench import _count


def add_bench_regions(bench_sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = bench_sub.add_parser(
        "regions",
        help="what exact defect regions cost against regions searched with the index only",
        description="Fits each DIR/train/good with the default kNN path, scores DIR/test with "
        "the patches near regions searched exactly and with the index only (same run, "
        "alternating), and compares both frame by frame with an exact search of every "
        "patch. See docs/BENCHMARKS.md.",
    )
    p.add_argument(
        "--data", action="append", default=[], metavar="DIR",
        help="MVTec-layout folder (repeatable; default: the shared data's metal_plate, tire "
        "and kolektorsdd under BDI_TEST_DATA or ../shared/data)",
    )  # fmt: skip
    p.add_argument("--max-train", type=_count(0), default=0, help="0 = all training images")
    p.add_argument("--rounds", type=_count(1), default=3, help="timed passes per path")
    p.add_argument("--json", action="store_true", help="only the JSON line on stdout")
    p.set_defaults(func=_cmd_bench_regions)


def _cmd_bench_regions(args: argparse.Namespace) -> int:
    from edge.bench.regions import run_regions_benchmark

    return run_regions_benchmark(args)
