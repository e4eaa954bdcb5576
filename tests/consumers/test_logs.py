"""Structured logs: one JSON object per line, extra fields (frame_id) included."""

from __future__ import annotations

import io
import logging

import orjson

from consumers.logs import JsonFormatter, configure_json_logging


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
