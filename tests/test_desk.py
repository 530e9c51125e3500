"""The order desk: restarts keep open orders alive, every cancel has an outcome, no broker
event is ever dropped, and paper time is the market's (a fill never precedes its order)."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any, Literal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dal.database import Database, ScopedDal
from dal.errors import NotFound, TradebookError
from dal.scope import Actor
from strategies.examples import REGISTRY
from tests.conftest import captured_statements
from tests.factories import Notes, default_portfolio, make_user
from tradebook.app import Trading, build_trading, stored_prices
from trading.desk import OrderDesk, event_to_json
from trading.events import BrokerEvent, FillEvent, OrderUpdate, event_from_json
from trading.feeds import RandomWalkFeed
from trading.market import Bar, Market
from trading.paper_engine import PaperConfig

T0 = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)


def trading(db: Database, notes: Notes) -> Trading:
    feed = RandomWalkFeed(length=0, start=T0, warmup=0)
    return build_trading(db, notes, feed, REGISTRY, PaperConfig(), paced=False, lockstep=True)


def bar(minute: int, price: str, symbol: str = "BTCUSDT") -> Bar:
    p = Decimal(price)
    return Bar(symbol, T0 + dt.timedelta(minutes=minute), p, p, p, p)


def limit_buy(portfolio_id: int, price: str, quantity: str = "0.01") -> dict[str, Any]:
    return {
        "portfolio_id": portfolio_id,
        "symbol": "BTCUSDT",
        "side": "BUY",
        "type": "LIMIT",
        "quantity": Decimal(quantity),
        "price": Decimal(price),
    }


async def started(db: Database, notes: Notes | None = None) -> tuple[Trading, ScopedDal, int]:
    """A started desk with one bar of BTCUSDT at 60,000, a new user's scoped DAL and their
    paper portfolio."""
    user = await make_user(db)
    pid = await default_portfolio(db, user)
    t = trading(db, notes or Notes())
    await t.start(feed=False)
    await t.on_bar(bar(1, "60000"))
    return t, db.scoped(user), pid


async def test_open_orders_are_adopted_at_start_up_and_the_kill_switch_cancels_them(
    db: Database,
) -> None:
    first, dal, pid = await started(db)
    resting = await first.desk.place(dal, limit_buy(pid, "59000"))
    other = await first.desk.place(dal, limit_buy(pid, "50000"))
    await first.settle()
    await first.stop()  # tradebook goes down with both orders open

    notes = Notes()
    second = trading(db, notes)
    await second.start(feed=False)
    assert pid in second.desk.gateways  # at once, before anyone touches the portfolio
    await second.on_bar(bar(2, "58900"))  # the resting order fills on the next bar
    assert (await dal.orders.get(resting.id)).status == "FILLED"
    outcomes = await second.desk.kill_switch(dal)
    assert [(o.order_id, o.outcome) for o in outcomes] == [(other.id, "canceled")]
    assert (await dal.orders.get(other.id)).status == "CANCELED"
    # The broker order id survived the restart: no conflict was logged or kept.
    assert "could not be applied" not in notes.joined()
    assert await dal.unapplied_events.list() == []
    await second.stop()


async def test_cancel_outcomes_canceled_closed_and_not_found(db: Database) -> None:
    t, dal, pid = await started(db)
    order = await t.desk.place(dal, limit_buy(pid, "100"))
    await t.settle()
    assert (await t.desk.cancel(dal, order.id)).line() == f"#{order.id}: canceled"
    closed = await t.desk.cancel(dal, order.id)
    assert (closed.outcome, closed.detail) == ("closed", "CANCELED")
    stranger = db.scoped(await make_user(db))
    with pytest.raises(Exception, match=f"no order #{order.id}"):
        await t.desk.cancel(stranger, order.id)
    # The portfolio's gateway is open: placing into it is still refused to anyone else.
    assert pid in t.desk.gateways
    with pytest.raises(NotFound):
        await t.desk.place(stranger, limit_buy(pid, "100"))
    with pytest.raises(NotFound):  # no order row was written for it either
        await dal.orders.get(order.id + 1)
    await t.stop()


class SilentGateway:
    """A broker that takes orders and cancels but never answers."""

    broker = "PAPER"

    def __init__(self) -> None:
        self.queue: asyncio.Queue[BrokerEvent] = asyncio.Queue()

    async def adopt(self, orders: list[Any]) -> None: ...

    async def place(self, order: Any) -> None: ...

    async def cancel(self, order: Any) -> bool:
        return True

    async def events(self) -> AsyncIterator[BrokerEvent]:
        while True:
            yield await self.queue.get()

    def event_done(self) -> None:
        self.queue.task_done()

    async def drained(self) -> None:
        await self.queue.join()

    async def close(self) -> None: ...


async def test_a_cancel_without_an_answer_is_reported_pending(db: Database) -> None:
    user = await make_user(db)
    pid = await default_portfolio(db, user)
    notes = Notes()
    desk = OrderDesk(
        db, Market(), notes, {"PAPER": lambda p, a: SilentGateway()}, cancel_answer_s=0.05
    )
    dal = db.scoped(user)
    async with db.session(Actor.system()) as s:
        await s.instruments.ensure(
            {"symbol": "BTCUSDT", "exchange": "PAPER", "asset_type": "CRYPTO", "currency": "USDT"}
        )
    order = await desk.place(dal, limit_buy(pid, "100"))
    (outcome,) = await desk.kill_switch(dal)
    assert outcome.line() == f"#{order.id}: cancel sent, no answer from the broker yet"
    async with db.session(user) as s:
        assert (await s.orders.get(order.id)).status == "NEW"  # nothing assumed

    # The broker's answer comes later: the owner is told then, once.
    canceled = OrderUpdate(
        symbol="BTCUSDT", exchange="PAPER", broker_order_id="P-1",
        client_order_id=order.client_order_id, status="CANCELED", side="BUY",
        order_type="LIMIT", quantity=order.quantity, price=order.price, stop_price=None,
        time_in_force="GTC", event_time=T0,
    )  # fmt: skip
    for _ in range(2):  # the broker sent it twice
        await desk.apply(dal, pid, canceled)
    assert notes.joined().count(f"Order #{order.id} canceled") == 1
    async with db.session(user) as s:
        assert (await s.orders.get(order.id)).status == "CANCELED"
    await desk.stop()


async def test_an_event_that_cannot_be_applied_is_kept_told_and_applied_later(
    db: Database,
) -> None:
    user = await make_user(db)
    pid = await default_portfolio(db, user)
    notes = Notes()
    desk = OrderDesk(db, Market(), notes, {}, apply_pause_s=0)
    fill = FillEvent(
        symbol="NEWCOIN",  # not an instrument yet: applying fails until it is
        exchange="PAPER",
        broker_order_id="X-1",
        client_order_id=None,
        broker_trade_id="XT-1",
        side="BUY",
        quantity=Decimal("2"),
        price=Decimal("1.000000000000000001"),
        fee=Decimal(0),
        fee_currency=None,
        exec_time=T0,
    )
    dal = db.scoped(user)
    await desk.apply(dal, pid, fill)
    (kept,) = await dal.unapplied_events.list()
    assert kept.portfolio_id == pid and "NEWCOIN" in kept.error
    assert f"could not be applied and is kept (#{kept.id})" in notes.joined()
    assert await desk.retry_kept() == 0  # still failing: kept, tried again
    (again,) = await dal.unapplied_events.list()
    assert again.attempts == 2

    async with db.session(Actor.system()) as s:
        await s.instruments.ensure(
            {"symbol": "NEWCOIN", "exchange": "PAPER", "asset_type": "CRYPTO", "currency": "USDT"}
        )
    assert await desk.retry_kept() == 1
    assert await desk.retry_kept() == 0  # exactly once
    assert await dal.unapplied_events.list() == []
    (trade,) = await dal.trades.list(pid)
    assert (trade.broker_trade_id, trade.price) == ("XT-1", Decimal("1.000000000000000001"))
    assert "Filled: BUY 2 NEWCOIN" in notes.joined()


async def test_the_owner_is_told_when_open_orders_cannot_be_followed_at_start_up(
    db: Database,
) -> None:
    first, dal, pid = await started(db)
    order = await first.desk.place(dal, limit_buy(pid, "59000"))
    await first.settle()
    await first.stop()

    def unreachable(portfolio: Any, account: Any) -> Any:
        raise TradebookError("no API keys stored for this account")

    notes = Notes()
    desk = OrderDesk(db, Market(), notes, {"PAPER": unreachable})
    await desk.start()
    await desk.stop()
    assert f"Portfolio #{pid} has open orders" in notes.joined()
    assert "(no API keys stored for this account)" in notes.joined()
    assert (await dal.orders.get(order.id)).status == "NEW"

    quiet = Notes()
    desk = OrderDesk(db, Market(), quiet, {})  # a broker without a gateway: nothing to tell
    await desk.start()
    await desk.stop()
    assert quiet.joined() == ""


def fill_of(symbol: str, trade_id: str) -> FillEvent:
    return FillEvent(symbol, "PAPER", "X-1", None, trade_id, "BUY", Decimal(1), Decimal(100),
                     Decimal(0), None, T0)  # fmt: skip


async def test_events_that_cannot_even_be_kept_are_held_and_applied_later(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = await make_user(db)
    pid = await default_portfolio(db, user)
    desk = OrderDesk(db, Market(), Notes(), {}, apply_pause_s=0)
    async with db.session(Actor.system()) as s:
        await s.instruments.ensure(
            {"symbol": "NEWCOIN", "exchange": "PAPER", "asset_type": "CRYPTO", "currency": "USDT"}
        )
    fills = [fill_of("NEWCOIN", f"XT-{i}") for i in range(3)]

    async def out_of_reach(*args: Any) -> None:
        raise ConnectionError("the database is out of reach")

    dal = db.scoped(user)
    with monkeypatch.context() as m:  # neither applying nor keeping works
        m.setattr("trading.desk.apply_fills", out_of_reach)
        m.setattr("trading.desk.apply_event", out_of_reach)
        m.setattr(type(dal.unapplied_events), "keep", out_of_reach)
        await desk.apply_fills(dal, pid, fills)  # the batch, then each fill on its own
        assert await desk.retry_kept() == 0
    assert await dal.trades.list(pid) == []
    await desk.retry_kept()
    assert sorted(t.broker_trade_id for t in await dal.trades.list(pid)) == ["XT-0", "XT-1", "XT-2"]
    await desk.retry_kept()  # nothing is held any more
    assert len(await dal.trades.list(pid)) == 3


def test_a_fill_without_a_broker_trade_id_is_refused() -> None:
    for missing in ("", "  ", "-1"):
        with pytest.raises(ValueError, match="no broker trade id"):
            FillEvent("BTCUSDT", None, "1", None, missing, "BUY", Decimal(1), Decimal(1),
                      Decimal(0), None, T0)  # fmt: skip


decimals = st.decimals(min_value=Decimal("0.000000000000000001"), max_value=Decimal(10**12))


@given(
    quantity=decimals,
    price=decimals,
    reason=st.none() | st.text(max_size=20),
    with_order=st.booleans(),
)
def test_a_kept_event_reads_back_exactly(
    quantity: Decimal, price: Decimal, reason: str | None, with_order: bool
) -> None:
    update = OrderUpdate(
        "BTCUSDT", "PAPER", "P-1", "c-1", "PARTIALLY_FILLED", "SELL", "LIMIT", quantity,
        price, None, "GTC", T0, reason,
    )  # fmt: skip
    fill = FillEvent(
        "BTCUSDT", "PAPER", "P-1", "c-1", "PT-1", "SELL", quantity, price, Decimal("0.1"),
        "USDT", T0 + dt.timedelta(microseconds=1), order=update if with_order else None,
    )  # fmt: skip
    for event in (update, fill):
        assert event_from_json(event_to_json(event)) == event


async def test_feed_time_is_the_wall_clock_one_bar_per_symbol_per_interval() -> None:
    interval = dt.timedelta(milliseconds=50)
    feed = RandomWalkFeed(interval=interval, warmup=2, seed=1)  # endless, two symbols
    before = dt.datetime.now(dt.UTC)
    bars: list[Bar] = []
    async for one in feed.stream():
        bars.append(one)
        if len(bars) == 2 * 6:
            break
    after = dt.datetime.now(dt.UTC)
    times = sorted({b.time for b in bars})
    assert len(times) == 6  # both symbols share each step's time
    assert times[0] == times[1] - interval and times[1] <= before  # warm-up: just before now
    live = times[2:]
    assert all(before <= t <= after for t in live)
    gaps = [b - a for a, b in itertools.pairwise(live)]
    assert all(gap >= interval * 0.8 for gap in gaps)  # one step per interval, not per bar


async def test_the_random_walk_continues_from_the_stored_marks(db: Database) -> None:
    t = trading(db, Notes())
    await t.start(feed=False)
    await t.on_bar(bar(1, "12345.67"))
    await t.stop()  # saves the latest marks
    prices = await stored_prices(db)
    assert prices["BTCUSDT"] == Decimal("12345.67")
    feed = RandomWalkFeed(start_prices=prices, warmup=0, start=T0)
    first_btc = next(c for c in next(iter(feed.steps())) if c.symbol == "BTCUSDT")
    assert first_btc.open == Decimal("12345.67")


async def test_a_paper_fill_is_never_stamped_before_its_order(db: Database) -> None:
    user = await make_user(db)
    pid = await default_portfolio(db, user)
    feed = RandomWalkFeed(interval=dt.timedelta(milliseconds=20), warmup=1, seed=5)
    t = build_trading(db, Notes(), feed, REGISTRY, PaperConfig())
    await t.start()
    while t.market.last_bar_time is None or t.market.last_bar_time < dt.datetime.now(dt.UTC) - (
        dt.timedelta(seconds=1)
    ):
        await asyncio.sleep(0.01)
    dal = db.scoped(user)
    order = await t.desk.place(dal, {**limit_buy(pid, "1"), "type": "MARKET", "price": None})
    for _ in range(200):
        await asyncio.sleep(0.02)
        if (await dal.orders.get(order.id)).status == "FILLED":
            break
    await t.stop()
    (trade,) = await dal.trades.list(pid)
    placed = (await dal.orders.get(order.id)).placed_at
    assert trade.exec_time >= placed


async def test_orders_beyond_the_free_balance_are_stored_rejected_and_told(
    db: Database,
) -> None:
    notes = Notes()
    t, dal, pid = await started(db, notes)
    # 0.1 at 59,000 with the paper fee (10 bps) reserves 5,905.9 of the 10,000 USDT.
    first = await t.desk.place(dal, limit_buy(pid, "59000", "0.1"))
    preview = await t.desk.preview(dal, limit_buy(pid, "59000", "0.1"))
    second = await t.desk.place(dal, limit_buy(pid, "59000", "0.1"))
    oversell = await t.desk.place(dal, {**limit_buy(pid, "70000"), "side": "SELL"})
    await t.settle()
    await t.stop()
    assert (first.status, first.reserve_price) == ("NEW", Decimal("59059"))
    needs = "insufficient balance: needs 5905.9 USDT, free 4094.1 USDT"
    assert preview.refusal == needs and preview.refused
    assert (second.status, second.meta_json["reason"]) == ("REJECTED", needs)
    assert oversell.meta_json["reason"] == "insufficient balance: needs 0.01 BTC, free 0 BTC"
    assert f"Rejected order #{second.id} (BUY 0.1 BTCUSDT): {needs}" in notes.joined()
    (usdt,) = await dal.valuation.balances(pid)
    assert (usdt.total, usdt.reserved) == (Decimal("10000"), Decimal("5905.9"))


async def test_placements_at_once_cannot_both_spend_one_free_balance(db: Database) -> None:
    """The balance lock a placement takes with its first read holds the others back: of four
    orders that each need 59 % of the balance, one is placed. On PostgreSQL a placement reads
    the checked portfolio with its policies, taking the lock, then the balances, then writes
    the order."""
    t, dal, pid = await started(db)
    await t.desk.gateway_for(pid, dal)
    with captured_statements(db) as sent:
        rows = await asyncio.gather(
            *(t.desk.place(dal, limit_buy(pid, "59000", "0.1")) for _ in range(4))
        )
    await t.settle()
    await t.stop()
    assert sorted(r.status for r in rows) == ["NEW", "REJECTED", "REJECTED", "REJECTED"]
    if db.dialect == "postgresql":
        first, *_ = [sql for sql, _ in sent if "risk_policies" in sql]
        assert "FOR NO KEY UPDATE OF portfolios" in first

        def count(part: str) -> int:
            return sum(part in sql for sql, _ in sent)

        # Per placement: the read, the balances and open orders, the order; no lock of its own.
        assert count("risk_policies") == count("UNION ALL") == count("new_order AS") == 4
        assert count("SELECT accounts.margin_leverage, accounts.base_currency \nFROM") == 0


def test_a_summary_of_many_fills_is_exact_per_order() -> None:
    from types import SimpleNamespace

    from trading.desk import fills_summary
    from trading.events import FillEvent

    def fill(trade_id: str, side: Literal["BUY", "SELL"], qty: str, price: str) -> FillEvent:
        return FillEvent(
            "BTCUSDT", "X", "9", None, trade_id, side, Decimal(qty), Decimal(price), Decimal(0),
            None, T0,
        )  # fmt: skip

    applied = [
        (fill("1", "BUY", "1", "100"), SimpleNamespace(order_id=7, realized_pnl=Decimal(0))),
        (fill("2", "BUY", "2", "101"), SimpleNamespace(order_id=7, realized_pnl=Decimal(0))),
        (fill("3", "SELL", "1", "110"), SimpleNamespace(order_id=8, realized_pnl=Decimal("9.5"))),
    ]
    assert fills_summary(applied, "LIVE") == (
        "Filled 3 times [LIVE]:\n"
        "• BUY 3 BTCUSDT at avg 100.666666666666666667 (order #7), 2 fills\n"
        "• SELL 1 BTCUSDT at avg 110 (order #8), 1 fill, realized +9.5"
    )
