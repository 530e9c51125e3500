"""Shared fixtures: a freshly migrated database per test, on SQLite and on PostgreSQL.

PostgreSQL tests run when TRADEBOOK_TEST_POSTGRES_URL is set (CI always sets it and fails if
the server is unreachable). Each test gets its own database, cloned from a template migrated
once per session, and dropped afterwards; SQLite tests get a copy of a migrated file.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from dal import migrations
from dal.engine import create_engine

PG_ENV = "TRADEBOOK_TEST_POSTGRES_URL"
ENGINES = ["sqlite", "postgresql"]
_counter = itertools.count()


def run_coro(coro: Any) -> Any:
    """Run a coroutine to completion from sync code, even under a running event loop."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def pg_base_url() -> str | None:
    url = os.environ.get(PG_ENV)
    if not url:
        return None
    return make_url(url).set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)


def _pg_url() -> str:
    """pg_base_url() where PostgreSQL is required (only reached when it is configured)."""
    url = pg_base_url()
    assert url is not None, f"{PG_ENV} is not set"
    return url


async def _pg_admin(sql: list[str]) -> None:
    import asyncpg

    url = make_url(_pg_url())
    conn = await asyncpg.connect(
        host=url.host or "127.0.0.1",
        port=url.port or 5432,
        user=url.username,
        password=url.password,
        database=url.database or "postgres",
    )
    try:
        for statement in sql:
            await conn.execute(statement)
    finally:
        await conn.close()


class PgDatabases:
    """Creates uniquely named databases and drops them again."""

    def __init__(self) -> None:
        self.prefix = f"tbtest_{os.getpid()}"
        self.template: str | None = None

    def url_for(self, name: str) -> str:
        return make_url(_pg_url()).set(database=name).render_as_string(hide_password=False)

    def create(self, template: str | None = None) -> str:
        name = f"{self.prefix}_{next(_counter)}"
        clause = f" TEMPLATE {template}" if template else ""
        run_coro(_pg_admin([f"CREATE DATABASE {name}{clause}"]))
        return name

    def drop(self, name: str) -> None:
        run_coro(_pg_admin([f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"]))


@pytest.fixture(scope="session")
def pg_databases() -> Iterator[PgDatabases | None]:
    if pg_base_url() is None:
        yield None
        return
    dbs = PgDatabases()
    template = dbs.create()
    migrations.upgrade(dbs.url_for(template), "head")
    dbs.template = template
    yield dbs
    dbs.drop(template)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.db"
    migrations.upgrade(f"sqlite+aiosqlite:///{path}", "head")
    return path


@pytest.fixture(params=ENGINES)
def engine_name(request: pytest.FixtureRequest) -> str:
    if request.param == "postgresql" and pg_base_url() is None:
        pytest.skip(f"{PG_ENV} is not set")
    return request.param


@pytest.fixture
def empty_db_url(
    engine_name: str, tmp_path: Path, pg_databases: PgDatabases | None
) -> Iterator[str]:
    """A URL to an empty database (no tables) on the parametrized engine."""
    if engine_name == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"
        return
    assert pg_databases is not None
    name = pg_databases.create()
    yield pg_databases.url_for(name)
    pg_databases.drop(name)


@pytest.fixture
def db_url(
    engine_name: str,
    tmp_path: Path,
    sqlite_template: Path,
    pg_databases: PgDatabases | None,
) -> Iterator[str]:
    """A URL to a freshly migrated database (schema at head, brokers seeded)."""
    if engine_name == "sqlite":
        path = tmp_path / "tradebook.db"
        shutil.copyfile(sqlite_template, path)
        yield f"sqlite+aiosqlite:///{path}"
        return
    assert pg_databases is not None and pg_databases.template is not None
    name = pg_databases.create(template=pg_databases.template)
    yield pg_databases.url_for(name)
    pg_databases.drop(name)


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    eng = create_engine(db_url)
    yield eng
    await eng.dispose()


@contextlib.contextmanager
def captured_statements(db: Any) -> Iterator[list[tuple[str, Any]]]:
    """The (statement, parameters) the DAL sends while the block runs, on every engine it
    sends them through (PostgreSQL reads have a pool of their own: dal.scope.read_only)."""
    runner = db._get_runner()
    engines = [runner.engine, *([runner.reader] if hasattr(runner, "reader") else [])]
    sync_engines = [e if isinstance(e, sa.Engine) else e.sync_engine for e in engines]
    seen: list[tuple[str, Any]] = []

    def listener(
        conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool
    ) -> None:
        seen.append((statement, parameters))

    for engine in sync_engines:
        sa.event.listen(engine, "before_cursor_execute", listener)
    try:
        yield seen
    finally:
        for engine in sync_engines:
            sa.event.remove(engine, "before_cursor_execute", listener)


async def count_rows(engine: AsyncEngine, table: sa.Table) -> int:
    async with engine.connect() as conn:
        return (await conn.execute(sa.select(sa.func.count()).select_from(table))).scalar_one()


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Any]:
    """The DAL's Database on a freshly migrated database (SQLite file or PostgreSQL)."""
    from dal.database import Database

    database = Database(db_url)
    yield database
    await database.dispose()


async def table_counts(engine: AsyncEngine) -> dict[str, int]:
    """Row counts of every table: "nothing was written" means these did not change."""
    from dal.schema import metadata

    counts = {}
    async with engine.connect() as conn:
        await conn.execution_options(sqlite_begin="DEFERRED")  # a reader: never waits on writers
        for table in metadata.sorted_tables:
            counts[table.name] = (
                await conn.execute(sa.select(sa.func.count()).select_from(table))
            ).scalar_one()
    return counts
