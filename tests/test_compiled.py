"""Driver statements (dal/compiled.py) send what Core sends for the same statement and values:
the same SQL, the same parameters after bind processing, the same rows back, the same error.

Each statement runs twice on the real engine, inside the DAL's own transaction: once through
``Connection.execute`` (Core) and once on the driver's cursor, each in a savepoint rolled back
afterwards, with a ``before_cursor_execute`` listener recording what reached the driver.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

import dal.balances
import dal.engine
import dal.ingest
import dal.orders
import dal.ownership
import dal.pnl_summary
import dal.positions
import dal.risk
import dal.scope
from dal import compiled, schema
from dal.database import Database
from dal.scope import Tx
from dal.types import JSONDoc, Money, Notional, UTCDateTime
from tests.factories import default_portfolio, fill, make_instrument, make_user

# The modules whose hot statements run on the driver (importing them registers them).
MODULES = (
    dal.balances, dal.engine, dal.ingest, dal.orders, dal.ownership, dal.pnl_summary,
    dal.positions, dal.risk, dal.scope,
)  # fmt: skip
WHEN = dt.datetime(2024, 5, 1, 9, 30, tzinfo=dt.UTC)


def _value(name: str, type_: Any, ids: dict[str, int]) -> Any:
    """A value of the bind's type; ids of the rows the test made where the name says so."""
    base = name.split("_", 1)[1] if name[:2] in ("t_", "o_", "p_", "a_") else name
    if base.startswith(("day_", "month_", "daily_")):
        base = base.split("_", 1)[1]
    if base == "strategy_id":
        return None
    if isinstance(type_, Money | Notional):
        return Decimal("2.5")
    if isinstance(type_, UTCDateTime):
        return WHEN
    if isinstance(type_, JSONDoc):
        return {"note": "x", "amount": Decimal("1.25")}
    if isinstance(type_, sa.Boolean):
        return False
    if isinstance(type_, sa.Date):
        return WHEN.date()
    if isinstance(type_, sa.Integer):
        return ids.get(base, 1)
    if base == "period":
        return "MONTH" if name.startswith("month_") else "DAY"
    return _TEXT.get(base, f"v-{name}")


# Text columns whose values the schema constrains: a value each accepts.
_TEXT = {
    "side": "BUY", "status": "PARTIALLY_FILLED", "type": "LIMIT", "time_in_force": "GTC",
    "action": "FILL", "entity_type": "TRADE", "fee_currency": "USDT", "currency": "USDT",
}  # fmt: skip


# Columns that may be NULL: the second pass gives them None (processed as Core does).
NULLABLE = {
    "opened_at", "position_opened_at", "last_exec_time", "avg_fill_price", "reserve_price",
    "stop_price", "broker_trade_id", "broker_order_id", "client_order_id", "entity_id",
}  # fmt: skip


def _values(
    statement: compiled.DriverStatement, dialect: Any, ids: dict[str, int], nulls: bool
) -> Any:
    plan = statement.plan(dialect)
    binds = plan.compiled.binds
    values = {}
    for name in plan.names:
        if name in plan.defaults:
            continue
        base = name.split("_", 1)[1] if name[:2] in ("t_", "o_", "p_", "a_", "b_") else name
        nullable = nulls and (base in NULLABLE or name in NULLABLE)
        values[name] = None if nullable else _value(name, binds[name].type, ids)
    return values


def _sent(conn: sa.Connection, run: Any) -> tuple[list[tuple[str, Any]], Any, Any]:
    """(statements sent, rows or None, the error's class or None) of ``run()`` in a
    savepoint rolled back afterwards."""
    seen: list[tuple[str, Any]] = []

    def record(_c: Any, _cur: Any, sql: str, params: Any, _ctx: Any, _many: bool) -> None:
        seen.append((sql, tuple(params) if isinstance(params, list | tuple) else params))

    savepoint = conn.begin_nested()
    sa.event.listen(conn, "before_cursor_execute", record)
    rows = error = None
    try:
        rows = run()
    except sa.exc.DBAPIError as exc:
        error = type(exc)
    finally:
        sa.event.remove(conn, "before_cursor_execute", record)
        savepoint.rollback()
    return [s for s in seen if not s[0].startswith(("SAVEPOINT", "RELEASE"))], rows, error


def _compare_all(tx: Tx, ids: dict[str, int], nulls: bool) -> list[str]:
    conn = tx.conn
    checked = []
    for statement in compiled.ALL:
        if statement.dialect not in (None, conn.dialect.name):
            continue
        values = _values(statement, conn.dialect, ids, nulls)

        def core(values: Any = values, statement: Any = statement) -> Any:
            result = conn.execute(statement.statement, values)
            return [tuple(r) for r in result] if result.returns_rows else []

        def driver(values: Any = values, statement: Any = statement) -> Any:
            return [tuple(r) for r in statement.execute(conn, values)]

        # A sequence is not rolled back with its savepoint: an inserted row's new id differs.
        names = [name for name, _ in statement.plan(conn.dialect).result_columns]
        generated = {i for i, name in enumerate(names) if name == "id"}
        if "INSERT" not in statement.sql(conn.dialect):
            generated = set()

        def without_ids(rows: Any, generated: set[int] = generated) -> Any:
            if rows is None:
                return None
            return [tuple(v for i, v in enumerate(row) if i not in generated) for row in rows]

        core_sent, core_rows, core_error = _sent(conn, core)
        driver_sent, driver_rows, driver_error = _sent(conn, driver)
        sql = statement.sql(conn.dialect)
        assert core_sent == driver_sent, sql
        assert core_sent[0][0] == sql
        assert (without_ids(core_rows), core_error) == (without_ids(driver_rows), driver_error)
        checked.append(f"{sql[:40]} → {'error' if core_error else len(core_rows or [])}")
    return checked


