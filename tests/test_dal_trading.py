"""Orders, fills, positions: idempotency, atomicity, late fills, recompute, concurrency."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from dal import positions as positions_module
from dal import schema as t
from dal.database import Database
from dal.errors import Conflict, InvalidInput
from dal.models import Fill
from dal.position_math import PositionState
from dal.positions import Difference
from dal.scope import Actor
from tests.conftest import captured_statements, table_counts
from tests.factories import (
    T0,
    default_portfolio,
    fill,
    make_instrument,
    make_strategy,
    make_user,
)


@pytest.fixture
async def trader(db: Database) -> tuple[Actor, int, int]:
    actor = await make_user(db)
    return actor, await default_portfolio(db, actor), await make_instrument(db, "BTCUSDT")


def at(minutes: int) -> dt.datetime:
    return T0 + dt.timedelta(minutes=minutes)


async def test_session_commits_on_success_and_rolls_back_on_error(
    db: Database, trader: tuple[Actor, int, int], engine: AsyncEngine
) -> None:
    actor, pid, inst = trader
    before = await table_counts(engine)
    with pytest.raises(RuntimeError):
        async with db.session(actor) as s:
            await s.trades.ingest_fill(fill(pid, inst, "BUY", "1", "100", trade_id="a"))
            raise RuntimeError("boom")
    assert await table_counts(engine) == before
    async with db.session(actor) as s:
        await s.trades.ingest_fill(fill(pid, inst, "BUY", "1", "100", trade_id="a"))
    after = await table_counts(engine)
    assert after["trades"] == before["trades"] + 1
    assert after["audit_log"] == before["audit_log"] + 1


async def test_same_fill_100_times_is_one_trade(
    db: Database, trader: tuple[Actor, int, int]
) -> None:
    actor, pid, inst = trader
    async with db.session(actor) as s:
        order = await s.orders.place(
            {
                "portfolio_id": pid,
                "instrument_id": inst,
                "side": "BUY",
                "type": "LIMIT",
                "quantity": "5",
                "price": "100",
            }
        )
    the_fill = fill(
        pid,
        inst,
        "BUY",
        "2",
        "100",
        trade_id="T-1",
        order_id=order.id,
        fee=Decimal("0.1"),
        fee_currency="USDT",
    )
    results = []
    for _ in range(100):
        async with db.session(actor) as s:
            results.append(await s.trades.ingest_fill(the_fill))
    assert [r.replayed for r in results] == [False] + [True] * 99
    assert len({r.trade.id for r in results}) == 1
    async with db.session(actor) as s:
        (position,) = await s.positions.snapshot(pid)
        order = await s.orders.get(order.id)
        assert len(await s.trades.list(pid)) == 1
    assert position.quantity == Decimal(2)
    assert order.filled_quantity == Decimal(2) and order.status == "PARTIALLY_FILLED"

    conflicting = {**the_fill, "price": Decimal("101")}
    with pytest.raises(Conflict, match="different price"):
        async with db.session(actor) as s:
            await s.trades.ingest_fill(conflicting)


async def test_order_status_follows_fills_and_overfill_is_refused(
    db: Database, trader: tuple[Actor, int, int], engine: AsyncEngine
) -> None:
    actor, pid, inst = trader
    async with db.session(actor) as s:
        order = await s.orders.place(
            {
                "portfolio_id": pid,
                "instrument_id": inst,
                "side": "SELL",
                "type": "LIMIT",
                "quantity": "3",
                "price": "10",
                "client_order_id": "o-1",
            }
        )
        await s.trades.ingest_fill(
            fill(pid, inst, "SELL", "1", "10", trade_id="1", order_id=order.id)
        )
        await s.trades.ingest_fill(
            fill(pid, inst, "SELL", "1.5", "12", trade_id="2", order_id=order.id)
        )
        partial = await s.orders.get(order.id)
    assert partial.status == "PARTIALLY_FILLED"
    assert partial.filled_quantity == Decimal("2.5")
    assert partial.avg_fill_price == Decimal("11.2")  # (10 + 18) / 2.5

    before = await table_counts(engine)
    with pytest.raises(Conflict, match="overfills"):
        async with db.session(actor) as s:
            await s.trades.ingest_fill(
                fill(pid, inst, "SELL", "1", "10", trade_id="3", order_id=order.id)
            )
    assert await table_counts(engine) == before

    async with db.session(actor) as s:
        await s.trades.ingest_fill(
            fill(pid, inst, "SELL", "0.5", "10", trade_id="4", order_id=order.id)
        )
        done = await s.orders.get(order.id)
        assert done.status == "FILLED"
        with pytest.raises(Conflict, match="FILLED"):
            await s.orders.cancel(order.id)


async def test_order_transitions(db: Database, trader: tuple[Actor, int, int]) -> None:
    actor, pid, inst = trader
    new = {"portfolio_id": pid, "instrument_id": inst, "side": "BUY", "quantity": "1"}
    async with db.session(actor) as s:
        a = await s.orders.place({**new, "client_order_id": "a"})
        assert (await s.orders.cancel(a.id)).status == "CANCELED"
        assert (await s.orders.cancel(a.id)).status == "CANCELED"  # replay: no-op
        for status in ("NEW", "EXPIRED", "REJECTED"):
            with pytest.raises(Conflict):
                await s.orders.update_status(a.id, status)
        b = await s.orders.place({**new, "client_order_id": "b"})
        with pytest.raises(InvalidInput, match="follow from fills"):
            await s.orders.update_status(b.id, "FILLED")
        assert (await s.orders.update_status(b.id, "EXPIRED")).status == "EXPIRED"
        with pytest.raises(InvalidInput, match="unknown order status"):
            await s.orders.update_status(b.id, "DONE")


async def test_order_idempotency_keys(db: Database, trader: tuple[Actor, int, int]) -> None:
    actor, pid, inst = trader
    new = {
        "portfolio_id": pid,
        "instrument_id": inst,
        "side": "BUY",
        "type": "LIMIT",
        "quantity": "1",
        "price": "5",
        "client_order_id": "cid-1",
    }
    async with db.session(actor) as s:
        first = await s.orders.place(new)
        again = await s.orders.place(new)
        assert again.id == first.id
        with pytest.raises(Conflict, match="quantity"):
            await s.orders.place({**new, "quantity": "2"})
        by_broker = await s.orders.place({**new, "client_order_id": None, "broker_order_id": "B-9"})
        assert (
            await s.orders.place({**new, "client_order_id": None, "broker_order_id": "B-9"})
        ).id == by_broker.id
        assert len(await s.orders.list(pid)) == 2


def _limit_buy(pid: int, inst: int, **extra: Any) -> dict[str, Any]:
    """A BUY of 3 at 5 that the tests below fill or acknowledge."""
    return {"portfolio_id": pid, "instrument_id": inst, "side": "BUY", "type": "LIMIT",
            "quantity": "3", "price": "5", **extra}  # fmt: skip


async def test_a_fill_records_its_orders_broker_id_once(
    db: Database, trader: tuple[Actor, int, int]
) -> None:
    actor, pid, inst = trader
    dal = db.scoped(actor)
    order = await dal.orders.place(_limit_buy(pid, inst, client_order_id="cid-b"))
    assert order.broker_order_id is None
    one = fill(pid, inst, "BUY", "1", "5", order_id=order.id, trade_id="t-1")
    await dal.trades.ingest_fill({**one, "broker_order_id": "B-1"})
    assert (await dal.orders.get(order.id)).broker_order_id == "B-1"
    # Another fill of it under the same id is fine; under another id it contradicts the order.
    two = fill(pid, inst, "BUY", "1", "5", order_id=order.id, trade_id="t-2")
    await dal.trades.ingest_fills([{**two, "broker_order_id": "B-1"}])
    three = fill(pid, inst, "BUY", "1", "5", order_id=order.id, trade_id="t-3")
    with pytest.raises(Conflict, match="already has broker id 'B-1'"):
        await dal.trades.ingest_fill({**three, "broker_order_id": "B-2"})
    row = await dal.orders.get(order.id)
    assert (row.broker_order_id, row.filled_quantity) == ("B-1", Decimal(2))


async def test_a_fill_on_an_open_position_records_the_broker_id_in_its_own_writes(
    db: Database, trader: tuple[Actor, int, int]
) -> None:
    """The common live fill (its order known, its position open): the broker's order id
    travels with the fill's writes, not as a statement of its own."""
    actor, pid, inst = trader
    dal = db.scoped(actor)
    opening = await dal.orders.place(_limit_buy(pid, inst))
    await dal.trades.ingest_fill(fill(pid, inst, "BUY", "1", "5", order_id=opening.id))
    order = await dal.orders.place(_limit_buy(pid, inst, client_order_id="cid-live"))
    one = fill(pid, inst, "BUY", "1", "5", order_id=order.id, trade_id="live-1")
    with captured_statements(db) as sent:
        await dal.trades.ingest_fill({**one, "broker_order_id": "B-live"})
    assert (await dal.orders.get(order.id)).broker_order_id == "B-live"
    # Set with the order's fill state, not by a statement of its own (either engine).
    assert not [sql for sql, _ in sent if sql.startswith("UPDATE orders SET broker_order_id")]
    if db.dialect == "postgresql":
        # The read, then the writes as one WITH … statement: no UPDATE of its own.
        assert [sql.split()[0].upper() for sql, _ in sent] == ["SELECT", "WITH"]
    # A later fill under the same id changes nothing; the opening order's id stays unset.
    two = fill(pid, inst, "BUY", "1", "5", order_id=order.id, trade_id="live-2")
    await dal.trades.ingest_fill({**two, "broker_order_id": "B-live"})
    assert (await dal.orders.get(order.id)).broker_order_id == "B-live"
    assert (await dal.orders.get(opening.id)).broker_order_id is None
    # A batch records it too: the first id its fills name for an order that has none.
    batched = await dal.orders.place(_limit_buy(pid, inst, client_order_id="cid-batch"))
    both = [fill(pid, inst, "BUY", "1", "5", order_id=batched.id, trade_id=f"b{i}") for i in (1, 2)]
    await dal.trades.ingest_fills([{**f, "broker_order_id": "B-batch"} for f in both])
    row = await dal.orders.get(batched.id)
    assert (row.broker_order_id, row.filled_quantity) == ("B-batch", Decimal(2))


