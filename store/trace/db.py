"""The trace database: one small layer over SQLite (stdlib ``sqlite3``, WAL) and PostgreSQL
(psycopg 3), no ORM. SQL is written once with ``?`` placeholders; the PostgreSQL side
turns them into ``%s``. Both dialects understand everything else used here
(``ON CONFLICT``, row-value comparisons, ``BIGINT``, ``DOUBLE PRECISION``).

Connections run in autocommit mode; :meth:`Database.transaction` opens an explicit one.
A connection is used by one thread at a time (the caller's job).
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

from store.atomic import ensure_dir
from store.errors import StoreError

Dialect = Literal["sqlite", "postgresql"]
Row = tuple[Any, ...]
BUSY_TIMEOUT_MS = 30_000  # a reader (the REST API) or a second writer holds the lock
CONNECT_TIMEOUT_S = 10


class TraceDbError(StoreError):
    """The trace database cannot be opened, or refused a statement."""


class _Cursor(Protocol):
    rowcount: int

    def execute(self, sql: str, params: Sequence[Any] = ...) -> Any: ...
    def executemany(self, sql: str, params: Sequence[Sequence[Any]]) -> Any: ...
    def fetchall(self) -> list[Any]: ...
    def fetchone(self) -> Any: ...


@dataclass(frozen=True)
class Target:
    """Where the database is: a SQLite file, or a PostgreSQL URL (``shown`` hides its
    password, for messages)."""

    dialect: Dialect
    location: str
    shown: str


def target(url: str | None, models_dir: Path) -> Target:
    """``BDI_TRACE_DB_URL`` read: unset is SQLite at ``<models_dir>/trace/trace.db``;
    ``sqlite:///path`` another SQLite file; ``postgresql://`` (or ``postgres://``) a
    PostgreSQL database."""
    if not url:
        default = str(models_dir / "trace" / "trace.db")
        return Target("sqlite", default, default)
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in ("postgresql", "postgres"):
        shown = url
        if parts.password:
            shown = url.replace(f":{parts.password}@", ":***@", 1)
        return Target("postgresql", url, shown)
    if scheme == "sqlite" and url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite://")
        return Target("sqlite", path, path)
    raise TraceDbError(
        "BDI_TRACE_DB_URL must be postgresql://user:password@host:port/database or "
        f"sqlite:///path/to/trace.db, got a URL with scheme {scheme or '(none)'!r}"
    )


class Database:
    """An open connection of either dialect."""

    def __init__(self, dialect: Dialect, conn: Any, shown: str) -> None:
        self.dialect = dialect
        self.shown = shown
        self._conn = conn

    @classmethod
    def open(cls, where: Target) -> Database:
        if where.dialect == "sqlite":
            return cls("sqlite", _open_sqlite(Path(where.location)), where.shown)
        return cls("postgresql", _open_postgres(where), where.shown)

    def sql(self, text: str) -> str:
        return text if self.dialect == "sqlite" else text.replace("?", "%s")

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Tx]:
        """One transaction: committed when the block ends, rolled back if it raises."""
        if self.dialect == "sqlite":
            cur = self._conn.cursor()
            cur.execute("BEGIN IMMEDIATE")  # the write lock now, not at the first write
            try:
                yield Tx(self, cur)
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    cur.execute("ROLLBACK")
                raise
            cur.execute("COMMIT")
            return
        with self._conn.transaction(), self._conn.cursor() as pg_cur:
            yield Tx(self, pg_cur)

    def read(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """The rows of one query, outside any explicit transaction."""
        if self.dialect == "sqlite":
            return [tuple(r) for r in self._conn.execute(sql, params).fetchall()]
        with self._conn.cursor() as cur:
            cur.execute(self.sql(sql), params)
            return [tuple(r) for r in cur.fetchall()]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._conn.close()


class Tx:
    """Statements inside one transaction."""

    def __init__(self, db: Database, cur: _Cursor) -> None:
        self.db = db
        self._cur = cur

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        self._cur.execute(self.db.sql(sql), params)
        return self._cur.rowcount

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            self._cur.executemany(self.db.sql(sql), rows)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        self._cur.execute(self.db.sql(sql), params)
        return [tuple(r) for r in self._cur.fetchall()]

    def query_in(self, sql: str, values: Sequence[Any], chunk: int = 500) -> list[Row]:
        """``sql`` holds one ``IN ({})``; run it over ``values`` in chunks."""
        out: list[Row] = []
        for i in range(0, len(values), chunk):
            part = list(values[i : i + chunk])
            out += self.query(sql.format(",".join("?" * len(part))), part)
        return out


def _open_sqlite(path: Path) -> sqlite3.Connection:
    try:
        ensure_dir(path.parent)
        conn = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000
        )
        conn.execute("PRAGMA journal_mode=WAL")
        # FULL: a committed transaction survives a power cut too; the Kafka offsets
        # committed after it must never be ahead of the rows
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    except (sqlite3.Error, OSError) as exc:
        raise TraceDbError(f"cannot open the trace database {path}: {exc}") from None
    return conn


def _open_postgres(where: Target) -> Any:
    try:
        import psycopg
    except ImportError:  # pragma: no cover - a dependency of the package
        raise TraceDbError("PostgreSQL needs the psycopg package (pip install psycopg)") from None
    try:
        return psycopg.connect(where.location, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
    except psycopg.Error as exc:
        why = re.sub(r"\s+", " ", str(exc)).strip()
        if "password" in where.location and where.shown != where.location:
            secret = urlsplit(where.location).password or ""
            why = why.replace(secret, "***") if secret else why
        raise TraceDbError(f"cannot connect to the trace database {where.shown}: {why}") from None


def db_errors() -> tuple[type[BaseException], ...]:
    """The exception types a statement of either dialect raises."""
    kinds: list[type[BaseException]] = [sqlite3.Error]
    with contextlib.suppress(ImportError):
        import psycopg

        kinds.append(psycopg.Error)
    return tuple(kinds)
