"""``bdi bench engine``, ``bdi bench pipeline`` and ``bdi bench parts``: the parsers of the
benchmarks in ``edge.bench`` (imported when a benchmark runs, not when ``bdi`` starts)."""

from __future__ import annotations

import argparse
from collections.abc import Callable

import orjson


def add_bench_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    bench = sub.add_parser("bench", help="benchmarks that print JSON")
    bench_sub = bench.add_subparsers(dest="bench", required=True, metavar="BENCHMARK")
    _add_bench_engine(bench_sub)
    _add_bench_pipeline(bench_sub)
    _add_bench_parts(bench_sub)


def _count(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer of at least ``minimum`` (a clear usage error otherwise)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is below {minimum}")
        return value

    return parse


def _cmd_bench_engine(args: argparse.Namespace) -> int:
    from edge.bench.engine import run_engine_benchmark

    return run_engine_benchmark(args)


def _add_bench_engine(bench_sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    eng = bench_sub.add_parser("engine", help="train on DIR/train/good, score DIR/test")
    eng.add_argument("--data", required=True, help="MVTec-layout folder")
    eng.add_argument(
        "--backbone", default="efficientnet_lite0", help="dinov2_vits14 or efficientnet_lite0"
    )
    eng.add_argument("--weights", default=None, help="backbone weights file, or 'random'")
    eng.add_argument("--size", type=int, default=224, help="backbone input size (px)")
    eng.add_argument(
        "--coreset-rate", type=float, default=0.1, help="share of patches kept in the memory bank"
    )
    eng.add_argument("--max-train", type=_count(0), default=0, help="0 = all training images")
    eng.add_argument(
        "--knn", choices=["exact", "ivf"], default=None, help="kNN index (default: BDI_KNN_MODE)"
    )
    eng.add_argument("--batch", type=_count(1), default=16, help="frames per engine call")
    eng.add_argument(
        "--chunk",
        type=_count(0),
        default=0,
        help="images per backbone forward (BDI_ENGINE_BATCH_SIZE; 0 = the device's default)",
    )
    eng.add_argument(
        "--shortlist",
        type=int,
        default=None,
        help="memory-bank rows per grid position for the kNN (0 = off)",
    )
    eng.add_argument(
        "--rounds",
        type=_count(1),
        default=5,
        help="timed passes; each batch runs backbone then engine, fastest of each kept",
    )
    eng.add_argument("--json", action="store_true", help="print only the JSON line on stdout")
    eng.set_defaults(func=_cmd_bench_engine)


def _add_bench_pipeline(bench_sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = bench_sub.add_parser(
        "pipeline",
        help="frames -> Kafka -> bdi consume -> verdicts: throughput vs engine, latency",
        description="End-to-end benchmark over a real broker (BDI_KAFKA_BOOTSTRAP, else a "
        "local one, see --broker): max-rate and paced runs through `bdi consume` processes, "
        "with an engine-only baseline in the same run. See docs/BENCHMARKS.md.",
    )
    p.add_argument("--frames", type=int, default=400, help="frames per run (default 400)")
    p.add_argument("--batch", type=int, default=16, help="BDI_BATCH_MAX and engine batch")
    p.add_argument("--size", type=int, default=224, help="ROI and model input size (px)")
    p.add_argument(
        "--consumers", type=int, default=None,
        help="bdi consume processes (default: as bdi up, one per core on the CPU, one on a GPU)",
    )  # fmt: skip
    p.add_argument("--train", type=int, default=30, help="OK images to train from")
    p.add_argument(
        "--rounds", type=int, default=1,
        help="engine-only + max-rate pairs, best of each reported (noisy machines)",
    )  # fmt: skip
    p.add_argument(
        "--consumer-option", action="append", default=[], metavar="KEY=VALUE",
        help="passed to each bdi consume (repeatable)",
    )  # fmt: skip
    p.add_argument(
        "--broker", choices=("tansu", "kafka"), default="tansu",
        help="the local broker when BDI_KAFKA_BOOTSTRAP is unset: tansu (in memory) or "
        "kafka (one Apache Kafka KRaft node; needs Java 17 and Maven)",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="only the JSON line on stdout")
    p.set_defaults(func=_cmd_bench_pipeline)


def _cmd_bench_pipeline(args: argparse.Namespace) -> int:
    from edge.bench.pipeline import BenchConfig, run_pipeline_benchmark

    if args.consumers is None:
        from configs.settings import load_settings
        from edge.cli.up import default_consumers

        args.consumers = default_consumers(load_settings())
    if min(args.frames, args.batch, args.consumers, args.rounds) < 1 or args.train < 2:
        raise ValueError("--frames, --batch, --consumers and --rounds must be >= 1, --train >= 2")
    cfg = BenchConfig(
        frames=args.frames, batch=args.batch, size=args.size, consumers=args.consumers,
        train_images=args.train, consumer_options=tuple(args.consumer_option),
        rounds=args.rounds, broker=args.broker,
    )  # fmt: skip
    result = run_pipeline_benchmark(cfg)
    print(orjson.dumps(result, option=0 if args.json else orjson.OPT_INDENT_2).decode())
    return 0


def _add_bench_parts(bench_sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = bench_sub.add_parser(
        "parts",
        help="part aggregator, trace store ingest, GET /parts/{id} with a full trace",
        description="The part aggregator against building the verdicts themselves, the trace "
        "store's ingest against raw inserts, GET /parts/{id} against GET /health with "
        "--verdicts frame verdicts stored, on SQLite (and PostgreSQL with --postgres). "
        "See docs/BENCHMARKS.md.",
    )
    p.add_argument("--frames", type=_count(6), default=60_000,
                   help="frames through the aggregator, then into the trace store")  # fmt: skip
    p.add_argument("--batch", type=_count(1), default=16, help="frames per consumer batch")
    p.add_argument("--verdicts", type=_count(0), default=1_000_000,
                   help="frame verdicts stored for GET /parts/{id} (0: skip it)")  # fmt: skip
    p.add_argument("--requests", type=_count(1), default=2_000, help="GET /parts/{id} requests")
    p.add_argument("--rounds", type=_count(1), default=3,
                   help="aggregator and ingest passes, the fastest kept")  # fmt: skip
    p.add_argument("--images", type=_count(0), default=3_000,
                   help="frames ingested again with their images (crops; 0: skip)")  # fmt: skip
    p.add_argument("--image-kb", type=_count(1), default=32, help="KiB per frame's image")
    p.add_argument(
        "--postgres", default=None, metavar="URL",
        help="a PostgreSQL database to measure too (default: BDI_TRACE_DB_URL when it names "
        "one); the benchmark works in a schema of its own and drops it",
    )  # fmt: skip
    p.add_argument("--db", choices=("sqlite", "postgresql", "both"), default=None,
                   help="which databases (default: SQLite, and PostgreSQL when given)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="only the JSON line on stdout")
    p.set_defaults(func=_cmd_bench_parts)


def _cmd_bench_parts(args: argparse.Namespace) -> int:
    from edge.bench.parts import run_parts_benchmark

    return run_parts_benchmark(args)