async def test_an_orders_broker_id_is_recorded_once(
    db: Database, trader: tuple[Actor, int, int]
) -> None:
    actor, pid, inst = trader
    dal = db.scoped(actor)
    order = await dal.orders.place(_limit_buy(pid, inst))
    recorded = await dal.orders.record_broker_id(order.id, "B-7")
    assert (recorded.broker_order_id, recorded.status) == ("B-7", "NEW")
    assert (await dal.orders.record_broker_id(order.id, "B-7")).broker_order_id == "B-7"
    with pytest.raises(Conflict, match="already has broker id 'B-7'"):
        await dal.orders.record_broker_id(order.id, "B-8")
    with pytest.raises(InvalidInput, match="limit is 64"):
        await dal.orders.record_broker_id(order.id, "x" * 65)
    audit = await dal.audit.recent(entity_type="ORDER")
    updates = [a for a in audit if a.entity_id == order.id and a.action == "UPDATE"]
    assert len(updates) == 1  # recorded once, audited once


async def test_open_orders_newest_first_and_status_filter(
    db: Database, trader: tuple[Actor, int, int]
) -> None:
    actor, pid, inst = trader
    async with db.session(actor) as s:
        ids = []
        for minute in (3, 1, 2):
            ids.append(
                (
                    await s.orders.place(
                        {
                            "portfolio_id": pid,
                            "instrument_id": inst,
                            "side": "BUY",
                            "quantity": "1",
                            "placed_at": at(minute),
                        }
                    )
                ).id
            )
        await s.orders.cancel(ids[2])
        open_orders = await s.orders.list(pid)
        assert [o.id for o in open_orders] == [ids[0], ids[1]]
        assert [o.id for o in await s.orders.list(pid, "CANCELED")] == [ids[2]]