async def test_each_driver_statement_sends_what_core_sends(db: Database) -> None:
    actor = await make_user(db)
    portfolio_id = await default_portfolio(db, actor)
    instrument_id = await make_instrument(db, "CMPUSDT")
    scoped = db.scoped(actor)
    order = await scoped.orders.place(
        {
            "portfolio_id": portfolio_id,
            "instrument_id": instrument_id,
            "side": "BUY",
            "type": "LIMIT",
            "quantity": Decimal(10),
            "price": Decimal(100),
        }
    )
    result = await scoped.trades.ingest_fill(
        fill(portfolio_id, instrument_id, "BUY", "1", "100", order_id=order.id, trade_id="c1")
    )
    async with db.session(actor) as s:
        position = (await s.positions.snapshot(portfolio_id))[0]
        ids = {
            "portfolio_id": portfolio_id,
            "instrument_id": instrument_id,
            "order_id": order.id,
            "owner_id": actor.user_id or 0,
            "user_id": actor.user_id or 0,
            "position_id": position.id,
            "id": result.trade.id,
        }
        checked = await s.run(_compare_all, ids, False)
        with_nulls = await s.run(_compare_all, ids, True)
    assert len(with_nulls) == len(checked)
    assert len(checked) >= 7
    # Every statement ran (no error; a BEGIN inside the test's transaction cannot) and those
    # returning rows returned one: rows compared.
    failed = [line for line in checked if line.endswith("error") and not line.startswith("BEGIN")]
    assert not failed, checked
    assert sum(line.endswith("→ 1") for line in checked) >= 2, checked


def test_a_statement_whose_sql_depends_on_its_values_is_refused() -> None:
    from sqlalchemy.dialects import sqlite

    t = sa.table("t", sa.column("id"))
    statement = compiled.DriverStatement(
        sa.select(t).where(t.c.id.in_(sa.bindparam("ids", expanding=True)))
    )
    compiled.ALL.remove(statement)
    with pytest.raises(ValueError, match="does not depend on its values"):
        statement.plan(sqlite.dialect())


# An UPDATE naming a portfolio that does not exist: a foreign-key violation on both engines.
_MOVE_ORDER = compiled.DriverStatement(
    sa.update(schema.orders)
    .where(schema.orders.c.id == sa.bindparam("order_id"))
    .values(portfolio_id=sa.bindparam("portfolio_id"))
)
compiled.ALL.remove(_MOVE_ORDER)  # not the DAL's: kept out of the statement-by-statement test


async def _an_order(db: Database, symbol: str) -> tuple[Any, int, Any]:
    """A new user, their portfolio and an open order in it."""
    actor = await make_user(db)
    portfolio_id = await default_portfolio(db, actor)
    instrument_id = await make_instrument(db, symbol)
    order = await db.scoped(actor).orders.place(
        {
            "portfolio_id": portfolio_id,
            "instrument_id": instrument_id,
            "side": "BUY",
            "type": "LIMIT",
            "quantity": Decimal(1),
            "price": Decimal(100),
        }
    )
    return actor, portfolio_id, order


async def test_a_driver_statement_fails_as_core_does(db: Database) -> None:
    actor, portfolio_id, order = await _an_order(db, "ERRUSDT")
    values = {"order_id": order.id, "portfolio_id": portfolio_id + 1000}

    def both(tx: Tx) -> list[tuple[type[BaseException], str | None]]:
        errors: list[tuple[type[BaseException], str | None]] = []
        for run in (
            lambda: tx.conn.execute(_MOVE_ORDER.statement, values),
            lambda: _MOVE_ORDER.execute(tx.conn, values),
        ):
            savepoint = tx.conn.begin_nested()
            try:
                run()
            except sa.exc.DBAPIError as exc:
                errors.append((type(exc), getattr(exc.orig, "sqlstate", None)))
            finally:
                savepoint.rollback()
        return errors

    async with db.session(actor) as s:
        core, driver = await s.run(both)
    assert core == driver
    assert core[0] is sa.exc.IntegrityError
    if db.dialect == "postgresql":
        assert core[1] == "23503"  # foreign_key_violation


async def test_a_lost_postgresql_connection_is_invalidated(db: Database) -> None:
    if db.dialect != "postgresql":
        pytest.skip("PostgreSQL: a connection the server ends")
    actor, portfolio_id, order = await _an_order(db, "LOSTUSDT")

    def backend(tx: Tx) -> int:
        return int(tx.conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one())

    def move(tx: Tx) -> None:
        _MOVE_ORDER.execute(tx.conn, {"order_id": order.id, "portfolio_id": portfolio_id})

    other = create_async_engine(db.url)
    try:
        with pytest.raises(sa.exc.DBAPIError) as lost:
            async with db.session(actor) as s:
                pid = await s.run(backend)
                async with other.connect() as conn:  # the server ends the session's connection
                    await conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
                await s.run(move)
        assert lost.value.connection_invalidated
    finally:
        await other.dispose()
    # The pool handed out a new connection: the DAL works on.
    assert (await db.scoped(actor).orders.get(order.id)).id == order.id
