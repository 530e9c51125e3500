"""Set-based batch ingestion: a batch ends exactly where the same fills one by one end, with
about the statements of one fill."""

from __future__ import annotations

import datetime as dt
import random
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from dal import schema as t
from dal.database import Database
from dal.errors import Conflict
from dal.models import Fill
from dal.scope import Actor
from tests.conftest import captured_statements, table_counts
from tests.factories import T0, make_instrument, make_portfolio, make_strategy, make_user

BIG = Decimal(1_000_000)


async def _orders(db: Database, actor: Actor, pid: int, inst: int, strategy: int) -> list[int]:
    """BUY and SELL orders large enough never to fill, manual and of the strategy."""
    ids = []
    async with db.session(actor) as s:
        for side in ("BUY", "SELL"):
            for strategy_id in (None, strategy):
                row = await s.orders.place(
                    {
                        "portfolio_id": pid,
                        "instrument_id": inst,
                        "side": side,
                        "quantity": BIG,
                        "strategy_id": strategy_id,
                    }
                )
                ids.append(row.id)
    return ids  # [BUY manual, BUY strategy, SELL manual, SELL strategy]


def _scenario(rng: random.Random, n: int) -> list[dict[str, Any]]:
    """Fills as (portfolio-independent) specs: sides crossing zero often, some late, some
    linked to orders, some replays of earlier fills (same fields, same broker trade id)."""
    specs: list[dict[str, Any]] = []
    minute = 0
    for i in range(n):
        if specs and rng.random() < 0.15:
            specs.append(dict(rng.choice(specs)))  # a replay: everything the same
            continue
        minute += rng.choice([0, 1, 1, 2])
        at = minute - rng.randint(1, 30) if rng.random() < 0.15 else minute  # a late fill
        specs.append(
            {
                "side": rng.choice(["BUY", "SELL"]),
                "quantity": Decimal(rng.randint(1, 40)) / 4,
                "price": Decimal(rng.randint(9000, 11000)) / 100,
                "fee": Decimal("0.01"),
                "fee_currency": "USDT",
                "at": at,
                "link": rng.choice(["none", "none", "order", "strategy-order", "strategy"]),
                "instrument": rng.randrange(2),
                "trade_id": f"T{i}",
            }
        )
    return specs


def _fill(spec: dict[str, Any], pid: int, insts: list[int], orders: list[int], strategy: int):
    side_offset = 0 if spec["side"] == "BUY" else 2
    inst = insts[spec["instrument"]]
    out: dict[str, Any] = {
        "portfolio_id": pid,
        "instrument_id": inst,
        "side": spec["side"],
        "quantity": spec["quantity"],
        "price": spec["price"],
        "fee": spec["fee"],
        "fee_currency": spec["fee_currency"],
        "exec_time": T0 + dt.timedelta(minutes=spec["at"]),
        "broker_trade_id": spec["trade_id"],
    }
    if spec["instrument"] == 0 and spec["link"] == "order":
        out["order_id"] = orders[side_offset]
    elif spec["instrument"] == 0 and spec["link"] == "strategy-order":
        out["order_id"] = orders[side_offset + 1]
    elif spec["link"] == "strategy":
        out["strategy_id"] = strategy
    return out


