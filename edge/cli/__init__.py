"""The ``bdi`` command line: one module per command family (``up``, ``serve``, ``consume``,
``models``, ``transfer``); benchmarks and the demo register theirs from ``edge.bench`` and
``edge.simulator``."""

from edge.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
