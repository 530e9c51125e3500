"""The Binance gateway end to end against a local fake of Binance's documented API
(tests/fake_binance.py): the desk → the gateway → ccxt → the fake → the user-data stream →
the desk → the DAL, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from bot.confirmations import Confirmations
from dal.database import Database, ScopedDal
from dal.errors import Conflict, InvalidInput, NotFound
from dal.scope import Actor
from strategies.examples import REGISTRY
from strategies.runtime import StrategyRuntime
from tests.botkit import BotHarness, approved_user, joined
from tests.factories import Notes, make_user, wait_until
from tests.fake_binance import API_KEY, API_SECRET, FakeBinance, SymbolRules
from trading.binance_client import binance_account_check
from trading.binance_gateway import BinanceGateway, binance_gateways
from trading.brokers import binance_rest
from trading.desk import OrderDesk
from trading.events import FillEvent
from trading.market import Bar, Market

D = Decimal


@dataclass
class Live:
    db: Database
    fake: FakeBinance
    desk: OrderDesk
    dal: ScopedDal
    user: Actor
    admin: Actor
    pid: int
    notes: Notes
    market: Market
    ids: dict[str, int]

    async def gateway(self) -> BinanceGateway:
        gateway = await self.desk.gateway_for(self.pid, self.dal)
        assert isinstance(gateway, BinanceGateway)
        await wait_for(lambda: gateway.caught_up > 0)
        return gateway

    def order(
        self, side: str, quantity: str, price: str | None = None, **kw: Any
    ) -> dict[str, Any]:
        return {
            "portfolio_id": self.pid,
            "symbol": kw.pop("symbol", "BTCUSDT"),
            "exchange": "BINANCE",
            "side": side,
            "type": "LIMIT" if price else "MARKET",
            "quantity": D(quantity),
            "price": D(price) if price else None,
            **kw,
        }

    async def trades(self) -> list[Any]:
        return await self.dal.trades.list(self.pid, limit=None)

    async def reconnect(self, gateway: BinanceGateway) -> None:
        """The stream drops (and is no longer muted); returns once the gateway has reconnected,
        caught up and the desk has applied what the catch-up brought."""
        caught_up = gateway.caught_up
        await self.fake.drop_stream()
        self.fake.mute_stream = False
        await wait_for(lambda: gateway.caught_up > caught_up)
        await self.desk.idle()

    async def settled(self, condition: Callable[[], bool] | None = None) -> None:
        if condition is not None:
            await wait_for(condition)
        await asyncio.sleep(0.05)
        await self.desk.idle()


async def wait_for(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    await wait_until(condition, timeout)


async def start_desk(
    live_db: Database, fake: FakeBinance, notes: Notes, market: Market
) -> OrderDesk:
    factory = binance_gateways(
        live_db,
        notes,
        Path("/nonexistent"),
        base_url=fake.url,
        reconcile_every_s=3600,
        resolve_pause_s=0.05,
        reconnect_pause_s=0.05,
        timeout_ms=1500,
    )
    check = binance_account_check(Path("/nonexistent"), fake.url, timeout_ms=1500)
    desk = OrderDesk(
        live_db,
        market,
        notes,
        {"BINANCE": factory},
        apply_pause_s=0,
        account_checks={"BINANCE": check},
    )
    await desk.start()
    return desk


@pytest.fixture
async def live(db: Database, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Live]:
    fake = FakeBinance()
    await fake.start()
    admin = await make_user(db, admin=True)
    user = await make_user(db)
    async with db.session(user) as s:
        account = await s.accounts.create(
            {"broker": "BINANCE", "name": "spot", "base_currency": "USDT"}
        )
        portfolio = await s.portfolios.create({"name": "binance", "account_id": account.id})
        await s.cash.deposit(portfolio.id, "10000", "USDT")
    monkeypatch.setenv(f"TRADEBOOK_ACCOUNT_{account.id}_API_KEY", API_KEY)
    monkeypatch.setenv(f"TRADEBOOK_ACCOUNT_{account.id}_API_SECRET", API_SECRET)
    ids = {}
    async with db.session(Actor.system()) as s:
        for symbol in ("BTCUSDT", "ETHUSDT"):
            row = await s.instruments.create(
                {
                    "symbol": symbol,
                    "exchange": "BINANCE",
                    "asset_type": "CRYPTO",
                    "currency": "USDT",
                }
            )
            ids[symbol] = row.id
    market = Market()
    market.marks.marks.update({ids["BTCUSDT"]: D("60000"), ids["ETHUSDT"]: D("3000")})
    notes = Notes()
    desk = await start_desk(db, fake, notes, market)
    yield Live(db, fake, desk, db.scoped(user), user, admin, portfolio.id, notes, market, ids)
    await desk.stop()
    await fake.stop()


async def test_a_market_buy_fills_exactly_and_balances_follow(live: Live) -> None:
    gateway = await live.gateway()
    order = await live.desk.place(live.dal, live.order("BUY", "0.01"))
    await live.settled(lambda: len(live.fake.trades) == 1)
    await wait_for(lambda: not gateway.open)
    await live.desk.idle()
    (trade,) = await live.trades()
    assert (trade.side, trade.quantity, trade.price) == ("BUY", D("0.01"), D("60000"))
    assert (trade.fee, trade.fee_currency) == (D("0.00001"), "BTC")  # Binance: BUY fee in base
    row = await live.dal.orders.get(order.id)
    assert (row.status, row.broker_order_id) == ("FILLED", "1000")
    assert [r for r in live.fake.requests if r == ("POST", "/api/v3/order")] == [
        ("POST", "/api/v3/order")
    ]
    totals = await live.dal.valuation.totals(live.pid)
    assert totals["BTC"] == D("0.00999") and totals["USDT"] == D("9400")
    assert await live.dal.positions.verify(live.pid) == []


async def test_a_price_with_17_significant_digits_survives(live: Live) -> None:
    await live.gateway()
    live.fake.prices["BTCUSDT"] = D("60123.45678901234567")
    await live.desk.place(live.dal, live.order("BUY", "0.001"))
    await live.settled(lambda: len(live.fake.trades) == 1)
    await wait_for(lambda: bool(live.fake.trades))
    await asyncio.sleep(0.2)
    await live.desk.idle()
    (trade,) = await live.trades()
    assert trade.price == D("60123.45678901234567")
    assert str(trade.price) == "60123.45678901234567"


async def test_partial_fills_then_cancel(live: Live) -> None:
    await live.gateway()
    order = await live.desk.place(live.dal, live.order("BUY", "0.1", "59000"))
    await wait_for(lambda: bool(live.fake.orders))
    (remote,) = live.fake.orders.values()
    await live.fake.trade(remote.order_id, D("0.03"))
    await live.fake.trade(remote.order_id, D("0.02"))
    await live.settled()
    await wait_for(lambda: len(live.notes.texts) >= 2)
    await live.desk.idle()
    row = await live.dal.orders.get(order.id)
    assert (row.status, row.filled_quantity) == ("PARTIALLY_FILLED", D("0.05"))
    outcome = await live.desk.cancel(live.dal, order.id)
    assert outcome.outcome == "canceled", outcome.line()
    row = await live.dal.orders.get(order.id)
    assert (row.status, row.filled_quantity) == ("CANCELED", D("0.05"))
    assert len(await live.trades()) == 2


async def test_a_stop_limit_order_rests_until_its_stop_then_fills_at_its_limit(
    live: Live,
) -> None:
    """STOP_LIMIT goes to Binance as STOP_LOSS_LIMIT with its stop and limit prices; it rests
    (not on the book) until the price reaches the stop, then fills as a limit order. One whose
    stop the price has already reached is refused with Binance's reason."""
    await live.gateway()
    stop = live.order("BUY", "0.01", "61100", type="STOP_LIMIT", stop_price=D("61000"))
    order = await live.desk.place(live.dal, stop)
    await wait_for(lambda: bool(live.fake.orders))
    (remote,) = live.fake.orders.values()
    assert (remote.type, remote.stop_price, remote.price) == ("STOP_LOSS_LIMIT", D(61000), D(61100))
    assert not remote.working
    await live.fake.set_price("BTCUSDT", D("60900"))  # below the stop: nothing happens
    await live.settled()
    assert (await live.dal.orders.get(order.id)).status == "NEW" and not live.fake.trades
    await live.fake.set_price("BTCUSDT", D("61050"))  # the stop is reached; the limit crosses
    await live.settled(lambda: len(live.fake.trades) == 1)
    await wait_for(lambda: len(live.notes.texts) >= 1)
    await live.desk.idle()
    row = await live.dal.orders.get(order.id)
    assert (row.status, row.filled_quantity, row.avg_fill_price) == ("FILLED", D("0.01"), D(61100))
    assert await live.dal.positions.verify(live.pid) == []

    late = live.order("BUY", "0.01", "61200", type="STOP_LIMIT", stop_price=D("61000"))
    refused = await live.desk.place(live.dal, late)
    row = await wait_status(live, refused.id, "REJECTED")
    assert row.meta_json["reason"] == "Binance -2010: Stop price would trigger immediately."
    assert f"Order #{refused.id} rejected" in live.notes.joined()  # told, once
    assert live.notes.joined().count(f"Order #{refused.id} rejected") == 1


