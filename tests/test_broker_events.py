"""Recorded Binance executionReports through the mapping into the database: statuses, trades
and positions come out right, and replaying the sequence (twice, shuffled) changes nothing."""

from __future__ import annotations

import json
import random
from decimal import Decimal
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from dal import schema as t
from dal.database import Database
from dal.scope import Actor
from dal.vocabulary import ORDER_STATUSES
from tests.conftest import table_counts
from tests.factories import make_user
from trading.brokers.binance import payload_to_events
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
