"""``bdi trace``: store every verdict, part record and the crops worth keeping (the trace
store, docs/TRACE.md) until SIGTERM / Ctrl-C.

Exit status: 0 after a clean stop; 2 for a start-up error (``bdi: error: ...``: missing
``BDI_KAFKA_BOOTSTRAP``, an unreachable broker or database, a bad ``BDI_TRACE_DB_URL``);
1 when the database fails while running (nothing past the failed batch is committed, so a
restart stores it again). Log lines are JSON objects on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

from aiokafka import AIOKafkaConsumer

from configs.settings import load_settings
from consumers.logs import json_logging
from consumers.trace_feed import TraceFeed
from edge.cli.consume import client_options
from store.trace.db import db_errors

log = logging.getLogger(__name__)


def add_trace_command(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "trace",
        help="trace store: verdicts, part records and kept crops into a database",
        description="Join the BDI_TRACE_GROUP consumer group and store bdi.verdicts, "
        "bdi.parts and the crops of bdi.frames worth keeping in SQLite (or PostgreSQL: "
        "BDI_TRACE_DB_URL); see docs/TRACE.md.",
    )
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING (JSON lines)")
    p.add_argument(
        "--consumer-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra aiokafka consumer argument, e.g. session_timeout_ms=10000 (repeatable)",
    )
    p.set_defaults(func=cmd_trace)


def cmd_trace(args: argparse.Namespace) -> int:
    settings = load_settings()
    feed = TraceFeed(settings, client_options(args.consumer_option, AIOKafkaConsumer))
    with json_logging(args.log_level):
        try:
            asyncio.run(_serve(feed))
        except db_errors() as exc:  # logged while the JSON handler is still in place
            log.error("stopping: the trace database failed", extra={"error": str(exc)})
            return 1
    return 0


async def _serve(feed: TraceFeed) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, feed.request_stop)
    await feed.run()
