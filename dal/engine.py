"""One function from URL to engine, with the connection settings each engine needs.

SQLite: WAL, foreign keys on, a busy timeout, synchronous=NORMAL, and write transactions that
start with ``BEGIN IMMEDIATE`` (SQLAlchemy's documented recipe: the driver's own transaction
handling is switched off and the ``begin`` event emits BEGIN itself). Without it, concurrent
read-modify-write transactions lose updates or fail with "database is locked"
(docs/performance.md, "Correctness facts"). A connection given the execution option
``sqlite_begin="DEFERRED"`` starts a read transaction instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from dal.compiled import DriverStatement
from dal.types import register_sqlite_decimal_functions

BUSY_TIMEOUT_MS = 30_000
# How many pages the WAL may grow to before an automatic checkpoint, and the size the WAL file
# is truncated back to after one: keeps the WAL small while the writers run.
WAL_AUTOCHECKPOINT_PAGES = 1000
JOURNAL_SIZE_LIMIT_BYTES = 64 * 1024 * 1024


def is_sqlite(url: str | URL) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def _sqlite_file(url: URL) -> Path | None:
    if not url.database or url.database == ":memory:" or url.database.startswith("file:"):
        return None
    return Path(url.database)


def install_sqlite_hooks(sync_engine: Engine) -> None:
    """Pragmas on every new connection and BEGIN IMMEDIATE on every transaction."""

    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take transaction control away from the driver; the "begin" hook below issues BEGIN.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
            cursor.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT_BYTES}")
        finally:
            cursor.close()
        if hasattr(dbapi_conn, "create_aggregate"):  # stdlib sqlite3 (the DAL's own engine)
            register_sqlite_decimal_functions(dbapi_conn)

    @event.listens_for(sync_engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "IMMEDIATE")
        _BEGIN[mode].execute(conn, {})


# Every write transaction starts with one of these: on the driver (dal/compiled.py).
_BEGIN = {
    mode: DriverStatement(sa.text(f"BEGIN {mode}"), dialect="sqlite")
    for mode in ("IMMEDIATE", "DEFERRED")
}


def create_engine(url: str | URL, **kwargs: Any) -> AsyncEngine:
    """The async engine for ``url`` (sqlite+aiosqlite:// or postgresql+asyncpg://)."""
    url = make_url(url)
    backend = url.get_backend_name()
    if backend == "sqlite":
        url = url.set(drivername="sqlite+aiosqlite")
        path = _sqlite_file(url)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, **kwargs)
        install_sqlite_hooks(engine.sync_engine)
        return engine
    if backend == "postgresql":
        url = url.set(drivername="postgresql+asyncpg")
        # No pre-ping: it costs a round trip per checkout; recycling covers idle disconnects.
        options = {"pool_size": 10, "max_overflow": 10, "pool_recycle": 1800}
        options.update(kwargs)
        return create_async_engine(url, **options)
    raise ValueError(f"unsupported database {backend!r}; use SQLite or PostgreSQL")


def create_sync_sqlite_engine(url: str | URL, **kwargs: Any) -> Engine:
    """A synchronous (stdlib sqlite3) engine on the same file with the same hooks.

    The DAL runs SQLite transactions through this engine on the event loop's thread or on
    its writer thread, never through the aiosqlite adapter's several thread hops per
    statement (docs/architecture.md, "How a transaction executes").
    """
    url = make_url(url).set(drivername="sqlite+pysqlite")
    path = _sqlite_file(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url, **kwargs)
    install_sqlite_hooks(engine)
    return engine
