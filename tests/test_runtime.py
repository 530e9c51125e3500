"""The strategy runtime end to end: strategy → risk → paper fills → trades → positions."""

from __future__ import annotations

import asyncio
import datetime as dt
from decimal import Decimal
from typing import Any, ClassVar

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from dal import schema as t
from dal.database import Database
from strategies.base import Strategy
from strategies.examples import REGISTRY
from strategies.runtime import StrategyContext
from tests.factories import make_user
from tradebook.app import Trading, build_trading
from trading.feeds import RandomWalkFeed
from trading.market import Bar
from trading.paper_engine import PaperConfig

START = dt.datetime(2024, 5, 1, tzinfo=dt.UTC)


class Crasher(Strategy):
    name: ClassVar[str] = "crasher"
    default_params: ClassVar[dict[str, Any]] = {"after": 5}

    async def on_bar(self, ctx: StrategyContext, bar: Bar) -> None:
        self.params["after"] -= 1
        if self.params["after"] <= 0:
            raise RuntimeError("boom")


class Spender(Strategy):
    """Buys a large amount on the first bar: meant to hit a risk limit."""

    name: ClassVar[str] = "spender"
    default_params: ClassVar[dict[str, Any]] = {"quantity": "5"}

    async def on_bar(self, ctx: StrategyContext, bar: Bar) -> None:
        if bar.symbol == "BTCUSDT" and not getattr(self, "done", False):
            self.done = True
            await ctx.buy("BTCUSDT", Decimal(self.params["quantity"]))


class Harness:
    def __init__(self, db: Database, length: int = 400) -> None:
        self.notes: list[tuple[int, str]] = []
        self.db = db
        self.trading = self.make(length)

    def make(self, length: int) -> Trading:
        async def notify(user_id: int, text: str, kind: str = "") -> None:
            self.notes.append((user_id, text))

        feed = RandomWalkFeed(seed=3, length=length, start=START, warmup=0)
        registry = {**REGISTRY, "crasher": Crasher, "spender": Spender}
        return build_trading(
            self.db, notify, feed, registry, PaperConfig(), paced=False, lockstep=True
        )

    async def run_to_end(self) -> None:
        self.trading.start_feed()
        await asyncio.wait_for(self.trading.market.ended.wait(), 60)
        for _ in range(500):  # let the strategies see the end and the gateways drain
            await self.trading.desk.idle()
            if not self.trading.strategies.runs:
                break
            await asyncio.sleep(0.01)
        await self.trading.desk.idle()
        await self.trading.stop()


async def test_sma_strategy_trades_on_paper_and_positions_reconcile(
    db: Database, engine: AsyncEngine
) -> None:
    user = await make_user(db)
    h = Harness(db)
    await h.trading.start(feed=False)
    row = await h.trading.strategies.start_strategy(user, "sma_cross")
    assert (row.name, row.version) == ("sma_cross", "1.0")
    await h.run_to_end()
    async with db.session(user) as s:
        pid = (await s.portfolios.default()).id
        filled = await s.orders.list(pid, "FILLED", limit=1000)
        trades = await s.trades.list(pid, limit=None)
        assert await s.positions.verify(pid) == []
        (run,) = await s.strategy_runs.list()
    assert len(filled) >= 2 and len(trades) == len(filled)
    assert all(tr.strategy_id == row.id for tr in trades)
    assert all(tr.fee > 0 and tr.fee_currency == "USDT" for tr in trades)
    assert run.status == "FINISHED"
    assert any("price data ended" in text for _, text in h.notes)
    async with engine.connect() as conn:
        audited = (
            await conn.execute(
                sa.select(sa.func.count())
                .select_from(t.audit_log)
                .where(t.audit_log.c.entity_type == "TRADE")
            )
        ).scalar()
    assert audited == len(trades)


async def test_blocked_order_is_stored_rejected_with_breach_and_notice(
    db: Database, engine: AsyncEngine
) -> None:
    user = await make_user(db)
    async with db.session(user) as s:
        await s.risk.create_policy(
            {"name": "cap", "scope_type": "USER", "config": {"max_order_notional": "1000"}}
        )
    h = Harness(db, length=5)
    await h.trading.start(feed=False)
    await h.trading.strategies.start_strategy(user, "spender")
    await h.run_to_end()
    async with db.session(user) as s:
        pid = (await s.portfolios.default()).id
        (order,) = await s.orders.list(pid, "REJECTED")
        (breach,) = await s.risk.breaches(pid)
        assert await s.trades.list(pid) == []
    assert "exceeds" in order.meta_json["reason"]
    assert breach.action == "BLOCKED" and breach.order_id == order.id
    assert any("Risk blocked" in text for _, text in h.notes)


