"""Structured logs: one JSON object per line, extra fields (frame_id) included."""

from __future__ import annotations

import io
import logging
import subprocess
import sys

import orjson

from consumers.logs import JsonFormatter, configure_json_logging
from tests.helpers.paths import REPO


def test_one_json_object_per_line_with_extra_fields():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("test.consumers.logs")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("frame dead-lettered", extra={"frame_id": "f-1", "offset": 7})
        try:
            raise ValueError("bad\nthing")
        except ValueError:
            logger.exception("failed", extra={"frame_id": "f-2", "obj": object()})
    finally:
        logger.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (orjson.loads(line) for line in lines)
    assert first["msg"] == "frame dead-lettered" and first["level"] == "WARNING"
    assert (first["frame_id"], first["offset"]) == ("f-1", 7)
    assert first["logger"] == "test.consumers.logs" and first["ts"].endswith("+00:00")
    assert second["frame_id"] == "f-2" and "ValueError: bad" in second["exc"]
    assert second["obj"].startswith("<object")


def test_configure_replaces_only_its_own_handler():
    root = logging.getLogger()
    before = list(root.handlers)
    level = root.level
    try:
        configure_json_logging("INFO", io.StringIO())
        configure_json_logging("DEBUG", io.StringIO())
        ours = [h for h in root.handlers if isinstance(h.formatter, JsonFormatter)]
        assert len(ours) == 1
        assert all(h in root.handlers for h in before)
    finally:
        for h in list(root.handlers):
            if h not in before:
                root.removeHandler(h)
        root.setLevel(level)


CAPTURED = r"""
import logging, os, sys
import cv2, numpy as np
from consumers.logs import configure_json_logging, native_stderr_as_json

with native_stderr_as_json() as stderr:
    configure_json_logging("INFO", stderr)
    logging.getLogger("test").info("python logging", extra={"frame_id": "f-1"})
    png = cv2.imencode(".png", np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8))[1]
    assert cv2.imdecode(np.frombuffer(png.tobytes()[:-20], np.uint8), cv2.IMREAD_COLOR) is None
    os.write(2, b"raw \xff bytes\r\n\n")
    print("print to sys.stderr", file=sys.stderr)
    os.write(2, b"no newline at the end")
logging.getLogger("test").info("after")
print("bdi: error: plain again", file=sys.stderr)
"""


def test_native_stderr_becomes_json_records(tmp_path):
    """A real native message (libpng through OpenCV, on file descriptor 2), raw bytes and
    ``sys.stderr`` each become one JSON record of the ``native`` logger; Python's own
    logging stays JSON; once closed, stderr is the terminal's again."""
    done = subprocess.run(
        [sys.executable, "-c", CAPTURED], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    *lines, last = done.stderr.splitlines()
    assert last == "bdi: error: plain again"
    records = [orjson.loads(line) for line in lines]  # each line parses, or this fails
    native = [r["stderr"] for r in records if r["logger"] == "native"]
    assert native == [
        "libpng error: PNG input buffer is incomplete",
        "raw \ufffd bytes",
        "print to sys.stderr",
        "no newline at the end",
    ]
    assert {r["level"] for r in records if r["logger"] == "native"} == {"WARNING"}
    ours = [r for r in records if r["logger"] == "test"]
    assert [(r["msg"], r.get("frame_id")) for r in ours] == [
        ("python logging", "f-1"),
        ("after", None),
    ]


def test_json_logging_leaves_the_root_logger_as_it_found_it():
    """A command run inside another process (a test, a notebook) leaves no handler behind:
    one left on a stream closed later turned every later record into a logging error."""
    from consumers.logs import json_logging

    root, client = logging.getLogger(), logging.getLogger("aiokafka")
    before = (list(root.handlers), root.level, client.level)
    with json_logging("DEBUG"):
        assert any(isinstance(h.formatter, JsonFormatter) for h in root.handlers)
        assert root.level == logging.DEBUG
    assert (list(root.handlers), root.level, client.level) == before
