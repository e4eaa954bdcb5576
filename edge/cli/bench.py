"""``bdi bench engine``, ``pipeline``, ``parts``, ``frr``, ``incremental``, ``drift``, ``ui``
and ``rest``: the parsers of the benchmarks in ``edge.bench`` (imported when a benchmark
runs, not when ``bdi`` starts); ``coreset`` and ``regions`` in ``edge.cli.bench_sets``."""

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
    _add_bench_frr(bench_sub)
    _add_bench_incremental(bench_sub)
    _add_bench_drift(bench_sub)
    _add_bench_ui(bench_sub)
    _add_bench_rest(bench_sub)
    # parsers in modules of their own (this one's size)
    from edge.cli.bench_fewshot import add_bench_fewshot
    from edge.cli.bench_sets import add_bench_coreset, add_bench_regions

    add_bench_coreset(bench_sub)
    add_bench_regions(bench_sub)
    add_bench_fewshot(bench_sub)


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
    _engine_options(eng)
    eng.add_argument("--max-train", type=_count(0), default=0, help="0 = all training images")
    eng.add_argument("--input-mode", choices=["square", "aspect", "auto"], help="BDI_INPUT_MODE")
    eng.add_argument("--aspect-sizing", choices=["short", "area"], help="rule of aspect sizes")
    eng.add_argument("--batch", type=_count(1), default=16, help="frames per engine call")
    eng.add_argument(
        "--chunk",
        type=_count(0),
        default=0,
        help="images per backbone forward (BDI_ENGINE_BATCH_SIZE; 0 = the device's default)",
    )
    eng.add_argument(
        "--rounds",
        type=_count(1),
        default=5,
        help="timed passes; each batch runs backbone then engine, fastest of each kept",
    )
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
    p.add_argument(
        "--models", type=_model_counts, default=(), metavar="K,...",
        help="then, for each K: one model stored under K ROI names, frames round-robin over "
        "them; img/s and the consumers' memory per K (e.g. 1,8,32,128)",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="only the JSON line on stdout")
    p.set_defaults(func=_cmd_bench_pipeline)


def _model_counts(text: str) -> tuple[int, ...]:
    """An argparse type: ``--models 1,8,32,128`` (a clear usage error otherwise)."""
    from edge.bench.pipeline_models import parse_models

    try:
        return parse_models(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


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
        rounds=args.rounds, broker=args.broker, models=args.models,
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


def _backbone_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backbone", default="efficientnet_lite0",
                   help="dinov2_vits14 or efficientnet_lite0")  # fmt: skip
    p.add_argument("--weights", default=None, help="backbone weights file, or 'random'")
    p.add_argument("--size", type=_count(16), default=224, help="backbone input size (px)")
    p.add_argument("--coreset-rate", type=_share, default=0.1,
                   help="share of patches kept in the memory bank")  # fmt: skip


def _engine_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="MVTec-layout folder")
    _backbone_options(p)
    p.add_argument("--knn", choices=["exact", "ivf"], default=None,
                   help="kNN index (default: BDI_KNN_MODE)")  # fmt: skip
    p.add_argument("--shortlist", type=int, default=None,
                   help="memory-bank rows per grid position for the kNN (0 = off)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print only the JSON line on stdout")


def _share(text: str) -> float:
    """An argparse type: a share in (0, 1]."""
    value = _number(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"{value} is not in (0, 1]")
    return value


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def _rate(text: str) -> float:
    """An argparse type: a rate strictly between 0 and 1."""
    value = _number(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"{value} is not in (0, 1)")
    return value