async def _state(engine: AsyncEngine, pid: int) -> dict[str, list[tuple[Any, ...]]]:
    """Everything ingestion writes for a portfolio, without ids that differ between the two."""
    async with engine.connect() as conn:
        trades = (
            await conn.execute(
                sa.select(
                    t.trades.c.broker_trade_id,
                    t.trades.c.instrument_id,
                    t.trades.c.strategy_id,
                    t.trades.c.side,
                    t.trades.c.quantity,
                    t.trades.c.price,
                    t.trades.c.realized_pnl,
                    t.trades.c.exec_time,
                    t.trades.c.order_id.is_not(None),
                )
                .where(t.trades.c.portfolio_id == pid)
                .order_by(t.trades.c.exec_time, t.trades.c.id)
            )
        ).all()
        positions = (
            await conn.execute(
                sa.select(
                    t.positions.c.instrument_id,
                    t.positions.c.strategy_id,
                    t.positions.c.quantity,
                    t.positions.c.cost_basis,
                    t.positions.c.avg_price,
                    t.positions.c.realized_pnl,
                    t.positions.c.opened_at,
                    t.positions.c.last_exec_time,
                )
                .where(t.positions.c.portfolio_id == pid)
                .order_by(t.positions.c.instrument_id, t.positions.c.strategy_id)
            )
        ).all()
        orders = (
            await conn.execute(
                sa.select(
                    t.orders.c.side,
                    t.orders.c.strategy_id.is_(None),
                    t.orders.c.filled_quantity,
                    t.orders.c.avg_fill_price,
                    t.orders.c.status,
                )
                .where(t.orders.c.portfolio_id == pid)
                .order_by(t.orders.c.id)
            )
        ).all()
        summary = (
            await conn.execute(
                sa.select(
                    t.pnl_summary.c.period,
                    t.pnl_summary.c.period_start,
                    t.pnl_summary.c.instrument_id,
                    t.pnl_summary.c.fee_currency,
                    t.pnl_summary.c.realized_pnl,
                    t.pnl_summary.c.fees,
                    t.pnl_summary.c.trade_count,
                )
                .where(t.pnl_summary.c.portfolio_id == pid)
                .order_by(*t.pnl_summary.primary_key.columns)
            )
        ).all()
    return {
        "trades": [tuple(r) for r in trades],
        "positions": [tuple(r) for r in positions],
        "orders": [tuple(r) for r in orders],
        "summary": [tuple(r) for r in summary],
    }


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
async def test_a_batch_ends_where_the_same_fills_one_by_one_end(
    db: Database, engine: AsyncEngine, seed: int
) -> None:
    rng = random.Random(seed)
    actor = await make_user(db)
    insts = [await make_instrument(db), await make_instrument(db)]
    strategy = await make_strategy(db, actor)
    batched, single = await make_portfolio(db, actor), await make_portfolio(db, actor)
    orders = {pid: await _orders(db, actor, pid, insts[0], strategy) for pid in (batched, single)}
    specs = _scenario(rng, 120)

    position = 0
    while position < len(specs):
        size = rng.choice([1, 2, 7, 25, 60])
        chunk = specs[position : position + size]
        position += size
        async with db.session(actor) as s:
            results = await s.trades.ingest_fills(
                [_fill(spec, batched, insts, orders[batched], strategy) for spec in chunk]
            )
        expected = []
        for spec in chunk:
            async with db.session(actor) as s:
                expected.append(
                    await s.trades.ingest_fill(_fill(spec, single, insts, orders[single], strategy))
                )
        assert [r.replayed for r in results] == [r.replayed for r in expected]
        # (Realized PnL per result may differ: a late fill later in the chunk re-derives the
        # earlier trades, which the one-by-one results predate; the final state must agree.)
        assert [r.trade.broker_trade_id for r in results] == [
            r.trade.broker_trade_id for r in expected
        ]

    got, want = await _state(engine, batched), await _state(engine, single)
    assert got == want
    assert len(got["trades"]) == len({spec["trade_id"] for spec in specs})
    async with db.session(actor) as s:
        assert await s.positions.verify(batched) == []
        assert await s.positions.verify(single) == []


