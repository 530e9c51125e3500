"""Index verification: the hot queries the DAL really issues use an index, never a full scan
of orders or trades (EXPLAIN QUERY PLAN on SQLite, EXPLAIN on PostgreSQL with sequential scans
disabled, so the plan shows whether an index *can* serve the query even on small data).

Hot queries: orders by portfolio + status and by time, trades by portfolio + time (/pnl over
any other range) and by instrument + time, the PnL summary by portfolio + period (/pnl
periods), positions by portfolio and by instrument.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from dal import schema as t
from dal.database import Database
from dal.engine import create_engine
from dal.scope import Actor
from dal.types import register_sqlite_decimal_functions
from dal.vocabulary import ORDER_STATUSES
from tests.conftest import captured_statements
from tests.factories import T0, default_portfolio, fill, make_instrument, make_user


async def _captured(db: Database, calls: Any) -> list[tuple[str, Any]]:
    """The SQL statements (and parameters) the DAL sends for ``calls(session)``."""
    with captured_statements(db) as seen:
        await calls()
    return seen


async def _plan(db_url: str, statement: str, parameters: Any) -> str:
    if make_url(db_url).get_backend_name() == "sqlite":
        path = make_url(db_url).database
        assert path is not None, db_url
        lite = sqlite3.connect(path)
        register_sqlite_decimal_functions(lite)
        try:
            rows = lite.execute(f"EXPLAIN QUERY PLAN {statement}", parameters).fetchall()
        finally:
            lite.close()
        return "\n".join(str(r[-1]) for r in rows)
    engine = create_engine(db_url)
    try:
        async with engine.connect() as conn:
            await conn.exec_driver_sql("SET enable_seqscan = off")
            result = await conn.exec_driver_sql(f"EXPLAIN {statement}", parameters)
            return "\n".join(r[0] for r in result)
    finally:
        await engine.dispose()


def _assert_indexed(plan: str, table: str, engine_name: str) -> None:
    if engine_name == "sqlite":
        scans = [line for line in plan.splitlines() if line.startswith(f"SCAN {table}")]
        assert not scans, f"full scan of {table}:\n{plan}"
        assert f"SEARCH {table} USING" in plan, f"{table} not searched by an index:\n{plan}"
    else:
        assert f"Seq Scan on {table}" not in plan, f"full scan of {table}:\n{plan}"
        assert "Index" in plan, f"{table} not read through an index:\n{plan}"


async def _setup(db: Database) -> tuple[Actor, int, int]:
    actor = await make_user(db)
    pid = await default_portfolio(db, actor)
    iid = await make_instrument(db)
    async with db.session(actor) as s:
        order = await s.orders.place(
            {"portfolio_id": pid, "instrument_id": iid, "side": "BUY", "type": "LIMIT",
             "quantity": "10", "price": "100", "client_order_id": "ix-1"}
        )  # fmt: skip
        for i in range(3):
            await s.trades.ingest_fill(
                fill(pid, iid, "BUY", "1", "100", order_id=order.id, trade_id=f"ix-{i}",
                     at=T0 + dt.timedelta(hours=i))
            )  # fmt: skip
    return actor, pid, iid


def _statements_on(seen: list[tuple[str, Any]], table: str) -> list[tuple[str, Any]]:
    return [(s, p) for s, p in seen if f"FROM {table}" in s and s.lstrip().startswith("SELECT")]


def _midnight(moment: dt.datetime) -> dt.datetime:
    return moment.replace(hour=0, minute=0, second=0, microsecond=0)


HOT = {
    # name → (table, the DAL calls that issue the query)
    "orders by portfolio + status (open orders)": (
        "orders", lambda s, pid, iid: s.orders.open_orders(pid)
    ),
    "orders by portfolio + time (all statuses)": (
        "orders",
        lambda s, pid, iid: s.orders.list(pid, status=list(ORDER_STATUSES)),
    ),
    "trades by portfolio + time (/pnl period)": (
        "trades",
        lambda s, pid, iid: s.trades.pnl(pid, T0 - dt.timedelta(days=30), T0 + dt.timedelta(1)),
    ),
    "PnL summary by portfolio + period (/pnl ytd: months and days)": (
        "pnl_summary",
        lambda s, pid, iid: s.trades.pnl(pid, _midnight(T0.replace(month=1, day=1)), _midnight(T0)),
    ),
    "PnL summary by portfolio + day (/pnl 30d)": (
        "pnl_summary",
        lambda s, pid, iid: s.trades.pnl(pid, _midnight(T0 - dt.timedelta(days=29)), _midnight(T0)),
    ),
    "PnL daily series by portfolio + day (/pnl chart)": (
        "pnl_daily",
        lambda s, pid, iid: s.trades.pnl(pid, _midnight(T0.replace(month=1, day=1)), _midnight(T0)),
    ),
    "trades by portfolio + time (list)": (
        "trades", lambda s, pid, iid: s.trades.list(pid, since=T0, limit=50)
    ),
    "positions by portfolio (snapshot)": (
        "positions", lambda s, pid, iid: s.positions.snapshot(pid)
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", list(HOT))
async def test_hot_query_uses_an_index(db: Database, db_url: str, engine_name: str, name: str):
    actor, pid, iid = await _setup(db)
    table, call = HOT[name]

    async def calls() -> None:
        async with db.session(actor) as s:
            await call(s, pid, iid)

    statements = _statements_on(await _captured(db, calls), table)
    assert statements, f"the DAL issued no query on {table} for {name}"
    for statement, parameters in statements:
        _assert_indexed(await _plan(db_url, statement, parameters), table, engine_name)


async def _finished_orders(db: Database, pid: int, iid: int, count: int) -> None:
    """A portfolio's history as it looks after a year of trading: thousands of finished
    orders around the few open ones, with the planner's statistics up to date."""
    rows = [
        {"uid": f"done-{i}", "portfolio_id": pid, "instrument_id": iid, "side": "BUY",
         "type": "LIMIT", "status": "FILLED", "quantity": Decimal(1), "price": Decimal(100),
         "filled_quantity": Decimal(1), "placed_at": T0 - dt.timedelta(minutes=i),
         "updated_at": T0, "meta_json": {}}
        for i in range(count)
    ]  # fmt: skip

    def insert(tx: Any) -> None:
        tx.conn.execute(t.orders.insert(), rows)

    async with db.session(Actor.system()) as s:
        await s.run(insert)
    async with db.session(Actor.system()) as s:
        await s.run(lambda tx: tx.conn.exec_driver_sql("ANALYZE"))


