"""JSONL diagnostics: one JSON object per line for every request, training, calibration
and error (fields in ``docs/LOGGING.md``).

Written to ``BDI_GUI_LOG_DIR`` or ``<BDI_MODELS_DIR>/logs``, file ``api.jsonl``, rotated
by size (``BDI_LOG_MAX_MB``, ``BDI_LOG_BACKUPS``). Each app gets its own logger, so two
apps in one process (tests) never share a file.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import time
from contextvars import ContextVar
from datetime import UTC, datetime
from logging.handlers import RotatingFileHandler
from pathlib import Path
from typing import Any

import orjson

from configs.settings import Settings

LOG_FILE = "api.jsonl"

# the request being served, so that events logged deep in a handler carry its id
request_id_var: ContextVar[str | None] = ContextVar("bdi_request_id", default=None)

_instances = itertools.count()


def log_dir(settings: Settings) -> Path:
    return settings.gui_log_dir or settings.models_dir / "logs"


class _JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = getattr(record, "fields", {})
        return orjson.dumps(fields, default=str, option=orjson.OPT_SERIALIZE_NUMPY).decode()


class Diagnostics:
    """``log(event, **fields)`` appends one line; never raises into the request."""

    def __init__(self, settings: Settings) -> None:
        self.path = log_dir(settings) / LOG_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._logger = logging.getLogger(f"bdi.edge.diagnostics.{next(_instances)}")
        self._logger.propagate = False
        self._logger.setLevel(logging.INFO)
        handler = RotatingFileHandler(
            self.path,
            maxBytes=int(settings.log_max_mb * 1024 * 1024),
            backupCount=settings.log_backups,
            encoding="utf-8",
        )
        handler.setFormatter(_JsonLines())
        self._handler = handler
        self._logger.addHandler(handler)

    def log(self, event: str, level: str = "info", **fields: Any) -> None:
        now = time.time()
        record = {
            "ts": datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds"),
            "level": level,
            "event": event,
            "request_id": fields.pop("request_id", None) or request_id_var.get(),
            "pid": os.getpid(),
            **{k: v for k, v in fields.items() if v is not None},
        }
        # a full disk must not turn an answer into a 500
        with contextlib.suppress(Exception):
            level_no = logging.ERROR if level == "error" else logging.INFO
            self._logger.log(level_no, event, extra={"fields": record})

    def close(self) -> None:
        self._logger.removeHandler(self._handler)
        self._handler.close()