async def test_a_crashing_strategy_stops_alone(db: Database) -> None:
    alice = await make_user(db)
    bob = await make_user(db)
    h = Harness(db, length=300)
    await h.trading.start(feed=False)
    await h.trading.strategies.start_strategy(alice, "crasher")
    await h.trading.strategies.start_strategy(bob, "sma_cross")
    await h.run_to_end()
    async with db.session(alice) as s:
        (crashed,) = await s.strategy_runs.list()
    async with db.session(bob) as s:
        (finished,) = await s.strategy_runs.list()
        pid = (await s.portfolios.default()).id
        assert await s.trades.list(pid)
    assert crashed.status == "CRASHED" and "boom" in crashed.error
    assert finished.status == "FINISHED"
    assert (alice.user_id, "Strategy crasher 1.0 crashed and was stopped: RuntimeError: boom") in (
        h.notes
    )


async def test_running_strategies_resume_after_a_restart(db: Database) -> None:
    user = await make_user(db)
    first = Harness(db, length=50)
    await first.trading.start(feed=False)
    row = await first.trading.strategies.start_strategy(user, "sma_cross")
    await first.trading.stop()  # the bot goes down; the run stays RUNNING

    second = Harness(db, length=50)
    await second.trading.start(feed=False)
    async with db.session(user) as s:
        pid = (await s.portfolios.default()).id
    assert (row.id, pid) in second.trading.strategies.runs
    await second.trading.strategies.stop_strategy(user, "sma_cross")
    async with db.session(user) as s:
        (run,) = await s.strategy_runs.list()
    assert run.status == "STOPPED"
    await second.trading.stop()


async def test_starting_another_version_with_open_positions_is_refused(db: Database) -> None:
    user = await make_user(db)
    h = Harness(db)
    await h.trading.start(feed=False)
    v1 = await h.trading.strategies.start_strategy(user, "sma_cross")
    await h.run_to_end()
    async with db.session(user) as s:
        pid = (await s.portfolios.default()).id
        held = [p for p in await s.positions.snapshot(pid) if p.strategy_id == v1.id]
        await s.strategies.create(
            {"name": "sma_cross", "version": "1.1", "params": {"fast": 3, "slow": 10}}
        )
    h2 = Harness(db)
    await h2.trading.start(feed=False)
    if held:
        with pytest.raises(Exception, match="hold positions"):
            await h2.trading.strategies.start_strategy(user, "sma_cross")
    else:
        assert (await h2.trading.strategies.start_strategy(user, "sma_cross")).version == "1.1"
    await h2.trading.stop()


async def test_an_alert_stays_quiet_for_its_cool_down_after_it_fired() -> None:
    from types import SimpleNamespace

    from strategies.alerts import AlertEngine
    from trading.market import Market

    told: list[str] = []

    async def notify(user_id: int, text: str, kind: str = "") -> None:
        told.append(text)

    engine = AlertEngine(None, Market(), None, notify, cooldown_s=300)  # type: ignore[arg-type]  # check() reads neither the database nor the desk
    crossings = iter([False, True, False, True, False, True, False])

    async def evaluate(alert: object) -> tuple[bool, str]:
        return next(crossings), "SMA 5 crossed SMA 20"

    engine.evaluate = evaluate  # type: ignore[method-assign]  # a scripted condition
    alert = SimpleNamespace(
        id=1,
        user_id=7,
        type="INDICATOR",
        config_json={"symbol": "BTCUSDT", "fast": 5, "slow": 20},
    )
    for _ in range(6):
        await engine.check(alert)
    # Five crossings (every change fires an SMA alert); the first one is told, the rest fall
    # inside the cool-down.
    assert told == ["Alert #1 BTCUSDT SMA 5/20 cross: SMA 5 crossed SMA 20"]
    engine.fired_at[1] -= 301  # the cool-down has passed: the next crossing is told
    await engine.check(alert)
    assert len(told) == 2
