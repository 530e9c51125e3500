"""Shared pieces of the benchmarks: databases, users, timing, the consistency check."""

from __future__ import annotations

import asyncio
import logging
import os
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from dal import migrations
from dal import schema as t
from dal.database import Database
from dal.scope import Actor, Tx

PG_ENV = "TRADEBOOK_BENCH_POSTGRES_URL"
PG_DEFAULT = "postgresql://postgres@127.0.0.1:5432/postgres"


class ProductionLogging:
    """tradebook's logging configuration (``tradebook.logs.configure_logging``: INFO, the
    human or the JSON format), written to a file instead of stderr so the bench's own output
    stays readable: every line is formatted and written as in production."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = path.open("a", encoding="utf-8")
        self.fmt = ""
        self.use("human")

    def use(self, fmt: str) -> None:
        """Switch to ``fmt`` ("human" or "json")."""
        if fmt == self.fmt:
            return
        from tradebook.logs import configure_logging

        configure_logging("INFO", fmt)
        handler = logging.getLogger().handlers[0]
        assert isinstance(handler, logging.StreamHandler)
        handler.setStream(self._file)
        self.fmt = fmt

    def lines(self) -> int:
        self._file.flush()
        with self.path.open(encoding="utf-8") as f:
            return sum(1 for _ in f)

    def close(self) -> None:
        logging.getLogger().handlers.clear()
        self._file.close()


class CheckFailed(AssertionError):
    """A run's stored positions or order fills disagree with its trades: the bench fails."""


def pg_base_url() -> str:
    return os.environ.get(PG_ENV, PG_DEFAULT)


def pg_connect_args(url: str) -> dict[str, Any]:
    u = make_url(url)
    return {
        "host": u.host or "127.0.0.1",
        "port": u.port or 5432,
        "user": u.username,
        "password": u.password,
        "database": u.database or "postgres",
    }


async def _pg_admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(**pg_connect_args(pg_base_url()))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@dataclass
class BenchDb:
    engine: str  # "sqlite" | "postgresql"
    url: str  # the DAL's URL
    raw: dict[str, Any]  # sqlite: {"path": ...}; postgresql: asyncpg connect kwargs


@asynccontextmanager
async def fresh_database(engine: str, label: str) -> AsyncIterator[BenchDb]:
    """A freshly migrated database (a SQLite file in a temp dir, or a new PostgreSQL
    database that is dropped afterwards)."""
    if engine == "sqlite":
        with tempfile.TemporaryDirectory(prefix=f"tbbench-{label}-") as tmp:
            path = Path(tmp) / "bench.db"
            url = f"sqlite+aiosqlite:///{path}"
            await asyncio.to_thread(migrations.upgrade, url, "head")
            yield BenchDb(engine, url, {"path": str(path)})
        return
    name = f"tbbench_{label}_{os.getpid()}"
    await _pg_admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    await _pg_admin(f"CREATE DATABASE {name}")
    try:
        url = (
            make_url(pg_base_url())
            .set(drivername="postgresql+asyncpg", database=name)
            .render_as_string(hide_password=False)
        )
        await asyncio.to_thread(migrations.upgrade, url, "head")
        yield BenchDb(engine, url, pg_connect_args(url))
    finally:
        await _pg_admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


async def make_users(db: Database, telegram_ids: list[int]) -> list[Actor]:
    actors = []
    async with db.session(Actor.system(), admin=True) as s:
        for tid in telegram_ids:
            await s.users.register(tid, f"bench{tid}", chat_id=tid)
            row = await s.users.approve(tid)
            actors.append(Actor.user(row.id))
    return actors


async def make_instrument(db: Database, symbol: str) -> int:
    async with db.session(Actor.system(), admin=True) as s:
        row = await s.instruments.ensure(
            {"symbol": symbol, "exchange": "BENCH", "asset_type": "CRYPTO", "currency": "USDT"}
        )
        return row.id


async def make_portfolio(db: Database, actor: Actor, name: str) -> int:
    async with db.session(actor) as s:
        account = (await s.accounts.list())[0]
        return (await s.portfolios.create({"name": name, "account_id": account.id})).id


def _check_portfolio(tx: Tx, portfolio_id: int, expected_trades: int | None) -> list[str]:
    from dal.positions import verify_portfolio

    problems = [str(d) for d in verify_portfolio(tx.conn, portfolio_id)]
    rows = tx.conn.execute(
        sa.select(t.trades.c.order_id, t.trades.c.quantity).where(
            t.trades.c.portfolio_id == portfolio_id
        )
    ).all()
    if expected_trades is not None and len(rows) != expected_trades:
        problems.append(
            f"portfolio #{portfolio_id}: {len(rows)} trades, expected {expected_trades}"
        )
    filled: dict[int, Decimal] = {}
    for order_id, qty in rows:
        if order_id is not None:
            filled[order_id] = filled.get(order_id, Decimal(0)) + qty
    for order in tx.conn.execute(
        sa.select(t.orders.c.id, t.orders.c.filled_quantity).where(
            t.orders.c.portfolio_id == portfolio_id
        )
    ):
        if order.filled_quantity != filled.get(order.id, Decimal(0)):
            problems.append(
                f"order #{order.id}: filled {order.filled_quantity}, trades say "
                f"{filled.get(order.id, Decimal(0))} (lost update)"
            )
    return problems


async def check_portfolios(db: Database, expected: Mapping[int, int | None]) -> None:
    """Positions (exactly, via verify) and order fills against the trades; trade counts."""
    async with db.session(Actor.system(), admin=True, readonly=True) as s:
        problems: list[str] = []
        for pid, count in expected.items():
            problems += await s.run(_check_portfolio, pid, count)
    if problems:
        raise CheckFailed("; ".join(problems[:10]))


async def timed(fn: Callable[[], Awaitable[Any]]) -> float:
    start = time.perf_counter()
    await fn()
    return time.perf_counter() - start


def median(values: list[float]) -> float:
    return statistics.median(values)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]
