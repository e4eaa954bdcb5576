"""The trace database's tables, created and migrated at start (table ``schema_version``).

Times are integers, milliseconds since the epoch (``*_ms``), so that both dialects sort and
compare them alike; the records' own ISO 8601 texts stay in their ``json``. A migration is
appended to :data:`MIGRATIONS`, never edited once released.
"""

from __future__ import annotations

import logging

from store.trace.db import Database, TraceDbError

log = logging.getLogger(__name__)

V1 = """
CREATE TABLE IF NOT EXISTS verdicts (
    frame_id TEXT PRIMARY KEY,
    part_id TEXT,
    recipe_id TEXT,
    role_id TEXT,
    roi_id TEXT,
    verdict TEXT NOT NULL,
    score DOUBLE PRECISION,
    threshold DOUBLE PRECISION,
    model_version TEXT,
    calibration_version TEXT,
    produced_ms BIGINT NOT NULL,
    source_topic TEXT,
    source_partition INTEGER,
    source_offset BIGINT,
    image_sha256 TEXT,
    received_ms BIGINT NOT NULL,
    json TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS verdicts_time ON verdicts (produced_ms, frame_id);
CREATE INDEX IF NOT EXISTS verdicts_recipe ON verdicts (recipe_id, produced_ms, frame_id);
CREATE INDEX IF NOT EXISTS verdicts_roi
    ON verdicts (recipe_id, role_id, roi_id, produced_ms, frame_id);
CREATE INDEX IF NOT EXISTS verdicts_verdict ON verdicts (verdict, produced_ms, frame_id);
CREATE INDEX IF NOT EXISTS verdicts_part ON verdicts (part_id);

CREATE TABLE IF NOT EXISTS parts (
    part_id TEXT PRIMARY KEY,
    recipe_id TEXT,
    verdict TEXT NOT NULL,
    plan_version TEXT,
    first_frame_at TEXT,
    last_frame_at TEXT,
    decided_ms BIGINT NOT NULL,
    reason TEXT,
    missing TEXT NOT NULL,
    unexpected TEXT NOT NULL,
    received_ms BIGINT NOT NULL,
    json TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS parts_time ON parts (decided_ms, part_id);
CREATE INDEX IF NOT EXISTS parts_recipe ON parts (recipe_id, decided_ms, part_id);

CREATE TABLE IF NOT EXISTS part_frames (
    part_id TEXT NOT NULL,
    frame_id TEXT NOT NULL,
    role_id TEXT,
    roi_id TEXT,
    verdict TEXT,
    score DOUBLE PRECISION,
    threshold DOUBLE PRECISION,
    model_version TEXT,
    PRIMARY KEY (part_id, frame_id)
);
CREATE INDEX IF NOT EXISTS part_frames_frame ON part_frames (frame_id);

CREATE TABLE IF NOT EXISTS late_frames (
    part_id TEXT NOT NULL,
    frame_id TEXT NOT NULL,
    role_id TEXT,
    roi_id TEXT,
    verdict TEXT,
    received_ms BIGINT NOT NULL,
    json TEXT NOT NULL,
    PRIMARY KEY (part_id, frame_id)
);

CREATE TABLE IF NOT EXISTS frame_images (
    frame_id TEXT PRIMARY KEY,
    sha256 TEXT NOT NULL,
    size BIGINT NOT NULL,
    part_id TEXT,
    recipe_id TEXT,
    role_id TEXT,
    roi_id TEXT,
    source_topic TEXT NOT NULL,
    source_partition INTEGER NOT NULL,
    source_offset BIGINT NOT NULL,
    received_ms BIGINT NOT NULL,
    keep TEXT
);
CREATE INDEX IF NOT EXISTS frame_images_sha ON frame_images (sha256);
CREATE INDEX IF NOT EXISTS frame_images_part ON frame_images (part_id);
CREATE INDEX IF NOT EXISTS frame_images_keep ON frame_images (keep);

CREATE TABLE IF NOT EXISTS crops (
    sha256 TEXT PRIMARY KEY,
    path TEXT NOT NULL,
    size BIGINT NOT NULL,
    kind TEXT NOT NULL,
    kept_until_ms BIGINT,
    created_ms BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS crops_kind ON crops (kind, created_ms);
"""

# an engineer's review of a frame verdict (docs/REVIEW.md): written by the REST API
V2 = """
CREATE TABLE IF NOT EXISTS reviews (
    review_id TEXT PRIMARY KEY,
    frame_id TEXT NOT NULL,
    part_id TEXT,
    recipe_id TEXT,
    role_id TEXT,
    roi_id TEXT,
    verdict TEXT NOT NULL,
    decision TEXT NOT NULL,
    reviewer TEXT NOT NULL,
    reason TEXT NOT NULL,
    reviewed_ms BIGINT NOT NULL,
    dataset_label TEXT,
    dataset_item TEXT,
    model_version TEXT,
    new_model_version TEXT,
    json TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS reviews_frame ON reviews (frame_id, reviewed_ms);
CREATE INDEX IF NOT EXISTS reviews_time ON reviews (reviewed_ms, review_id);
"""

# who did what over the REST API (docs/AUTH.md): written by the API for every
# state-changing request; ``user_name`` because ``user`` is a reserved word in PostgreSQL
V3 = """
CREATE TABLE IF NOT EXISTS audit (
    audit_id TEXT PRIMARY KEY,
    at_ms BIGINT NOT NULL,
    user_name TEXT,
    role TEXT,
    action TEXT NOT NULL,
    target TEXT,
    outcome INTEGER NOT NULL,
    request_id TEXT,
    json TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_time ON audit (at_ms, audit_id);
CREATE INDEX IF NOT EXISTS audit_user ON audit (user_name, at_ms);
CREATE INDEX IF NOT EXISTS audit_action ON audit (action, at_ms);
"""

MIGRATIONS: tuple[str, ...] = (V1, V2, V3)
SCHEMA_VERSION = len(MIGRATIONS)


def migrate(db: Database) -> int:
    """Bring the schema to :data:`SCHEMA_VERSION`; returns the version found before. Two
    processes starting at once are serialised by the transaction (SQLite's write lock, a
    PostgreSQL advisory lock)."""
    with db.transaction() as tx:
        if db.dialect == "postgresql":
            tx.execute("SELECT pg_advisory_xact_lock(4242021)")
        tx.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        rows = tx.query("SELECT version FROM schema_version")
        found = int(rows[0][0]) if rows else 0
        if found > SCHEMA_VERSION:
            raise TraceDbError(
                f"the trace database {db.shown} has schema version {found}, newer than this "
                f"program's {SCHEMA_VERSION}: upgrade bdi"
            )
        for version in range(found, SCHEMA_VERSION):
            for statement in MIGRATIONS[version].split(";"):
                if statement.strip():
                    tx.execute(statement)
        if not rows:
            tx.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
        elif found != SCHEMA_VERSION:
            tx.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))
    if found != SCHEMA_VERSION:
        log.info("trace database schema", extra={"from": found, "to": SCHEMA_VERSION})
    return found
