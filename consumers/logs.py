"""Structured logs: one JSON object per line through the stdlib ``logging``.

Library code only calls ``logging.getLogger(__name__)`` and passes fields through ``extra``
(``frame_id``, ``partition``, ...); the ``bdi consume`` command installs the formatter, so
embedding applications keep control of their own logging.

Native libraries (libpng through OpenCV, CUDA, librdkafka) write to file descriptor 2
directly, past ``logging``; :func:`native_stderr_as_json` turns each such line into a
JSON record too, so that a process's stderr holds nothing else.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from collections.abc import Iterator
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


@contextlib.contextmanager
def json_logging(level: str | int = "INFO") -> Iterator[None]:
    """A command's logging for as long as it runs: native stderr wrapped
    (:func:`native_stderr_as_json`) and Python's records as JSON lines
    (:func:`configure_json_logging`). On exit the root logger's handlers and levels are
    what they were before, so a command run inside another process (a test, a notebook)
    leaves no handler behind on a stream that is closed later."""
    root, client = logging.getLogger(), logging.getLogger("aiokafka")
    saved = (list(root.handlers), root.level, client.level)
    try:
        with native_stderr_as_json() as stderr:
            configure_json_logging(level, stderr)
            yield
    finally:
        handlers, root_level, client_level = saved
        for handler in list(root.handlers):
            if handler not in handlers:
                root.removeHandler(handler)
        root.setLevel(root_level)
        client.setLevel(client_level)


NATIVE_LOGGER = "native"
MAX_NATIVE_LINE = 64 * 1024  # a longer run without a newline is logged in pieces


@contextlib.contextmanager
def native_stderr_as_json(logger: str = NATIVE_LOGGER) -> Iterator[IO[str]]:
    """While open, file descriptor 2 is a pipe: each line written to it (by native code,
    or by Python's ``sys.stderr``) becomes a JSON ``WARNING`` record of ``logger`` with the
    line under ``stderr``, written to the original stderr. Yields a stream on the original
    stderr, for the JSON handler of Python's own logging:

        with native_stderr_as_json() as stderr:
            configure_json_logging("INFO", stderr)
            ...

    On exit fd 2 is restored (so ``bdi: error: ...`` reaches the terminal as it is), the
    lines still in the pipe are logged, and root handlers writing to the yielded stream
    move to ``sys.stderr``. Where fd 2 cannot be duplicated, yields ``sys.stderr``."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:
        yield sys.stderr
        return
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)  # fd 2 is now the only write end: restoring it ends the pipe
    stream = open(saved, "w", buffering=1, encoding="utf-8", errors="backslashreplace")  # noqa: SIM115
    # its own handler, not the root's: a root handler on fd 2 would feed the pipe it reads
    native = logging.getLogger(logger)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    native.addHandler(handler)
    native.propagate, propagated = False, native.propagate
    reader = threading.Thread(target=_log_lines, args=(read_end, native), daemon=True)
    reader.start()
    try:
        yield stream
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os.dup2(saved, 2)
        reader.join(timeout=2.0)  # a child process still holding fd 2 keeps it open
        native.removeHandler(handler)
        native.propagate = propagated
        for other in logging.getLogger().handlers:
            if isinstance(other, logging.StreamHandler) and other.stream is stream:
                other.setStream(sys.stderr)
        if not reader.is_alive():
            stream.close()


def _log_lines(fd: int, logger: logging.Logger) -> None:
    with open(fd, "rb", buffering=0) as pipe:
        pending = b""
        while chunk := pipe.read(MAX_NATIVE_LINE):
            *lines, pending = (pending + chunk).split(b"\n")
            if len(pending) >= MAX_NATIVE_LINE:
                lines.append(pending)
                pending = b""
            for line in lines:
                _log_line(logger, line)
        _log_line(logger, pending)


def _log_line(logger: logging.Logger, line: bytes) -> None:
    text = line.decode("utf-8", "replace").rstrip("\r")
    if text.strip():
        logger.warning("native output on stderr", extra={"stderr": text})