async def test_a_stop_order_rests_until_its_stop_then_trades_at_the_market(live: Live) -> None:
    """STOP goes to Binance as STOP_LOSS with its stop price and no limit; off the book until
    the price reaches the stop, then it trades at the market price of that moment."""
    await live.gateway()
    order = await live.desk.place(
        live.dal, live.order("BUY", "0.01", type="STOP", stop_price=D(61000))
    )
    await wait_for(lambda: bool(live.fake.orders))
    (remote,) = live.fake.orders.values()
    assert (remote.type, remote.stop_price, remote.working) == ("STOP_LOSS", D(61000), False)
    await live.fake.set_price("BTCUSDT", D("60900"))  # below the stop: nothing happens
    await live.settled()
    assert (await live.dal.orders.get(order.id)).status == "NEW" and not live.fake.trades
    await live.fake.set_price("BTCUSDT", D("61050.5"))  # the stop is reached
    await live.settled(lambda: len(live.fake.trades) == 1)
    row = await wait_status(live, order.id, "FILLED")
    assert (row.filled_quantity, row.avg_fill_price) == (D("0.01"), D("61050.5"))
    assert await live.dal.positions.verify(live.pid) == []


async def test_what_the_symbol_does_not_offer_is_refused_before_it_is_sent(live: Live) -> None:
    """An order type the symbol's ``orderTypes`` lack, or a time in force Binance does not
    take, is refused in the preview (before Confirm) and, placed anyway, stored REJECTED with
    the reason without a request to Binance; the owner is told once."""
    without_stop = tuple(t for t in live.fake.rules["ETHUSDT"].order_types if t != "STOP_LOSS")
    live.fake.rules["ETHUSDT"] = replace(live.fake.rules["ETHUSDT"], order_types=without_stop)
    await live.gateway()
    stop = live.order("SELL", "0.1", symbol="ETHUSDT", type="STOP", stop_price=D(2900))
    preview = await live.desk.preview(live.dal, stop)
    reason = "Binance takes no STOP orders on ETHUSDT (it takes MARKET, LIMIT, STOP_LIMIT)"
    assert preview.refused and preview.refusal == reason
    day = live.order("BUY", "0.01", "59000", time_in_force="DAY")
    assert (await live.desk.preview(live.dal, day)).refusal == (
        "Binance takes GTC, IOC or FOK orders, not DAY"
    )
    assert (await live.desk.preview(live.dal, live.order("BUY", "0.01", "59000"))).refusal is None
    gtc = live.order("BUY", "0.01", "59000", time_in_force="gtc")  # as a strategy may write it
    assert (await live.desk.preview(live.dal, gtc)).refusal is None

    await live.desk._drop_gateway(live.pid)  # as a trading-mode switch does
    # A gateway made anew knows the symbol's order types before its first order.
    row = await live.desk.place(live.dal, stop)
    assert row.status == "REJECTED" and row.meta_json["reason"] == reason
    await live.settled()
    assert ("POST", "/api/v3/order") not in live.fake.requests
    assert live.notes.joined().count(f"Rejected order #{row.id}") == 1