@pytest.mark.parametrize("status", [None, "NEW", "PARTIALLY_FILLED"])
async def test_open_orders_use_the_partial_index(
    db: Database, db_url: str, engine_name: str, status: str | None
):
    """Open orders (all, or one open status) are found through an index on their status, not
    by walking a portfolio's finished orders by time (with ≈ 18,000 finished orders a year,
    that walk took 5 ms on SQLite): the partial index of open orders, or on PostgreSQL, which
    knows from its statistics how rare a status is, possibly (portfolio_id, status)."""
    actor, pid, iid = await _setup(db)
    await _finished_orders(db, pid, iid, 3000)

    async def calls() -> None:
        async with db.session(actor) as s:
            await s.orders.list(pid, status)

    statements = _statements_on(await _captured(db, calls), "orders")
    assert statements
    for statement, parameters in statements:
        plan = await _plan(db_url, statement, parameters)
        _assert_indexed(plan, "orders", engine_name)
        assert "ix_orders_portfolio_id_placed_at" not in plan, f"walks finished orders:\n{plan}"
        if engine_name == "sqlite":
            assert "ix_orders_open_portfolio_id_placed_at" in plan, plan


async def test_fill_path_reads_use_indexes(db: Database, db_url: str, engine_name: str):
    """The order and position locks of ``ingest_fill`` and the late-fill re-derivation (trades
    of one position in canonical order) are index lookups too."""
    actor, pid, iid = await _setup(db)

    async def calls() -> None:
        async with db.session(actor) as s:
            await s.trades.ingest_fill(
                fill(pid, iid, "SELL", "1", "101", trade_id="late", at=T0 - dt.timedelta(days=1))
            )

    seen = await _captured(db, calls)
    for table in ("orders", "positions", "trades"):
        for statement, parameters in _statements_on(seen, table):
            _assert_indexed(await _plan(db_url, statement, parameters), table, engine_name)
    assert _statements_on(seen, "trades"), "the late fill did not re-derive from trades"


async def test_trades_by_instrument_and_time_use_an_index(db: Database, db_url, engine_name):
    await _setup(db)
    query = (
        sa.select(t.trades.c.id, t.trades.c.price)
        .where(
            t.trades.c.instrument_id == sa.bindparam("iid"),
            t.trades.c.exec_time >= sa.bindparam("since"),
        )
        .order_by(t.trades.c.exec_time)
    )

    async def calls() -> None:
        async with db.session(Actor.system()) as s:
            await s.run(lambda tx: tx.conn.execute(query, {"iid": 1, "since": T0}).all())

    for statement, parameters in _statements_on(await _captured(db, calls), "trades"):
        _assert_indexed(await _plan(db_url, statement, parameters), "trades", engine_name)


async def test_the_check_catches_a_full_scan(db: Database, db_url: str, engine_name: str):
    """Control: a query no index can serve (trades by side) is reported as a full scan."""
    await _setup(db)
    query = sa.select(t.trades.c.id).where(t.trades.c.side == sa.bindparam("side"))

    async def calls() -> None:
        async with db.session(Actor.system()) as s:
            await s.run(lambda tx: tx.conn.execute(query, {"side": "BUY"}).all())

    ((statement, parameters),) = _statements_on(await _captured(db, calls), "trades")
    with pytest.raises(AssertionError, match="full scan of trades"):
        _assert_indexed(await _plan(db_url, statement, parameters), "trades", engine_name)
