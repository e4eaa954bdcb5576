"""The trace store (docs/TRACE.md): every frame verdict and part record, and the crops worth
keeping, in SQLite or PostgreSQL and a folder of content-addressed files. No Kafka, no
HTTP here: ``consumers/trace_feed.py`` feeds it, the REST API reads it."""

from store.trace.db import TraceDbError
from store.trace.ingest import Ingested
from store.trace.queries import Cursor, Page, VerdictFilter
from store.trace.records import Batch, FrameImage
from store.trace.trace import Maintained, TraceStore

__all__ = [
    "Batch",
    "Cursor",
    "FrameImage",
    "Ingested",
    "Maintained",
    "Page",
    "TraceDbError",
    "TraceStore",
    "VerdictFilter",
]