async def test_fills_missed_while_the_stream_was_down_are_recovered_exactly_once(
    live: Live,
) -> None:
    gateway = await live.gateway()
    order = await live.desk.place(live.dal, live.order("BUY", "0.1", "59000"))
    await wait_for(lambda: bool(live.fake.orders))
    (remote,) = live.fake.orders.values()
    await live.fake.trade(remote.order_id, D("0.04"))  # seen
    await live.settled()
    await wait_for(lambda: gateway.cursor.get("BTCUSDT", 0) > 0)
    live.fake.mute_stream = True  # the next events are lost with the connection
    await live.fake.trade(remote.order_id, D("0.01"))
    await live.fake.trade(remote.order_id, D("0.05"))
    await live.reconnect(gateway)
    trades = await live.trades()
    assert sorted(t.quantity for t in trades) == [D("0.01"), D("0.04"), D("0.05")]
    row = await live.dal.orders.get(order.id)
    assert (row.status, row.filled_quantity) == ("FILLED", D("0.1"))
    # Every event sent again, duplicated and in reverse order: nothing changes.
    for event in reversed(list(live.fake.sent_events)):
        await live.fake.send_event(event)
        await live.fake.send_event(event)
    await asyncio.sleep(0.3)
    await live.desk.idle()
    assert len(await live.trades()) == 3
    assert await live.dal.positions.verify(live.pid) == []
    pending = await live.dal.unapplied_events.list()
    assert pending == [], [p.error for p in pending]


async def test_429_waits_for_retry_after_and_the_order_goes_once(live: Live) -> None:
    await live.gateway()
    live.fake.fail_next("order", 429, -1003, "Too many requests.", **{"Retry-After": "1"})
    started = asyncio.get_running_loop().time()
    await live.desk.place(live.dal, live.order("BUY", "0.01"))
    await live.settled(lambda: len(live.fake.trades) == 1)
    assert asyncio.get_running_loop().time() - started >= 1.0
    assert len(live.fake.orders) == 1
    await wait_for(lambda: len(live.notes.texts) >= 1)


async def test_418_stops_sending_and_tells_owner_and_admins(live: Live) -> None:
    await live.gateway()
    live.fake.fail_next(
        "order", 418, -1003, "Way too many requests; IP banned.", **{"Retry-After": "600"}
    )
    first = await live.desk.place(live.dal, live.order("BUY", "0.01"))
    await live.settled(lambda: "banned" in live.notes.joined())
    row = await wait_status(live, first.id, "REJECTED")
    assert "418" in row.meta_json["reason"]
    told = {user for user, text in live.notes.texts if "banned" in text}
    assert told == {live.user.user_id, live.admin.user_id}
    posts = live.fake.requests.count(("POST", "/api/v3/order"))
    second = await live.desk.place(live.dal, live.order("BUY", "0.01"))
    await wait_status(live, second.id, "REJECTED")
    assert live.fake.requests.count(("POST", "/api/v3/order")) == posts  # nothing sent


async def test_timestamp_outside_recv_window_resyncs_time_and_retries_once(live: Live) -> None:
    await live.gateway()
    live.fake.clock_offset_ms = 30_000  # the exchange's clock runs 30 s ahead of ours
    await live.desk.place(live.dal, live.order("BUY", "0.01"))
    await live.settled(lambda: len(live.fake.trades) == 1)
    assert ("GET", "/api/v3/time") in live.fake.requests


