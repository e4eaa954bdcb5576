"""Structured logs: one JSON object per line through the stdlib ``logging``.

Library code only calls ``logging.getLogger(__name__)`` and passes fields through ``extra``
(``frame_id``, ``partition``, ...); the ``bdi consume`` command installs the formatter, so
embedding applications keep control of their own logging.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import IO, Any

import orjson

# attributes every LogRecord has; anything else on a record came from ``extra``
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "msg", **extra}`` on one line; tracebacks under ``exc``."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        # default=str: a stray non-JSON value must never lose the log line
        return orjson.dumps(entry, default=str).decode()


def configure_json_logging(level: str | int = "INFO", stream: IO[str] | None = None) -> None:
    """Route the root logger (ours and aiokafka's) to ``stream`` as JSON lines. Calling it
    again replaces the handler it installed before; other handlers are left alone."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        if isinstance(old.formatter, JsonFormatter):
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    # aiokafka logs every retried request at INFO/WARNING; keep its noise at WARNING
    logging.getLogger("aiokafka").setLevel(max(root.level, logging.WARNING))
