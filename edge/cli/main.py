"""The ``bdi`` command line."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from configs.profile import SWITCH_STEP
from configs.settings import SettingsError, load_settings
from engine.errors import BackboneWeightsError, DeviceError, EngineError

DESCRIPTION = """\
BDI Edge: brake-disc inspection over REST and Kafka. Settings come from BDI_* variables,
then the local settings file ./bdi.env (BDI_PROFILE=dev: the CPU allowed and the packaged
EfficientNet-Lite0; written by `make install` on a machine without CUDA), then
configs/app.yaml; README.md lists them."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's default in its help, unless there is none to show (``None``, a flag's
    ``False``, an empty list) or the help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        empty = action.default is None or action.default is False or action.default == []
        if empty or "default" in text:
            return text
        return super()._get_help_string(action)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("bdi-edge")
    except PackageNotFoundError:  # a source tree that was never installed
        return "unknown"


def subcommands(
    parser: argparse.ArgumentParser, words: tuple[str, ...] = ("bdi",)
) -> list[tuple[tuple[str, ...], argparse.ArgumentParser, str | None]]:
    """Every command below ``parser``, depth first: (its words, its parser, its one-line help)."""
    out: list[tuple[tuple[str, ...], argparse.ArgumentParser, str | None]] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, child in action.choices.items():
                out.append(((*words, name), child, helps.get(name)))
                out += subcommands(child, (*words, name))
    return out


def _finish(parser: argparse.ArgumentParser) -> None:
    """Defaults shown in every command's help; a command without a description of its own
    gets its one-line help (argparse shows that only in the parent's list)."""
    for _, child, help_text in subcommands(parser):
        child.formatter_class = HelpFormatter
        if child.description is None and help_text:
            child.description = help_text[0].upper() + help_text[1:] + "."


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bdi", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"bdi {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    from edge.cli.up import add_up_command
    from edge.simulator.demo import add_demo_command

    add_up_command(sub)
    add_demo_command(sub)

    from edge.cli.bench import add_bench_commands

    add_bench_commands(sub)

    from edge.cli.models import add_store_commands
    from edge.cli.serve import add_serve_command

    add_serve_command(sub)

    add_store_commands(sub)
    from edge.cli.plan import add_plan_command

    add_plan_command(sub)
    from edge.cli.transfer import add_transfer_commands

    add_transfer_commands(sub)
    from edge.cli.consume import add_consume_command

    add_consume_command(sub)
    from edge.cli.trace import add_trace_command

    add_trace_command(sub)
    from edge.cli.users import add_users_command

    add_users_command(sub)
    _finish(parser)
    return parser


def _hint(exc: Exception) -> str:
    """For a production-profile start that fails for want of CUDA or DINOv2 weights: the one
    step that switches to development."""
    if not isinstance(exc, DeviceError | BackboneWeightsError):
        return ""
    try:
        settings = load_settings()
    except SettingsError:
        return ""
    if settings.profile != "production" or (
        isinstance(exc, BackboneWeightsError) and settings.backbone_weights
    ):
        return ""
    return f" For development on this machine: {SWITCH_STEP}."


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except (SettingsError, EngineError, FileNotFoundError, ValueError) as exc:
        print(f"bdi: error: {exc}{_hint(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader went away (`bdi models --json | head`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        return 141


if __name__ == "__main__":
    sys.exit(main())