async def test_insufficient_balance_on_the_exchange_rejects_with_binances_reason(
    live: Live,
) -> None:
    await live.gateway()
    async with live.db.session(live.user) as s:
        await s.cash.deposit(live.pid, "1000000", "USDT")  # more here than on Binance
    order = await live.desk.place(live.dal, live.order("BUY", "1"))
    row = await wait_status(live, order.id, "REJECTED")
    assert row.meta_json["reason"] == (
        "Binance -2010: Account has insufficient balance for requested action."
    )
    assert not live.fake.orders


async def test_a_lost_answer_is_resolved_by_client_id_never_by_a_second_order(
    live: Live,
) -> None:
    await live.gateway()
    live.fake.accept_then_timeout = True
    live.fake.answer_delay_s = 3.0  # past the client's 1.5 s time-out
    order = await live.desk.place(live.dal, live.order("BUY", "0.01"))
    row = await wait_status(live, order.id, "FILLED")
    assert row.broker_order_id == "1000"
    await wait_for(lambda: ("GET", "/api/v3/order") in live.fake.requests)  # looked up
    await asyncio.sleep(0.2)
    await live.desk.idle()
    assert len(live.fake.orders) == 1
    assert live.fake.requests.count(("POST", "/api/v3/order")) == 1
    assert ("GET", "/api/v3/order") in live.fake.requests
    assert len(await live.trades()) == 1


async def test_an_order_binance_never_received_is_rejected(live: Live) -> None:
    await live.gateway()
    live.fake.fail_next("order", 503, -1001, "Internal error; unable to process your request.")
    order = await live.desk.place(live.dal, live.order("BUY", "0.01"))
    row = await wait_status(live, order.id, "REJECTED")
    assert "did not receive it" in row.meta_json["reason"]
    assert not live.fake.orders


async def test_a_restart_with_open_orders_recovers_what_happened_meanwhile(live: Live) -> None:
    await live.gateway()
    order = await live.desk.place(live.dal, live.order("BUY", "0.1", "59000"))
    await wait_for(lambda: bool(live.fake.orders))
    await live.settled()
    await wait_for(lambda: live.fake.orders[1000].status == "NEW")
    await live.desk.stop()
    await live.fake.trade(1000, D("0.1"))  # filled while tradebook was down
    live.desk = await start_desk(live.db, live.fake, live.notes, live.market)
    assert live.pid in live.desk.gateways  # adopted at start-up
    row = await wait_status(live, order.id, "FILLED")
    assert row.filled_quantity == D("0.1")
    assert len(await live.trades()) == 1


async def test_exchange_rules_refuse_before_anything_is_placed(live: Live) -> None:
    await live.gateway()
    async with live.db.session(Actor.system()) as s:
        btc = await s.instruments.get(live.ids["BTCUSDT"])
    assert (btc.tick_size, btc.lot_size, btc.min_notional) == (D("0.01"), D("0.00001"), D("5"))
    with pytest.raises(InvalidInput, match="below BTCUSDT's minimum of 5 USDT"):
        await live.desk.preview(live.dal, live.order("BUY", "0.00001"))
    with pytest.raises(InvalidInput, match="lot size"):
        await live.desk.place(live.dal, live.order("BUY", "0.000001"))
    with pytest.raises(InvalidInput, match="tick size"):
        await live.desk.place(live.dal, live.order("BUY", "0.01", "59000.001"))
    assert not live.fake.orders


