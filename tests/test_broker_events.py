"""Recorded Binance executionReports through the mapping into the database: statuses, trades
and positions come out right, and replaying the sequence (twice, shuffled) changes nothing."""

from __future__ import annotations

import json
import random
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from dal import schema as t
from dal.database import Database
from dal.errors import InvalidInput, NotFound
from dal.scope import Actor
from dal.vocabulary import ORDER_STATUSES
from tests.conftest import captured_statements, table_counts
from tests.factories import T0, make_user
from trading.brokers.binance import payload_to_events
from trading.events import FillEvent
from trading.mapping import apply_event

PAYLOADS = Path(__file__).parent / "payloads" / "binance"
SEQUENCE = [
    "limit_buy_1_new", "limit_buy_2_trade_partial", "limit_buy_3_trade_filled",
    "ws_api_limit_buy_3_trade_filled", "pending_cancel", "cancel", "rejected",
    "ioc_1_trade", "ioc_2_expired", "stp_expired_in_match", "outbound_account_position",
]  # fmt: skip


def events() -> list[Any]:
    out = []
    for name in SEQUENCE:
        out.extend(payload_to_events(json.loads((PAYLOADS / f"{name}.json").read_text())))
    return out


async def _state(engine: AsyncEngine) -> Any:
    async with engine.connect() as conn:
        orders = (
            await conn.execute(
                sa.select(
                    t.orders.c.broker_order_id, t.orders.c.status, t.orders.c.filled_quantity
                ).order_by(t.orders.c.id)
            )
        ).all()
        positions = (
            await conn.execute(
                sa.select(
                    t.positions.c.instrument_id, t.positions.c.quantity, t.positions.c.cost_basis
                ).order_by(t.positions.c.id)
            )
        ).all()
    return orders, positions, await table_counts(engine)


async def test_binance_sequence_maps_and_replays_idempotently(
    db: Database, engine: AsyncEngine
) -> None:
    async with db.session(Actor.system()) as s:
        for symbol in ("BTCUSDT", "ETHUSDT"):
            await s.instruments.create(
                {
                    "symbol": symbol,
                    "exchange": "BINANCE",
                    "asset_type": "CRYPTO",
                    "currency": "USDT",
                }
            )
    user = await make_user(db)
    async with db.session(user) as s:
        account = await s.accounts.create(
            {"broker": "BINANCE", "name": "Spot", "account_uid": "spot-1", "base_currency": "USDT"}
        )
        await s.portfolios.create({"name": "Binance", "account_id": account.id})
        later = await s.portfolios.create({"name": "Binance 2", "account_id": account.id})
        # A gateway for a whole account puts events into the account's default portfolio.
        portfolio = await s.accounts.default_portfolio(account.id)
    assert portfolio.name == "Binance" and portfolio.id != later.id
    dal = db.scoped(user)
    sequence = events()
    async with db.session(user) as s:
        assert (await s.portfolios.default()).name == "Main"  # on the Paper account
    for event in sequence:
        await apply_event(dal, portfolio.id, event)

    async with db.session(user) as s:
        limit = await s.orders.by_broker_id(
            portfolio.id,
            (await s.instruments.get(symbol="BTCUSDT", exchange="BINANCE")).id,
            "28457120034",
        )
        trades = await s.trades.list(portfolio.id, limit=None)
        (btc,) = [p for p in await s.positions.snapshot(portfolio.id)]
        statuses = {
            o.broker_order_id: o.status
            for o in await s.orders.list(portfolio.id, list(ORDER_STATUSES))
        }
        assert await s.positions.verify(portfolio.id) == []
    assert limit.status == "FILLED" and limit.filled_quantity == limit.quantity
    assert limit.strategy_id is None and limit.meta_json.get("manual") is True
    fills = [e for e in sequence if type(e).__name__ == "FillEvent"]
    assert len(trades) == len({f.broker_trade_id for f in fills}) == 3
    signed = {f.broker_trade_id: f.quantity if f.side == "BUY" else -f.quantity for f in fills}
    assert btc.quantity == sum(signed.values(), Decimal(0))
    assert statuses["17904452391"] == "CANCELED"
    assert statuses["28457300077"] == "REJECTED"
    assert statuses["28457355120"] == "EXPIRED"  # IOC: part filled, the rest expired
    assert statuses["28457401987"] == "EXPIRED"  # self-trade prevention

    before = await _state(engine)
    rng = random.Random(11)
    for _ in range(2):
        shuffled = sequence[:]
        rng.shuffle(shuffled)
        for event in shuffled:
            await apply_event(dal, portfolio.id, event)
    assert await _state(engine) == before