async def test_a_batch_of_fills_runs_as_few_statements_as_one_fill(db: Database) -> None:
    actor = await make_user(db)
    inst = await make_instrument(db)
    strategy = await make_strategy(db, actor)
    pid = await make_portfolio(db, actor)
    buy = (await _orders(db, actor, pid, inst, strategy))[0]

    def fills(tag: str, n: int) -> list[Fill | dict[str, Any]]:
        return [
            {
                "portfolio_id": pid,
                "instrument_id": inst,
                "order_id": buy,
                "side": "BUY",
                "quantity": "1",
                "price": str(100 + i),
                "exec_time": T0 + dt.timedelta(seconds=i),
                "broker_trade_id": f"{tag}{i}",
            }
            for i in range(n)
        ]

    await db.scoped(actor).trades.ingest_fill(fills("warm", 1)[0])  # position row exists
    with captured_statements(db) as one_sent:
        await db.scoped(actor).trades.ingest_fill(fills("one", 1)[0])
    with captured_statements(db) as many_sent:
        await db.scoped(actor).trades.ingest_fills(fills("many", 50))
    one, many = (
        [" ".join(statement.split()[:6]).upper() for statement, _ in sent]
        for sent in (one_sent, many_sent)
    )

    def work(statements: list[str]) -> list[str]:
        return [s for s in statements if not s.startswith(("BEGIN", "COMMIT"))]

    # portfolio, order, position, trades, summary, daily series, order update, position
    # update, audit; on PostgreSQL also the owner's zone FOR SHARE (lock_owner_zones)
    assert len(work(many)) == (9 if db.dialect == "sqlite" else 10), many
    # One fill of an order on an existing position reads portfolio, order and position in one
    # statement; on PostgreSQL its five writes travel as one statement too (data-modifying
    # CTEs).
    assert work(one)[0].startswith("SELECT PORTFOLIOS.ID"), one
    if db.dialect == "sqlite":
        assert len(work(one)) == 7 and work(many)[3:] == work(one)[1:], one
    else:
        assert len(work(one)) == 2 and work(one)[1].startswith("WITH NEW_TRADE AS"), one
    async with db.session(actor) as s:
        assert await s.positions.verify(pid) == []
        assert (await s.orders.get(buy)).filled_quantity == Decimal(52)


async def test_a_conflicting_duplicate_inside_a_batch_writes_nothing(
    db: Database, engine: AsyncEngine
) -> None:
    actor = await make_user(db)
    inst = await make_instrument(db)
    pid = await make_portfolio(db, actor)
    base = {
        "portfolio_id": pid,
        "instrument_id": inst,
        "side": "BUY",
        "quantity": "1",
        "exec_time": T0,
    }
    before = await table_counts(engine)
    with pytest.raises(Conflict, match="already ingested with different price"):
        await db.scoped(actor).trades.ingest_fills(
            [
                {**base, "price": "100", "broker_trade_id": "X1"},
                {**base, "price": "100", "broker_trade_id": "X2"},
                {**base, "price": "101", "broker_trade_id": "X1"},
            ]
        )
    assert await table_counts(engine) == before

    results = await db.scoped(actor).trades.ingest_fills(
        [
            {**base, "price": "100", "broker_trade_id": "X1"},
            {**base, "price": "100", "broker_trade_id": "X1"},
        ]
    )
    assert [r.replayed for r in results] == [False, True]
    assert results[0].trade.id == results[1].trade.id
    async with db.session(actor) as s:
        (position,) = await s.positions.snapshot(pid)
    assert position.quantity == Decimal(1)


async def test_replaying_the_fill_that_completed_an_order_is_a_replay(
    db: Database, engine: AsyncEngine
) -> None:
    # The replay's order math would overfill the (now FILLED) order; it must still come back
    # as a replay that changes nothing, not as a Conflict.
    actor = await make_user(db)
    inst = await make_instrument(db)
    pid = await make_portfolio(db, actor)
    dal = db.scoped(actor)
    order = await dal.orders.place(
        {"portfolio_id": pid, "instrument_id": inst, "side": "BUY", "quantity": "2"}
    )
    first, last = (
        {
            "portfolio_id": pid,
            "instrument_id": inst,
            "order_id": order.id,
            "side": "BUY",
            "quantity": "1",
            "price": price,
            "exec_time": T0 + dt.timedelta(minutes=minute),
            "broker_trade_id": f"F{minute}",
        }
        for minute, price in ((1, "100"), (2, "110"))
    )
    assert not (await dal.trades.ingest_fill(first)).replayed
    done = await dal.trades.ingest_fill(last)
    before = await table_counts(engine)
    for replay in (first, last):
        again = await dal.trades.ingest_fill(replay)
        assert again.replayed
    assert again.trade.id == done.trade.id
    assert await table_counts(engine) == before
    assert [r.replayed for r in await dal.trades.ingest_fills([first, last])] == [True, True]
    settled = await dal.orders.get(order.id)
    assert settled.status == "FILLED" and settled.avg_fill_price == Decimal(105)