async def test_error_after_trade_insert_leaves_no_trace(
    db: Database,
    trader: tuple[Actor, int, int],
    engine: AsyncEngine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    actor, pid, inst = trader
    async with db.session(actor) as s:
        order = await s.orders.place(
            {"portfolio_id": pid, "instrument_id": inst, "side": "BUY", "quantity": "2"}
        )
        await s.trades.ingest_fill(
            fill(pid, inst, "BUY", "1", "100", trade_id="ok", order_id=order.id)
        )
    before = await table_counts(engine)

    def explode(*args: object, **kwargs: object) -> None:
        raise RuntimeError("injected after the trade insert")

    monkeypatch.setattr("dal.ingest._log_fill", explode)
    with pytest.raises(RuntimeError, match="injected"):
        async with db.session(actor) as s:
            await s.trades.ingest_fill(
                fill(pid, inst, "BUY", "1", "110", trade_id="boom", order_id=order.id, at=at(5))
            )
    monkeypatch.undo()
    assert await table_counts(engine) == before
    async with db.session(actor) as s:
        (position,) = await s.positions.snapshot(pid)
        order = await s.orders.get(order.id)
        assert await s.positions.verify(pid) == []
    assert position.quantity == Decimal(1) and position.cost_basis == Decimal(100)
    assert order.filled_quantity == Decimal(1)


async def test_flip_opens_the_other_side(db: Database, trader: tuple[Actor, int, int]) -> None:
    actor, pid, inst = trader
    async with db.session(actor) as s:
        await s.trades.ingest_fill(fill(pid, inst, "BUY", "2", "10", at=at(0)))
        result = await s.trades.ingest_fill(fill(pid, inst, "SELL", "3", "12", at=at(1)))
        (position,) = await s.positions.snapshot(pid)
    assert result.trade.realized_pnl == Decimal(4)
    assert position.quantity == Decimal(-1)
    assert position.cost_basis == Decimal(12) and position.avg_price == Decimal(12)
    assert position.opened_at == at(1)
    assert position.realized_pnl == Decimal(4)


async def test_late_fill_rederives_position_and_trade_pnl(
    db: Database, trader: tuple[Actor, int, int]
) -> None:
    actor, pid, inst = trader
    async with db.session(actor) as s:
        await s.trades.ingest_fill(fill(pid, inst, "BUY", "1", "100", at=at(0), trade_id="1"))
        sell = await s.trades.ingest_fill(
            fill(pid, inst, "SELL", "1", "130", at=at(10), trade_id="3")
        )
        assert sell.trade.realized_pnl == Decimal(30)
        # A buy at 10:05 arrives late: the sell now closes 1 of 2 at average cost 110.
        await s.trades.ingest_fill(fill(pid, inst, "BUY", "1", "120", at=at(5), trade_id="2"))
        fixed = await s.trades.get(sell.trade.id)
        (position,) = await s.positions.snapshot(pid)
        assert await s.positions.verify(pid) == []
    assert fixed.realized_pnl == Decimal(20)
    assert position.quantity == Decimal(1) and position.cost_basis == Decimal(110)
    assert position.realized_pnl == Decimal(20)
    assert position.last_exec_time == at(10)


async def test_recompute_equals_materialized_after_random_sequences(
    db: Database, trader: tuple[Actor, int, int]
) -> None:
    actor, pid, inst = trader
    other = await make_instrument(db, "ETHUSDT")
    strategy = await make_strategy(db, actor)
    rng = random.Random(20261125)
    async with db.session(actor) as s:
        for i in range(150):
            minute = rng.randint(0, 500)  # many fills arrive late
            await s.trades.ingest_fill(
                fill(
                    pid,
                    rng.choice([inst, other]),
                    rng.choice(["BUY", "SELL"]),
                    str(Decimal(rng.randint(1, 10_000)) / 1000),
                    str(Decimal(rng.randint(1, 1_000_000)) / 100),
                    at=at(minute),
                    trade_id=f"r{i}",
                    strategy_id=rng.choice([None, strategy]),
                )
            )
        recomputed = await s.positions.recompute(pid)
        materialized = {
            (p.portfolio_id, p.instrument_id, p.strategy_id): p
            for p in await s.positions.snapshot(pid, include_flat=True)
        }
        assert await s.positions.verify(pid) == []
    assert set(recomputed) == set(materialized)
    for key, state in recomputed.items():
        row = materialized[key]
        assert (row.quantity, row.cost_basis, row.realized_pnl, row.avg_price) == (
            state.quantity,
            state.cost_basis,
            state.realized_pnl,
            state.avg_price,
        )


async def test_verify_finds_and_repair_fixes_a_corrupted_position(
    db: Database, trader: tuple[Actor, int, int], engine: AsyncEngine
) -> None:
    actor, pid, inst = trader
    async with db.session(actor) as s:
        await s.trades.ingest_fill(fill(pid, inst, "BUY", "3", "10"))
    async with engine.begin() as conn:
        await conn.execute(t.positions.update().values(quantity=Decimal("2.5")))
    async with db.session(actor) as s:
        differences = await s.positions.verify(pid)
        assert all(isinstance(d, Difference) for d in differences), differences
        assert [d.field for d in differences if isinstance(d, Difference)] == ["quantity"]
        assert "quantity is 2.5, trades say 3" in str(differences[0])
        await s.positions.repair(pid)
        assert await s.positions.verify(pid) == []
        audit = await s.audit.recent(entity_type="POSITION")
    assert audit[0].action == "REPAIR"


async def test_concurrent_writers_on_one_position_lose_nothing(
    db: Database, trader: tuple[Actor, int, int]
) -> None:
    actor, pid, inst = trader
    async with db.session(actor) as s:
        order = await s.orders.place(
            {"portfolio_id": pid, "instrument_id": inst, "side": "BUY", "quantity": "1000"}
        )

    # Writers 6 and 7 use their own Database object: on SQLite a second writer thread (like a
    # second process) contending through BEGIN IMMEDIATE + busy timeout; on PostgreSQL a
    # second pool.
    other_db = Database(db.url)
    try:
        await asyncio.gather(
            *(_writer(db, actor, pid, inst, order.id, w) for w in range(6)),
            *(_writer(other_db, actor, pid, inst, order.id, w) for w in (6, 7)),
        )
    finally:
        await other_db.dispose()
    async with db.session(actor) as s:
        (position,) = await s.positions.snapshot(pid)
        order = await s.orders.get(order.id)
        assert await s.positions.verify(pid) == []
    assert position.quantity == Decimal(400)
    assert order.filled_quantity == Decimal(400)
    expected_cost = sum(Decimal(100 + i) for i in range(50)) * 8
    assert position.cost_basis == expected_cost


async def _writer(db: Database, actor: Actor, pid: int, inst: int, order_id: int, w: int) -> None:
    """50 one-fill transactions of 1 @ 100+i on one position."""
    for i in range(50):
        async with db.session(actor) as s:
            await s.trades.ingest_fill(
                fill(
                    pid,
                    inst,
                    "BUY",
                    "1",
                    str(100 + i),
                    trade_id=f"w{w}-{i}",
                    order_id=order_id,
                    at=at(i),
                )
            )


async def test_batch_ingest_is_all_or_nothing(
    db: Database, trader: tuple[Actor, int, int], engine: AsyncEngine
) -> None:
    actor, pid, inst = trader
    before = await table_counts(engine)
    batch: list[Fill | dict[str, Any]] = [
        fill(pid, inst, "BUY", "1", "10", trade_id=f"b{i}", at=at(i)) for i in range(5)
    ]
    batch.append(fill(pid, inst, "BUY", "1", "10", trade_id="bad", at=at(9), order_id=999_999))
    with pytest.raises(Exception, match="no order"):
        async with db.session(actor) as s:
            await s.trades.ingest_fills(batch)
    assert await table_counts(engine) == before
    async with db.session(actor) as s:
        results = await s.trades.ingest_fills(batch[:5])
    assert [r.replayed for r in results] == [False] * 5


async def test_positions_state_helper_matches_math(
    db: Database, trader: tuple[Actor, int, int]
) -> None:
    actor, pid, inst = trader
    async with db.session(actor) as s:
        await s.trades.ingest_fill(fill(pid, inst, "SELL", "4", "25"))
        (row,) = await s.positions.snapshot(pid)
    assert positions_module.state_of(row) == PositionState(
        Decimal(-4), Decimal(100), Decimal(0), T0
    )


async def test_fills_and_orders_of_one_order_count_exactly(
    db: Database, trader: tuple[Actor, int, int], engine: AsyncEngine
) -> None:
    actor, pid, inst = trader
    async with db.session(actor) as s:
        order = await s.orders.place(
            {"portfolio_id": pid, "instrument_id": inst, "side": "BUY", "quantity": "0.3"}
        )
        for i, qty in enumerate(("0.1", "0.1", "0.1")):
            await s.trades.ingest_fill(
                fill(pid, inst, "BUY", qty, "3", trade_id=f"x{i}", order_id=order.id)
            )
        order = await s.orders.get(order.id)
    assert order.filled_quantity == Decimal("0.3") and order.status == "FILLED"
    async with engine.connect() as conn:
        n = (await conn.execute(sa.select(sa.func.count()).select_from(t.trades))).scalar()
    assert n == 3


async def test_replays_read_amounts_in_canonical_form(
    db: Database, trader: tuple[Actor, int, int]
) -> None:
    """recompute's read of the trades (trimmed by PostgreSQL itself, not by Python) hands back
    the same canonical amounts as every other read: no padding to 18 places, no exponent."""
    actor, pid, inst = trader
    async with db.session(actor) as s:
        await s.trades.ingest_fill(fill(pid, inst, "BUY", "1.50", "100.10", trade_id="c1"))
        await s.trades.ingest_fill(fill(pid, inst, "BUY", "2", "300", trade_id="c2", at=at(1)))
        state = (await s.positions.recompute(pid))[(pid, inst, None)]
        rows = await s.run(lambda tx: positions_module._trades_in_canonical_order(tx.conn, pid))
    assert [(str(r.quantity), str(r.price), str(r.realized_pnl)) for r in rows] == [
        ("1.5", "100.1", "0"),
        ("2", "300", "0"),
    ]
    assert (str(state.quantity), str(state.cost_basis)) == ("3.5", "750.15")


async def test_an_orders_average_fill_price_does_not_depend_on_arrival_order(
    db: Database, trader: tuple[Actor, int, int]
) -> None:
    """Σ qty·price / Σ qty rounded once: the incremental average (rounded after each fill)
    gave …810 for these fills in order and …809 reversed; the exact average is …8095625."""
    actor, pid, inst = trader
    fills = [("3", "73"), ("5", "5.333333333333333333"), ("8", "8.714285714285714286")]
    averages = []
    for name, sequence in (("in order", fills), ("reversed", fills[::-1])):
        async with db.session(actor) as s:
            order = await s.orders.place(
                {"portfolio_id": pid, "instrument_id": inst, "side": "BUY", "quantity": "16"}
            )
            for n, (quantity, price) in enumerate(sequence):
                await s.trades.ingest_fill(
                    fill(pid, inst, "BUY", quantity, price, trade_id=f"{name}-{n}",
                         order_id=order.id, at=at(n))
                )  # fmt: skip
            averages.append(await s.orders.get(order.id))
    first, second = averages
    assert first.avg_fill_price == second.avg_fill_price == Decimal("19.71130952380952381")
    assert first.fill_notional == second.fill_notional == Decimal("315.380952380952380953")
    assert first.status == second.status == "FILLED"


async def test_a_trade_dated_far_in_the_past_or_in_the_future_is_refused(db: Database) -> None:
    from dal.errors import InvalidInput

    actor = await make_user(db)
    pid = await default_portfolio(db, actor)
    iid = await make_instrument(db)
    async with db.session(actor) as s:
        for year in (1900, 2999):
            at = dt.datetime(year, 1, 1, tzinfo=dt.UTC)
            with pytest.raises(InvalidInput, match=f"exec_time {year}-01-01T00:00:00"):
                await s.trades.ingest_fill(fill(pid, iid, "BUY", "1", "1", at=at))
        soon = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)  # within the clock skew
        await s.trades.ingest_fill(fill(pid, iid, "BUY", "1", "1", at=soon))