def _add_bench_frr(bench_sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = bench_sub.add_parser(
        "frr",
        help="false-reject rate of the conformal threshold on unseen OK images",
        description="Pools DIR's OK images (train/good, test/good); over random train/"
        "calibration/test splits, fits a bank, sets the conformal threshold at --alpha, "
        "measures the false-reject rate on the test OK images and the miss rate on "
        "DIR/test/<defect>. See docs/BENCHMARKS.md.",
    )
    _engine_options(p)
    p.add_argument("--alpha", type=_rate, required=True, help="target false-reject rate")
    p.add_argument("--splits", type=_count(1), default=200, help="random splits")
    p.add_argument("--draws", type=_count(1), default=10,
                   help="distinct training parts (bank fits) the splits share")  # fmt: skip
    p.add_argument("--folded", type=_count(0), default=5,
                   help="splits whose calibration images are also folded into the bank, "
                   "as production does")  # fmt: skip
    p.add_argument("--seed", type=_count(0), default=0, help="seed of the random splits")
    p.set_defaults(func=_cmd_bench_frr)


def _cmd_bench_frr(args: argparse.Namespace) -> int:
    from edge.bench.frr import run_frr_benchmark

    return run_frr_benchmark(args)


def _add_bench_incremental(bench_sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = bench_sub.add_parser(
        "incremental",
        help="append 20 %% of the OK images to a bank fitted on 80 %% vs a full fit",
        description="Fits on 80 %% of DIR/train/good, appends the other 20 %% (Engine.append) "
        "and fits on 100 %% in the same run: times, image and pixel AUROC on DIR/test, "
        "coverage radius of every training patch by each bank. See docs/BENCHMARKS.md.",
    )
    _engine_options(p)
    p.add_argument("--append-share", type=_rate, default=0.2,
                   help="share of the training images appended")  # fmt: skip
    p.add_argument("--seed", type=_count(0), default=0, help="seed of the 80/20 split")
    p.add_argument("--rounds", type=_count(1), default=3,
                   help="full fits and appends timed, the fastest of each kept")  # fmt: skip
    p.set_defaults(func=_cmd_bench_incremental)


def _cmd_bench_incremental(args: argparse.Namespace) -> int:
    from edge.bench.incremental import run_incremental_benchmark

    return run_incremental_benchmark(args)


def _add_bench_drift(bench_sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = bench_sub.add_parser(
        "drift",
        help="drift detectors: false alarms on a stable OK stream, frames until the alarm "
        "on shifted ones",
        description="Fits a model on DIR's OK images, streams jittered unseen OK frames "
        "through the engine, and feeds their conformal p-values to the drift detectors. "
        "See docs/DRIFT.md.",
    )
    p.add_argument("--data", required=True, help="MVTec-layout folder")
    p.add_argument("--stable", type=_count(1), default=10_000, help="stable frames tested")
    p.add_argument("--distinct", type=_count(1), default=1_000,
                   help="distinct stable frames scored by the engine")  # fmt: skip
    p.add_argument("--shift-distinct", type=_count(1), default=300,
                   help="distinct frames scored per shift")  # fmt: skip
    p.add_argument("--prefix", type=_count(1), default=500,
                   help="stable frames before each shift")  # fmt: skip
    p.add_argument("--max-shifted", type=_count(1), default=1_000,
                   help="shifted frames fed at most before the shift counts as missed")  # fmt: skip
    p.add_argument("--repeats", type=_count(1), default=5, help="runs per shift (median)")
    p.add_argument("--seed", type=_count(0), default=0, help="splits, jitter and sampling")
    p.add_argument("--size", type=_count(32), default=224, help="backbone input size (px)")
    p.add_argument("--noise", type=float, default=0.0,
                   help="sensor noise on each frame (sigma, grey levels; 0: none)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="only the JSON line on stdout")
    p.set_defaults(func=_cmd_bench_drift)


def _cmd_bench_drift(args: argparse.Namespace) -> int:
    from edge.bench.drift import run_drift_benchmark

    return run_drift_benchmark(args)


def _add_bench_ui(bench_sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = bench_sub.add_parser(
        "ui",
        help="the operator screen's Line page at a verdict rate in Chromium: keeps up? memory?",
        description="Embedded broker, bdi serve and Debian's Chromium on /ui#/line; verdict "
        "records at --rate per second for --duration seconds after --idle seconds without "
        "traffic; samples the tab's JS heap (after a GC), DOM nodes, long tasks and how far "
        "the page trails the producer. See docs/BENCHMARKS.md.",
    )
    p.add_argument("--rate", type=float, default=50.0, help="verdicts per second")
    p.add_argument("--duration", type=_count(1), default=300, help="seconds of traffic")
    p.add_argument("--idle", type=_count(0), default=20, help="seconds without traffic first")
    p.add_argument("--sample", type=_count(1), default=10, help="seconds between samples")
    p.add_argument("--chromium", default=None, help="the browser (default: chromium on PATH)")
    p.set_defaults(func=_cmd_bench_ui)


def _cmd_bench_ui(args: argparse.Namespace) -> int:
    from edge.bench.ui_line import run_ui_benchmark

    return run_ui_benchmark(args)


def _levels(text: str) -> list[int]:
    """An argparse type: ``"1,4,16"`` -> ``[1, 4, 16]``, positive integers."""
    try:
        levels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of integers") from None
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give positive integers, e.g. 1,4,16,64")
    return levels


def _add_bench_rest(bench_sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = bench_sub.add_parser(
        "rest",
        help="concurrent clients uploading real PNGs to /infer: img/s, p50/p99, statuses",
        description="Starts bdi serve (or targets --url), trains the bench model from "
        "DIR/train/good over HTTP if needed, then C concurrent clients post the PNGs of "
        "DIR/test to /infer for each level C. See docs/BENCHMARKS.md.",
    )
    p.add_argument("--data", default=None, help="MVTec-layout folder (default: metal_plate)")
    p.add_argument("--url", default=None, help="a running bdi serve (default: start one)")
    p.add_argument("--api-key", default=None, help="X-API-Key for --url (default: BDI_API_KEY)")
    p.add_argument(
        "--concurrency", dest="levels", type=_levels, default=[1, 4, 16, 64],
        help="client counts, comma-separated (default 1,4,16,64)",
    )  # fmt: skip
    p.add_argument("--requests", type=_count(1), default=200, help="answers per level")
    p.add_argument(
        "--rounds", type=_count(1), default=1,
        help="passes over the levels, in turn; each level keeps its fastest",
    )  # fmt: skip
    p.add_argument(
        "--no-batching", action="store_true",
        help="also run the levels against a server with BDI_REST_BATCH_MAX=1 (the baseline)",
    )  # fmt: skip
    p.add_argument("--train", type=_count(0), default=0, help="training images (0 = all)")
    p.add_argument("--backbone", default="efficientnet_lite0", help="the server's backbone")
    p.add_argument("--size", type=_count(28), default=224, help="the server's input size (px)")
    p.add_argument("--cuda", action="store_true", help="the server requires the GPU")
    p.add_argument("--json", action="store_true", help="the JSON on one line")
    p.set_defaults(func=_cmd_bench_rest)


def _cmd_bench_rest(args: argparse.Namespace) -> int:
    from edge.bench.rest import run_rest_benchmark

    return run_rest_benchmark(args)
