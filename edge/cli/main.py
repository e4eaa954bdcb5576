"""The ``bdi`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from configs.settings import SettingsError
from engine.errors import EngineError


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bdi", description="BDI Edge inspection service")
    sub = parser.add_subparsers(dest="command", required=True)

    from edge.cli.up import add_up_command
    from edge.simulator.demo import add_demo_command

    add_up_command(sub)
    add_demo_command(sub)

    bench = sub.add_parser("bench", help="benchmarks that print JSON")
    bench_sub = bench.add_subparsers(dest="bench", required=True)
    eng = bench_sub.add_parser("engine", help="train on DIR/train/good, score DIR/test")
    eng.add_argument("--data", required=True, help="MVTec-layout folder")
    eng.add_argument("--backbone", default="efficientnet_lite0")
    eng.add_argument("--weights", default=None, help="backbone weights file, or 'random'")
    eng.add_argument("--size", type=int, default=224)
    eng.add_argument("--coreset-rate", type=float, default=0.1)
    eng.add_argument("--max-train", type=_count(0), default=0, help="0 = all training images")
    eng.add_argument("--knn", choices=["exact", "ivf"], default=None)
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
    from edge.bench.pipeline import add_bench_pipeline_command

    add_bench_pipeline_command(bench_sub)

    from edge.cli.models import add_store_commands
    from edge.cli.serve import add_serve_command

    add_serve_command(sub)

    add_store_commands(sub)
    from edge.cli.transfer import add_transfer_commands

    add_transfer_commands(sub)
    from edge.cli.consume import add_consume_command

    add_consume_command(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except (SettingsError, EngineError, FileNotFoundError, ValueError) as exc:
        print(f"bdi: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