async def test_an_account_without_keys_says_where_to_put_them(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    account = (await live.dal.portfolios.get(live.pid)).account_id
    monkeypatch.delenv(f"TRADEBOOK_ACCOUNT_{account}_API_KEY")
    with pytest.raises(NotFound, match=f"TRADEBOOK_ACCOUNT_{account}_API_KEY"):
        await live.desk.place(live.dal, live.order("BUY", "0.01"))


async def test_keys_never_reach_logs_or_the_database(
    live: Live, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await live.gateway()
    live.fake.fail_next("order", 400, -2015, "Invalid API-key, IP, or permissions for action.")
    order = await live.desk.place(live.dal, live.order("BUY", "0.01"))
    await wait_status(live, order.id, "REJECTED")
    assert API_KEY not in caplog.text and API_SECRET not in caplog.text
    assert API_KEY not in live.notes.joined() and API_SECRET not in live.notes.joined()
    row = await live.dal.orders.get(order.id)
    assert API_KEY not in str(tuple(row)) and API_SECRET not in str(tuple(row))


async def no_open_orders(live: Live) -> None:
    deadline = asyncio.get_running_loop().time() + 15
    while await live.dal.orders.open_orders(live.pid):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("an order stayed open")
        await asyncio.sleep(0.02)
    await live.desk.idle()


async def wait_status(live: Live, order_id: int, status: str) -> Any:
    row = None

    async def current() -> Any:
        return await live.dal.orders.get(order_id)

    deadline = asyncio.get_running_loop().time() + 15
    while asyncio.get_running_loop().time() < deadline:
        await live.desk.idle()
        row = await current()
        if row.status == status:
            return row
        await asyncio.sleep(0.05)
    raise AssertionError(f"order #{order_id} is {row.status if row else '?'}, not {status}")


async def test_an_exchange_account_from_the_chat_keys_test_and_going_live(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = BotHarness(live.db)
    h.dp.workflow_data.update(desk=live.desk, confirmations=Confirmations())
    carol = await approved_user(live.db, 4242)
    reply = joined(await h.send(4242, "/account add BINANCE Spot"))
    account = await live.db.scoped(carol).accounts.by_name("Spot")
    assert f"TRADEBOOK_ACCOUNT_{account.id}_API_KEY" in reply
    assert "TESTNET until /account live Spot" in reply
    assert "no API key for account 'Spot'" in joined(await h.send(4242, "/account test Spot"))
    monkeypatch.setenv(f"TRADEBOOK_ACCOUNT_{account.id}_API_KEY", API_KEY)
    monkeypatch.setenv(f"TRADEBOOK_ACCOUNT_{account.id}_API_SECRET", API_SECRET)
    assert joined(await h.send(4242, "/account test Spot")) == (
        "Keys of 'Spot' work on Binance TESTNET: trading allowed; permissions SPOT."
    )
    monkeypatch.setenv(f"TRADEBOOK_ACCOUNT_{account.id}_API_SECRET", "wrong")
    assert "refused the keys of 'Spot'" in joined(await h.send(4242, "/account test Spot"))
    await h.send(4242, "/portfolio add Bn Spot")
    assert "Bn — TESTNET BINANCE account Spot" in joined(await h.send(4242, "/portfolios"))

    calls = await h.send(4242, "/account live Spot")
    assert "Switch Spot to the LIVE exchange?" in joined(calls)
    ((_, go_live), _) = calls[-1].buttons()
    assert "LIVE" not in joined(await h.send(4242, "/account"))  # nothing changed yet
    assert "is LIVE" in joined(await h.press(4242, go_live or ""))
    assert "Bn — LIVE BINANCE account Spot" in joined(await h.send(4242, "/portfolios"))
    assert f"#{account.id} Spot — LIVE BINANCE" in joined(await h.send(4242, "/account"))
    audit = await live.db.scoped(carol).audit.recent()
    assert any(
        a.entity_type == "ACCOUNT" and (a.details_json or {}).get("trading_mode") == "live"
        for a in audit
    )
    assert "expired" in joined(await h.press(4242, go_live or ""))  # once only
    everything = "\n".join(str(call.params) for call in h.session.calls)
    assert API_KEY not in everything and API_SECRET not in everything
    assert "TESTNET" in joined(await h.send(4242, "/account testnet Spot"))


async def test_switching_mode_waits_for_open_orders_and_reconnects_in_the_new_mode(
    live: Live,
) -> None:
    await live.gateway()
    order = await live.desk.place(live.dal, live.order("BUY", "0.1", "59000"))
    await wait_for(lambda: bool(live.fake.orders))
    account = (await live.dal.portfolios.get(live.pid)).account_id
    with pytest.raises(Conflict, match="has open orders on testnet"):
        await live.desk.set_trading_mode(live.dal, account, "live")
    assert (await live.dal.accounts.get(account)).trading_mode == "testnet"
    assert (await live.desk.cancel(live.dal, order.id)).outcome == "canceled"
    await live.desk.set_trading_mode(live.dal, account, "live")
    assert live.pid not in live.desk.gateways  # closed; the next order opens it anew
    preview = await live.desk.preview(live.dal, live.order("BUY", "0.01"))
    assert preview.venue == "LIVE"


async def test_the_kill_switch_reaches_binance_per_order(live: Live) -> None:
    await live.gateway()
    first = await live.desk.place(live.dal, live.order("BUY", "0.01", "59000"))
    second = await live.desk.place(live.dal, live.order("BUY", "0.01", "58000"))
    await wait_for(lambda: len(live.fake.orders) == 2)
    outcomes = await live.desk.kill_switch(live.dal)
    assert [(o.order_id, o.outcome) for o in outcomes] == [
        (first.id, "canceled"),
        (second.id, "canceled"),
    ]
    assert {o.status for o in live.fake.orders.values()} == {"CANCELED"}


async def test_a_strategy_trades_end_to_end_and_the_books_match_the_exchange(
    live: Live,
) -> None:
    """strategy → desk → risk → Binance gateway → fake exchange → stream → fills → positions,
    equal to a recompute; the ledger's balances equal Binance's to the last digit."""
    await live.gateway()
    runtime = StrategyRuntime(live.db, live.market, live.desk, REGISTRY, live.notes)
    await runtime.start_strategy(live.user, "sma_cross", portfolio_id=live.pid)
    live.market.instrument_ids.update(live.ids)
    t0 = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    closes = [D(60000) - 10 * i for i in range(20)] + [D(59900) + 50 * i for i in range(8)]
    closes += [D(60300) - 80 * i for i in range(8)]
    for minute, close in enumerate(closes):
        live.fake.prices["BTCUSDT"] = close
        bar = Bar("BTCUSDT", t0 + dt.timedelta(minutes=minute), close, close, close, close)
        await live.market.on_bar(bar)
        await runtime.settle()
        await no_open_orders(live)  # a minute passes between bars: the order is done by then
    await wait_for(lambda: len(live.fake.trades) >= 2)
    await asyncio.sleep(0.3)
    await live.desk.idle()
    await runtime.stop()
    trades = await live.trades()
    assert [t.side for t in sorted(trades, key=lambda t: t.id)] == ["BUY", "SELL"]
    assert all(t.order_id is not None for t in trades)
    assert await live.dal.positions.verify(live.pid) == []
    ledger = await live.dal.valuation.totals(live.pid)
    exchange = {a: live.fake.free[a] + live.fake.locked[a] for a in ("USDT", "BTC")}
    assert {a: ledger.get(a, D(0)) for a in exchange} == exchange


async def test_a_binance_portfolio_trades_binances_instrument_never_the_paper_one(
    live: Live,
) -> None:
    """Found running tradebook against the fake: a symbol known only as a paper instrument
    was ordered on it and sent to Binance, whose fills then matched no order."""
    live.fake.rules["SOLUSDT"] = SymbolRules("SOLUSDT", "SOL", "USDT", D("0.01"), D("0.001"), D(5))
    live.fake.prices["SOLUSDT"] = D("150")
    async with live.db.session(Actor.system()) as s:
        paper_sol = await s.instruments.create(
            {"symbol": "SOLUSDT", "exchange": "PAPER", "asset_type": "CRYPTO", "currency": "USDT"}
        )
    await live.gateway()
    order = await live.desk.place(
        live.dal, {**live.order("BUY", "1", "150", symbol="SOLUSDT"), "exchange": None}
    )
    row = await wait_status(live, order.id, "FILLED")
    async with live.db.session(Actor.system()) as s:
        instrument = await s.instruments.get(row.instrument_id)
    assert (instrument.exchange, instrument.symbol) == ("BINANCE", "SOLUSDT")
    assert instrument.id != paper_sol.id and instrument.lot_size == D("0.001")
    assert await live.dal.unapplied_events.list() == []
    with pytest.raises(NotFound, match="DOGEUSDT is not listed on Binance Spot"):
        await live.desk.preview(live.dal, live.order("BUY", "1", "1", symbol="DOGEUSDT"))
    with pytest.raises(InvalidInput, match="trades on BINANCE, not PAPER"):
        await live.desk.preview(
            live.dal, {**live.order("BUY", "1", "150", symbol="SOLUSDT"), "exchange": "PAPER"}
        )


async def test_a_burst_of_fills_is_applied_in_batches_exactly_once(
    live: Live, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tradebook.gateway")
    gateway = await live.gateway()
    order = await live.desk.place(live.dal, live.order("BUY", "0.15", "59000"))
    await wait_for(lambda: bool(live.fake.orders))
    (remote,) = live.fake.orders.values()
    await live.settled()
    live.fake.mute_stream = True
    for _ in range(150):
        await live.fake.trade(remote.order_id, D("0.001"))
    await live.reconnect(gateway)
    assert len(await live.trades()) == 150
    row = await live.dal.orders.get(order.id)
    assert (row.status, row.filled_quantity) == ("FILLED", D("0.15"))
    assert await live.dal.positions.verify(live.pid) == []
    assert "fills applied as one batch" in caplog.text
    # One notice per batch, not 150: "Filled 100 times [TESTNET]:" / "• BUY 0.1 BTCUSDT at
    # avg 59000 (order #1), 100 fills", then the rest.
    summaries = [t for _, t in live.notes.texts if t.startswith("Filled ") and " times" in t]
    assert sum(int(t.split()[1]) for t in summaries) == 150
    assert all(f"at avg 59000 (order #{order.id})" in t for t in summaries)
    assert not any(t.startswith("Filled: BUY 0.001") for _, t in live.notes.texts)


async def test_a_batch_with_a_bad_fill_applies_the_others_and_keeps_the_bad_one(
    live: Live,
) -> None:
    await live.gateway()
    t = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)

    def fill(trade_id: str, price: str) -> FillEvent:
        return FillEvent(
            "BTCUSDT", "BINANCE", "9", None, trade_id, "BUY", D("0.01"), D(price), D(0), None, t
        )

    await live.desk.apply(live.dal, live.pid, fill("1", "60000"))
    # The second contradicts the stored trade 1 (another price under the same id).
    await live.desk.apply_fills(live.dal, live.pid, [fill("2", "60000"), fill("1", "61000")])
    assert sorted(t.broker_trade_id for t in await live.trades()) == ["1", "2"]
    (kept,) = await live.dal.unapplied_events.list()
    assert "already ingested with different price" in kept.error


async def test_an_order_binance_does_not_know_is_reported_never_assumed_canceled(
    live: Live,
) -> None:
    """As after a crash between the order row and the REST call: the row is open, Binance
    has never heard of it. Catch-up asks by id, tells the owner, changes nothing; a cancel
    then settles it."""
    await live.desk.stop()
    async with live.db.session(live.user) as s:
        ghost = await s.orders.place(
            {**live.order("BUY", "0.01", "59000"), "client_order_id": "tb-ghost"}
        )
    live.desk = await start_desk(live.db, live.fake, live.notes, live.market)
    await live.gateway()
    await wait_for(lambda: "Binance does not know it" in live.notes.joined())
    assert f"order #{ghost.id} (BUY 0.01 BTCUSDT) is open in tradebook" in live.notes.joined()
    assert (await live.dal.orders.get(ghost.id)).status == "NEW"
    assert ("GET", "/api/v3/order") in live.fake.requests
    outcome = await live.desk.cancel(live.dal, ghost.id)
    assert outcome.outcome == "canceled"
    assert (await live.dal.orders.get(ghost.id)).status == "CANCELED"


async def test_a_balance_difference_with_binance_is_reported_not_overwritten(
    live: Live,
) -> None:
    async with live.db.session(live.user) as s:
        await s.cash.withdraw(live.pid, "1000", "USDT")  # the ledger: 9,000; Binance: 10,000
    await live.gateway()
    await wait_for(lambda: "Binance reconciliation: USDT" in live.notes.joined())
    assert "USDT: Binance holds 10000, the ledger 9000" in live.notes.joined()
    assert (await live.dal.valuation.totals(live.pid))["USDT"] == D(9000)
    told = live.notes.joined().count("Binance reconciliation: USDT")
    gateway = await live.gateway()
    await gateway.catch_up()
    assert live.notes.joined().count("Binance reconciliation: USDT") == told  # once


async def test_a_trade_made_by_hand_on_binance_waits_while_its_instrument_cannot_be_written(
    live: Live,
) -> None:
    live.fake.rules["SOLUSDT"] = SymbolRules("SOLUSDT", "SOL", "USDT", D("0.01"), D("0.001"), D(5))
    live.fake.prices["SOLUSDT"] = D("150")
    gateway = await live.gateway()
    real_apply = gateway.ledger.apply_rules
    failures: list[list[dict[str, Any]]] = []

    async def flaky(rules: list[dict[str, Any]]) -> None:
        if not failures:
            failures.append(rules)
            raise RuntimeError("database briefly unavailable")
        await real_apply(rules)

    gateway.ledger.apply_rules = flaky  # type: ignore[method-assign]  # a passing outage
    gateway.reconnect_pause_s = 0.05
    # An order entered on Binance's own site: tradebook has never seen it.
    await live.fake._new_order(
        {
            "symbol": "SOLUSDT",
            "side": "BUY",
            "type": "MARKET",
            "quantity": "1",
            "newClientOrderId": "web_1",
        }
    )
    await wait_for(lambda: bool(failures))
    await wait_for(lambda: "Filled: BUY 1 SOLUSDT" in live.notes.joined())
    await live.desk.idle()
    (trade,) = await live.trades()
    order = await live.dal.orders.get(trade.order_id)
    assert (order.client_order_id, order.strategy_id, order.status) == ("web_1", None, "FILLED")


async def test_user_data_messages_reach_the_desk_in_the_order_they_came() -> None:
    """A message with nothing ahead of it is handed on as it arrives; one that comes while an
    earlier one is held (its instrument being written) waits behind it, and so does an
    unreadable one, which is reported, never emitted."""
    import json

    payload = json.loads(
        (
            Path(__file__).parent / "payloads" / "binance" / "limit_buy_2_trade_partial.json"
        ).read_text(encoding="utf-8")
    )

    def message(symbol: str, trade_id: int) -> dict[str, Any]:
        return {**payload, "s": symbol, "t": trade_id}

    release = asyncio.Event()

    class Ledger:  # only what translating touches: writing a new symbol's instrument
        async def apply_rules(self, rules: list[dict[str, Any]]) -> None:
            await release.wait()

    class Client:
        sink: Any = None

    told: list[str] = []

    async def tell(text: str) -> None:
        told.append(text)

    gateway = BinanceGateway(Client(), Ledger(), tell, tell)  # type: ignore[arg-type]  # stubs of the two
    gateway.known = {"BTCUSDT"}
    gateway.rules["SOLUSDT"] = {"symbol": "SOLUSDT"}
    emitted: list[str] = []
    gateway._emit = lambda events: emitted.extend(  # type: ignore[method-assign]  # the spy
        f"{e.symbol}:{e.broker_trade_id}" for e in events if isinstance(e, FillEvent)
    )
    sink = gateway.client.sink  # what ccxt hands each message to
    assert sink is not None
    translator = asyncio.create_task(gateway._translate())
    try:
        sink(message("BTCUSDT", 1))
        assert emitted == ["BTCUSDT:1"]  # at once: nothing ahead of it
        sink(message("SOLUSDT", 2))  # its instrument must be written first
        await asyncio.sleep(0.01)
        sink(message("BTCUSDT", 3))  # behind the held one
        sink({"e": "executionReport", "s": "BTCUSDT"})  # unreadable
        sink(message("BTCUSDT", 4))
        await asyncio.sleep(0.01)
        assert emitted == ["BTCUSDT:1"]
        release.set()
        await wait_for(lambda: len(emitted) == 4)
        assert emitted == ["BTCUSDT:1", "SOLUSDT:2", "BTCUSDT:3", "BTCUSDT:4"]
        assert len(told) == 1 and "could not be read" in told[0]
        sink(message("BTCUSDT", 5))
        assert emitted[-1] == "BTCUSDT:5"  # nothing ahead again: at once
    finally:
        translator.cancel()
        await asyncio.gather(translator, return_exceptions=True)


async def test_a_fill_fetched_again_is_neither_told_nor_handed_on_again(live: Live) -> None:
    gateway = await live.gateway()
    seen: list[str] = []

    async def listener(user_id: int, portfolio_id: int, fill: FillEvent) -> None:
        seen.append(fill.broker_trade_id)

    live.desk.fill_listeners.append(listener)
    await live.desk.place(live.dal, live.order("BUY", "0.01"))
    await live.settled(lambda: len(live.fake.trades) == 1)
    await wait_for(lambda: any(t.startswith("Filled:") for _, t in live.notes.texts))
    await live.desk.idle()
    for _ in range(2):  # what the periodic reconcile does: the recent trades again
        await gateway.catch_up(since=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=180))
        await live.desk.idle()
    assert len(await live.trades()) == 1
    assert len([t for _, t in live.notes.texts if t.startswith("Filled:")]) == 1
    assert len(seen) == 1


async def test_fills_of_an_order_that_ended_in_its_answer_are_fetched_when_the_stream_lost_them(
    live: Live,
) -> None:
    # A MARKET order filled at once: the answer says FILLED, so nothing is open to look at
    # afterwards; its fills were on a stream that had died unnoticed, and no trade of the
    # symbol was ever stored, so there is no trade id to resume from either.
    gateway = await live.gateway()
    live.fake.mute_stream = True
    order = await live.desk.place(live.dal, live.order("BUY", "0.1", symbol="ETHUSDT"))
    await wait_for(lambda: len(live.fake.trades) == 1 and not gateway.open)
    await live.reconnect(gateway)
    row = await live.dal.orders.get(order.id)
    assert (row.status, row.filled_quantity) == ("FILLED", Decimal("0.1"))
    assert len(await live.trades()) == 1


async def test_a_reconnect_resumes_every_stored_symbol_not_only_those_seen_since_start(
    live: Live,
) -> None:
    gateway = await live.gateway()
    await live.desk.place(live.dal, live.order("BUY", "0.1", symbol="ETHUSDT"))
    await live.desk.place(live.dal, live.order("BUY", "0.01"))
    await live.settled(lambda: len(live.fake.trades) == 2)
    del gateway.cursor["ETHUSDT"]  # as if ETH's trade had been stored by an earlier run
    live.fake.mute_stream = True  # the next ETH trade is lost on the stream
    await live.desk.place(live.dal, live.order("BUY", "0.1", symbol="ETHUSDT"))
    await wait_for(lambda: len(live.fake.trades) == 3 and not gateway.open)
    gateway._fills_due.clear()  # only the stored trade ids can bring it back now
    await live.reconnect(gateway)
    assert len(await live.trades()) == 3


async def test_a_cancel_that_overtakes_its_placement_waits_for_it(live: Live) -> None:
    # The kill switch right after an order: its DELETE would reach Binance before the POST,
    # find nothing, and the order, reported canceled, would then go live.
    await live.gateway()
    live.fake.order_transit_s = 0.5
    order = await live.desk.place(live.dal, live.order("BUY", "0.01", "59000"))
    outcomes = await live.desk.kill_switch(live.dal)
    assert [(o.order_id, o.outcome) for o in outcomes] == [(order.id, "canceled")]
    (remote,) = live.fake.orders.values()
    assert remote.status == "CANCELED"
    await live.desk.idle()
    assert (await live.dal.orders.get(order.id)).status == "CANCELED"


async def test_a_cancel_told_by_its_outcome_is_not_told_again(live: Live) -> None:
    # Binance reports the cancel in the DELETE answer and again on the stream.
    await live.gateway()
    order = await live.desk.place(live.dal, live.order("BUY", "0.01", "59000"))
    await live.settled(lambda: bool(live.fake.orders))
    assert (await live.desk.cancel(live.dal, order.id)).outcome == "canceled"
    await wait_for(lambda: any(e.get("X") == "CANCELED" for e in live.fake.sent_events))
    await live.desk.idle()
    assert not [t for _, t in live.notes.texts if "canceled" in t]


async def test_an_unreadable_placement_answer_is_told_and_asked_again(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    gateway = await live.gateway()
    readable = binance_rest.order_and_executed
    unreadable = [True]

    def once_unreadable(payload: dict[str, Any], reason: str | None = None) -> Any:
        if unreadable and payload.get("status") == "FILLED" and "fills" in payload:
            unreadable.clear()
            raise InvalidInput("Binance order: field required")
        return readable(payload, reason)

    monkeypatch.setattr(binance_rest, "order_and_executed", once_unreadable)
    live.fake.mute_stream = True  # only the reconciliation can tell what became of it
    order = await live.desk.place(live.dal, live.order("BUY", "0.01"))
    await wait_for(lambda: any("could not be read" in t for _, t in live.notes.texts))
    assert order.client_order_id in gateway.open  # still followed
    await gateway.catch_up(since=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=3))
    await live.desk.idle()
    assert (await live.dal.orders.get(order.id)).status == "FILLED"
    assert order.client_order_id not in gateway.open