async def test_a_fill_of_a_placed_order_is_found_by_its_client_id_in_its_first_read(
    db: Database, engine: AsyncEngine
) -> None:
    """A live fill of an order tradebook placed goes in with two statements (the read that
    checks and locks, the writes) once the position is open; a fill for a client id the
    portfolio does not have falls back to the broker's description, writing nothing first."""
    async with db.session(Actor.system()) as s:
        btc = await s.instruments.create(
            {"symbol": "BTCUSDT", "exchange": "BINANCE", "asset_type": "CRYPTO", "currency": "USDT"}
        )
    user = await make_user(db)
    async with db.session(user) as s:
        portfolio = await s.portfolios.default()
        placed = []
        for cid in ("tb-open", "tb-live"):
            order = {"portfolio_id": portfolio.id, "instrument_id": btc.id, "side": "BUY",
                     "type": "LIMIT", "quantity": "1", "price": "100"}  # fmt: skip
            placed.append(await s.orders.place({**order, "client_order_id": cid}))
    dal = db.scoped(user)

    def trade(cid: str | None, trade_id: str, broker_order_id: str = "B-1") -> FillEvent:
        return FillEvent(
            symbol="BTCUSDT", exchange="BINANCE", broker_order_id=broker_order_id,
            client_order_id=cid, broker_trade_id=trade_id, side="BUY",
            quantity=Decimal("0.5"), price=Decimal("100"), fee=Decimal(0), fee_currency=None,
            exec_time=T0,
        )  # fmt: skip

    await apply_event(dal, portfolio.id, trade("tb-open", "1", "B-0"))  # opens the position
    with captured_statements(db) as sent:
        await apply_event(dal, portfolio.id, trade("tb-live", "2"))
    reads_and_writes = [sql.split()[0].upper() for sql, _ in sent if not sql.startswith("BEGIN")]
    if db.dialect == "postgresql":
        assert reads_and_writes == ["SELECT", "WITH"], [sql[:90] for sql, _ in sent]
    async with db.session(user) as s:
        live = await s.orders.get(placed[1].id)
        assert (live.filled_quantity, live.broker_order_id) == (Decimal("0.5"), "B-1")

    # A client id this portfolio never placed: the fill is stored without an order (nothing
    # describes one), as before the shortcut; a fill naming its order both ways is refused.
    before = await table_counts(engine)
    await apply_event(dal, portfolio.id, trade("elsewhere-1", "3", "B-9"))
    after = await table_counts(engine)
    assert after["trades"] == before["trades"] + 1 and after["orders"] == before["orders"]
    with pytest.raises(InvalidInput, match="order_id or client_order_id"):
        await dal.trades.ingest_fill(
            {"portfolio_id": portfolio.id, "instrument_id": btc.id, "side": "BUY",
             "quantity": "1", "price": "1", "exec_time": T0, "order_id": placed[0].id,
             "client_order_id": "tb-open"}
        )  # fmt: skip
    with pytest.raises(NotFound, match="no order with client id 'nope'"):
        await dal.trades.ingest_fills(
            [{"portfolio_id": portfolio.id, "instrument_id": btc.id, "side": "BUY",
              "quantity": "1", "price": "1", "exec_time": T0, "client_order_id": "nope",
              "broker_trade_id": "x"}]
        )  # fmt: skip
    assert await table_counts(engine) == after
