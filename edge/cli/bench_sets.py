"""``bdi bench coreset`` and ``regions``: parsers of the benchmarks that run on whole shared
data sets (``edge.bench.coreset``, ``edge.bench.regions``)."""

from __future__ import annotations

import argparse

from edge.cli.bench import _backbone_options, _count


def _data_sets_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data", action="append", default=[], metavar="DIR",
        help="MVTec-layout folder (repeatable; default: the shared data's tire, metal_plate "
        "and kolektorsdd under BDI_TEST_DATA or ../shared/data)",
    )  # fmt: skip


def add_bench_regions(bench_sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = bench_sub.add_parser(
        "regions",
        help="what exact defect regions cost against regions searched with the index only",
        description="Fits each DIR/train/good with the default kNN path, scores DIR/test with "
        "the patches near regions searched exactly and with the index only (same run, "
        "alternating), and compares both frame by frame with an exact search of every "
        "patch. See docs/BENCHMARKS.md.",
    )
    _data_sets_option(p)
    p.add_argument("--max-train", type=_count(0), default=0, help="0 = all training images")
    p.add_argument("--rounds", type=_count(1), default=3, help="timed passes per path")
    p.add_argument("--json", action="store_true", help="only the JSON line on stdout")
    p.set_defaults(func=_cmd_bench_regions)


def _cmd_bench_regions(args: argparse.Namespace) -> int:
    from edge.bench.regions import run_regions_benchmark

    return run_regions_benchmark(args)


def add_bench_coreset(bench_sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = bench_sub.add_parser(
        "coreset",
        help="coreset selection on real training patches: lazy greedy vs pruned vs exact",
        description="Embeds each DIR/train/good, selects the coreset by lazy greedy (the CPU "
        "path) and by the pruned greedy on the same projected patches, and checks the radius "
        "against exact greedy on a sample. See docs/BENCHMARKS.md.",
    )
    _data_sets_option(p)
    _backbone_options(p)
    p.add_argument("--max-train", type=_count(0), default=0, help="0 = all training images")
    p.add_argument("--sample", type=_count(0), default=20_000,
                   help="patches in the check against exact greedy (0: skip it)")  # fmt: skip
    p.add_argument("--skip-baseline", action="store_true",
                   help="do not run the pruned greedy (slow on some data)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="only the JSON line on stdout")
    p.set_defaults(func=_cmd_bench_coreset, knn=None, shortlist=None)


def _cmd_bench_coreset(args: argparse.Namespace) -> int:
    from edge.bench.coreset import run_coreset_benchmark

    return run_coreset_benchmark(args)
