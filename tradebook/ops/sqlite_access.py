"""Direct SQLite access for operations: read-only engines and plain sqlite3 connections."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import quote

import sqlalchemy as sa
from sqlalchemy import event

from dal.engine import BUSY_TIMEOUT_MS
from dal.types import register_sqlite_decimal_functions
from tradebook.ops import OpsError


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL (None for PostgreSQL or an in-memory database)."""
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    if not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database)


def connect_readonly(path: Path) -> sqlite3.Connection:
    """A stdlib connection that cannot write to ``path`` (mode=ro), in autocommit mode."""
    if not path.is_file():
        raise OpsError(f"no SQLite database at {path}")
    conn = sqlite3.connect(
        f"file:{quote(str(path.resolve()))}?mode=ro",
        uri=True,
        isolation_level=None,
        check_same_thread=False,
    )
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    return conn


def readonly_engine(path: Path) -> sa.Engine:
    """A SQLAlchemy engine on ``path`` that can only read; every transaction is one snapshot
    (``BEGIN DEFERRED``), so a multi-table read is consistent while other processes write."""

    def connect() -> sqlite3.Connection:
        conn = connect_readonly(path)
        register_sqlite_decimal_functions(conn)  # the DAL's exact sums (balances)
        return conn

    engine = sa.create_engine("sqlite+pysqlite://", creator=connect, poolclass=sa.pool.NullPool)

    @event.listens_for(engine, "begin")
    def _begin(conn: sa.Connection) -> None:
        conn.exec_driver_sql("BEGIN DEFERRED")

    return engine


def integrity_problems(conn: sqlite3.Connection | sa.Connection) -> list[str]:
    """``PRAGMA integrity_check`` and ``foreign_key_check`` findings (empty = ok)."""

    def run(sql: str) -> list[Any]:
        if isinstance(conn, sa.Connection):
            return list(conn.exec_driver_sql(sql).all())
        return conn.execute(sql).fetchall()

    rows = [r[0] for r in run("PRAGMA integrity_check")]
    problems = [] if rows == ["ok"] else [f"integrity_check: {r}" for r in rows]
    for table, rowid, parent, _fk in run("PRAGMA foreign_key_check"):
        problems.append(f"foreign key: {table} rowid {rowid} points at a missing {parent} row")
    return problems
