"""Trading and self-service from the chat, with the runtime's paper gateway, on both engines."""

from __future__ import annotations

import csv
import datetime as dt
import io
from decimal import Decimal
from typing import Any

import pytest
from aiogram.types import ErrorEvent, TelegramObject
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.notify import Notifier
from dal.database import Database
from dal.scope import Actor
from strategies.examples import REGISTRY
from tests.botkit import BotHarness, approved_user, joined, texts
from tests.conftest import table_counts
from tradebook.app import build_trading, handler_data
from trading.feeds import RandomWalkFeed
from trading.market import Bar
from trading.paper import PaperGateway
from trading.paper_engine import PaperConfig

ALICE, BOB = 2001, 3001
T0 = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)
SECOND = dt.timedelta(seconds=1)


class Trading(BotHarness):
    """The bot plus the trading side, whose bars the test hands in one by one."""

    async def setup(self) -> None:
        self.notifier = Notifier(self.db, self.bot)
        feed = RandomWalkFeed(length=0, start=T0, warmup=0)
        self.trading = build_trading(
            self.db, self.notifier, feed, REGISTRY, PaperConfig(), paced=False, lockstep=True
        )
        self.alerts = self.trading.alerts
        self.alerts.refresh_every = self.alerts.slow_every = 0
        self.dp.workflow_data.update(handler_data(self.trading))
        await self.trading.start(feed=False)
        self.minute = 0
        self.alice = await approved_user(self.db, ALICE, username="alice")
        self.bob = await approved_user(self.db, BOB, username="bob")

    async def bar(self, close: str, symbol: str = "BTCUSDT") -> list:
        """One bar (open = high = low = close) through trading; the calls it caused."""
        self.minute += 1
        price = Decimal(close)
        before = len(self.session.calls)
        await self.trading.on_bar(
            Bar(symbol, T0 + dt.timedelta(minutes=self.minute), price, price, price, price)
        )
        await self.trading.settle()
        return self.session.calls[before:]

    async def confirm(self, telegram_id: int, calls: list) -> list:
        (ok, _no) = calls[-1].buttons()
        assert ok[0] == "Confirm"
        return await self.press(telegram_id, ok[1])


@pytest.fixture
async def h(db: Database) -> Trading:
    harness = Trading(db)
    await harness.setup()
    await harness.bar("60000")
    return harness


async def test_buy_confirm_fill_and_notification(h: Trading) -> None:
    calls = await h.send(ALICE, "/buy BTCUSDT 0.01")
    assert texts(calls) == ["BUY 0.01 BTCUSDT MARKET in Main [PAPER]\nRisk check: allowed."]
    assert [label for label, _ in calls[0].buttons()] == ["Confirm", "Cancel"]
    assert "Order #1 placed (NEW)." in joined(await h.confirm(ALICE, calls))
    filled = await h.bar("60100")
    assert [(c.chat_id, c.text) for c in filled if c.name == "SendMessage"] == [
        (ALICE, "Filled: BUY 0.01 BTCUSDT at 60130.05 (order #1) [PAPER]")  # open + 5 bps slippage
    ]
    text = joined(await h.send(ALICE, "/positions"))
    assert "BTCUSDT [manual]" in text and "qty 0.01  avg 60130.05" in text
    assert "No open positions" in joined(await h.send(BOB, "/positions"))


async def test_cancel_button_and_foreign_token(h: Trading, engine: AsyncEngine) -> None:
    before = await table_counts(engine)
    calls = await h.send(ALICE, "/buy BTCUSDT 0.01 @59000")
    (_ok, no) = calls[-1].buttons()
    (ok, _) = calls[-1].buttons()
    assert ok[1] is not None and no[1] is not None  # callback buttons
    assert "already handled" in joined(await h.press(BOB, ok[1]))  # not Bob's to confirm
    assert "Order not placed." in joined(await h.press(ALICE, no[1]))
    assert "already handled" in joined(await h.press(ALICE, ok[1]))  # a token works once
    assert await table_counts(engine) == before


async def test_block_is_explained_and_nothing_is_placed(h: Trading, engine: AsyncEngine) -> None:
    assert "Policy #" in joined(
        await h.send(ALICE, "/policy add portfolio Main max_order_notional=1000")
    )
    before = await table_counts(engine)
    calls = await h.send(ALICE, "/sell BTCUSDT 1")
    text = joined(calls)
    assert "Risk check: BLOCKED" in text and "exceeds the 1000 limit" in text
    assert calls[-1].buttons() == []
    assert await table_counts(engine) == before


async def test_cancel_command_and_other_users_orders(h: Trading) -> None:
    calls = await h.send(ALICE, "/buy BTCUSDT 0.01 @50000 tif=GTC")
    await h.confirm(ALICE, calls)
    async with h.db.session(h.alice) as s:
        (order,) = await s.orders.list()
    assert f"no order #{order.id}" in joined(await h.send(BOB, f"/cancel {order.id}"))
    # The answer waits for the broker's: the order is canceled when the reply says so.
    assert f"Order #{order.id}: canceled." in joined(await h.send(ALICE, f"/cancel {order.id}"))
    async with h.db.session(h.alice) as s:
        assert (await s.orders.get(order.id)).status == "CANCELED"
    again = joined(await h.send(ALICE, f"/cancel {order.id}"))
    assert f"Order #{order.id}: already ended (CANCELED)." in again
    assert "Usage: /cancel" in joined(await h.send(ALICE, "/cancel soon"))


async def test_close_flattens_the_manual_position(h: Trading) -> None:
    await h.confirm(ALICE, await h.send(ALICE, "/buy BTCUSDT 0.02"))
    await h.bar("60000")
    calls = await h.send(ALICE, "/close BTCUSDT")
    assert "SELL 0.02 BTCUSDT MARKET in Main" in joined(calls)
    await h.confirm(ALICE, calls)
    await h.bar("61000")
    assert "No open positions" in joined(await h.send(ALICE, "/positions"))
    assert "No manual ETHUSDT position" in joined(await h.send(ALICE, "/close ETHUSDT"))


async def test_fill_records_a_trade_done_elsewhere_once(h: Trading) -> None:
    async with h.db.session(Actor.system()) as s:
        await s.instruments.create(
            {"symbol": "AAPL", "exchange": "NASDAQ", "asset_type": "EQUITY", "currency": "USD"}
        )
    assert "Added account" in joined(await h.send(ALICE, "/account add IBKR Broker U123 USD"))
    assert "Added portfolio" in joined(await h.send(ALICE, "/portfolio add Stocks Broker"))
    await h.send(ALICE, "/portfolio Stocks")
    first = joined(
        await h.send(ALICE, "/fill AAPL BUY 10 189.5 fee USD 1 at 2024-05-01T15:30", message_id=777)
    )
    again = joined(
        await h.send(ALICE, "/fill AAPL BUY 10 189.5 fee USD 1 at 2024-05-01T15:30", message_id=777)
    )
    assert first.startswith("Recorded trade #") and "(already recorded)" in again
    assert "qty 10  avg 189.5" in joined(await h.send(ALICE, "/positions"))
    assert "Usage: /fill" in joined(await h.send(ALICE, "/fill AAPL HOLD 1 1"))
    await h.send(ALICE, "/portfolio Main")
    assert "trades through its gateway" in joined(await h.send(ALICE, "/fill BTCUSDT BUY 1 1"))


async def test_cash_commands(h: Trading, engine: AsyncEngine) -> None:
    assert "Deposited 250 USDT in Main; free 10250 USDT." in joined(
        await h.send(ALICE, "/deposit 250")
    )
    assert "free 10200 USDT" in joined(await h.send(ALICE, "/withdraw 50"))
    before = await table_counts(engine)
    text = joined(await h.send(ALICE, "/withdraw 1000000"))
    # The account refuses it: the reason alone, no usage line (the command was right).
    assert "free balance 10200 USDT" in text and "Usage:" not in text
    assert "Usage: /deposit" in joined(await h.send(ALICE, "/deposit 0.1.2"))
    assert await table_counts(engine) == before


async def test_policy_commands(h: Trading, engine: AsyncEngine) -> None:
    text = joined(
        await h.send(
            ALICE, "/policy add portfolio Main max_daily_loss=0.03 max_risk_per_trade=0.01"
        )
    )
    assert "max_daily_loss=0.03, max_risk_per_trade=0.01, mode=block" in text
    text = joined(await h.send(ALICE, "/policy set portfolio Main max_daily_loss=0.05"))
    # set changes the keys given and keeps the others, and says so
    assert "max_daily_loss=0.05, max_risk_per_trade=0.01, mode=block (kept:" in text
    text = joined(await h.send(ALICE, "/policy set portfolio Main max_risk_per_trade=none"))
    assert "max_daily_loss=0.05, mode=block" in text and "max_risk_per_trade" not in text
    assert "is off" in joined(await h.send(ALICE, "/policy off portfolio Main"))
    listing = joined(await h.send(ALICE, "/policy list"))
    assert "portfolio Main — off: max_daily_loss=0.05, mode=block" in listing
    assert "No risk policies" in joined(await h.send(BOB, "/policy list"))
    before = await table_counts(engine)
    assert "max_fun: is unknown here" in joined(
        await h.send(ALICE, "/policy add user me max_fun=1")
    )
    assert "no portfolio named 'Nope'" in joined(
        await h.send(ALICE, "/policy add portfolio Nope max_leverage=2")
    )
    assert "Usage: /policy" in joined(await h.send(ALICE, "/policy add galaxy X a=1"))
    assert await table_counts(engine) == before
    assert "Policy portfolio Main deleted." in joined(
        await h.send(ALICE, "/policy del portfolio Main")
    )
    assert "No risk policies" in joined(await h.send(ALICE, "/policy list"))


async def test_config_commands(h: Trading, engine: AsyncEngine) -> None:
    assert "Alert #" in joined(await h.send(ALICE, "/alert add price BTCUSDT above 70000"))
    assert "Schedule #" in joined(
        await h.send(ALICE, '/schedule add "0 18 * * *" report pnl today')
    )
    assert "Screener #" in joined(await h.send(ALICE, "/screener add cheap max_price=1"))
    before = await table_counts(engine)
    assert "Usage: /alert" in joined(await h.send(ALICE, "/alert add price BTCUSDT beyond 7"))
    assert "cron expression" in joined(await h.send(ALICE, '/schedule add "61 * * * *" report pnl'))
    assert "Usage: /screener" in joined(await h.send(ALICE, "/screener add x max_price=-1"))
    for written_otherwise in (
        "/alert add price BTCUSDT above 1e5",
        "/alert add price BTCUSDT above 1_000",
        "/policy add portfolio Main max_order_notional=1e3",
        "/screener add y max_price=1E2",
    ):
        reply = joined(await h.send(ALICE, written_otherwise))
        assert "is not a plain decimal number" in reply, (written_otherwise, reply)
    assert await table_counts(engine) == before
    async with h.db.session(h.alice) as s:
        (alert,) = await s.alerts.list()
    assert f"no alert #{alert.id}" in joined(await h.send(BOB, f"/alert off {alert.id}"))
    assert "is off" in joined(await h.send(ALICE, f"/alert off {alert.id}"))
    assert "is on" in joined(await h.send(ALICE, f"/alert ON {alert.id}"))  # subcommands too
    assert "Alert #" in joined(await h.send(ALICE, "/alert ADD price ETHUSDT below 1000"))
    assert "Schedule #" in joined(await h.send(ALICE, '/schedule Add "0 9 * * 1" REPORT pnl'))
    assert "Screener #" in joined(await h.send(ALICE, "/screener ADD dear min_price=1"))
    reply = joined(await h.send(ALICE, "/screener add two symbols=btcusdt,ETHUSDT"))
    assert "symbols=BTCUSDT,ETHUSDT." in reply
    assert "deleted" in joined(await h.send(ALICE, f"/alert del {alert.id}"))


async def test_price_alert_fires_once_per_crossing_and_rearms(h: Trading) -> None:
    await h.send(ALICE, "/alert add price BTCUSDT above 61000")
    # Bob's position alert must never be judged on Alice's fills.
    await h.send(BOB, "/alert add position BTCUSDT quantity above 0")
    await h.confirm(ALICE, await h.send(ALICE, "/buy BTCUSDT 0.01"))
    fired = []
    for close in ("60500", "61500", "62000", "60000", "61200", "61300"):
        calls = await h.bar(close)
        fired += [c for c in calls if "Alert #" in (c.text or "")]
    assert [c.chat_id for c in fired] == [ALICE, ALICE]
    assert "BTCUSDT is 61500 (above 61000)" in fired[0].text
    assert "BTCUSDT is 61200" in fired[1].text


async def test_mute_and_unreachable_and_rate_limits(h: Trading) -> None:
    assert "scheduled reports still arrive" in joined(await h.send(ALICE, "/mute"))
    assert "muted but for scheduled reports" in joined(await h.send(ALICE, "/notify"))
    await h.confirm(ALICE, await h.send(ALICE, "/buy BTCUSDT 0.01"))
    assert [c for c in await h.bar("60000") if c.name == "SendMessage"] == []
    await h.send(ALICE, "/unmute")
    await h.confirm(ALICE, await h.send(ALICE, "/buy BTCUSDT 0.01"))
    h.session.fail_next("SendMessage", 429, "Too Many Requests: retry after 1", retry_after=1)
    calls = await h.bar("60000")
    assert [c.chat_id for c in calls if c.name == "SendMessage"] == [ALICE]  # after the wait
    await h.confirm(ALICE, await h.send(ALICE, "/buy BTCUSDT 0.01"))
    h.session.fail_next("SendMessage", 403, "Forbidden: bot was blocked by the user")
    await h.bar("60000")
    async with h.db.session(Actor.system()) as s:
        alice = await s.users.lookup(ALICE)
        assert alice is not None and alice.unreachable_at is not None
    await h.confirm(ALICE, await h.send(ALICE, "/buy BTCUSDT 0.01"))
    calls = await h.bar("60000")
    assert [c for c in calls if c.name == "SendMessage"] == []  # not tried again
    await h.send(ALICE, "/start")  # the user is back: their chat works again
    async with h.db.session(Actor.system()) as s:
        alice = await s.users.lookup(ALICE)
        assert alice is not None and alice.unreachable_at is None


async def test_export_trades_csv_is_exact_and_own(h: Trading) -> None:
    await h.confirm(ALICE, await h.send(ALICE, "/buy BTCUSDT 0.01"))
    await h.bar("60000.123456789")
    await h.confirm(BOB, await h.send(BOB, "/buy BTCUSDT 0.1"))
    await h.bar("60000")
    await h.send(ALICE, "/tz Asia/Tokyo")
    calls = await h.send(ALICE, "/export trades")
    (doc,) = [c for c in calls if c.name == "SendDocument"]
    (upload,) = doc.files.values()
    rows = list(csv.DictReader(io.StringIO(upload.data.decode())))
    assert len(rows) == 1
    assert rows[0]["quantity"] == "0.01" and rows[0]["timezone"] == "Asia/Tokyo"
    assert Decimal(rows[0]["price"]) == Decimal("60000.123456789") * Decimal("1.0005")  # exact
    assert rows[0]["exec_time_utc"].endswith("Z") and rows[0]["exec_time_local"].endswith("+09:00")
    assert "Usage: /export" in joined(await h.send(ALICE, "/export everything"))


async def test_stopall_cancels_and_stops(h: Trading) -> None:
    await h.confirm(ALICE, await h.send(ALICE, "/buy BTCUSDT 0.01 @1"))
    assert "Started sma_cross 1.0" in joined(await h.send(ALICE, "/strategy start sma_cross"))
    calls = await h.send(ALICE, "/stopall")
    (yes, _no) = calls[-1].buttons()
    assert yes[1] is not None  # a callback button
    text = joined(await h.press(ALICE, yes[1]))
    assert "Strategies stopped: sma_cross 1.0" in text and "#1: canceled" in text
    async with h.db.session(h.alice) as s:
        assert await s.orders.list() == []
        (run,) = await s.strategy_runs.list()
    assert run.status == "STOPPED"


async def test_unapproved_user_cannot_trade(h: Trading, db: Database) -> None:
    async with db.session(Actor.system()) as s:
        await s.users.register(4001, "pat", chat_id=4001)
    for command in ("/buy BTCUSDT 1", "/deposit 5", "/export trades", "/alert add price X above 1"):
        assert "waiting for approval" in joined(await h.send(4001, command))


async def test_cancel_button_under_orders_and_edits(h: Trading) -> None:
    await h.confirm(ALICE, await h.send(ALICE, "/buy BTCUSDT 0.01 @50000"))
    calls = await h.send(ALICE, "/orders")
    (label, data), *_ = calls[-1].buttons()
    assert label.startswith("Cancel #") and data is not None
    assert "no order #" in joined(await h.press(BOB, data))  # Bob cannot press Alice's
    assert "Order #1: canceled." in joined(await h.press(ALICE, data))
    assert "None." in joined(await h.send(ALICE, "/orders"))
    await h.send(ALICE, "/alert add price BTCUSDT above 70000")
    await h.send(ALICE, '/schedule add "0 18 * * *" report pnl today')
    await h.send(ALICE, "/screener add cheap max_price=1")
    async with h.db.session(h.alice) as s:
        (alert,), (schedule,), (screener,) = (
            await s.alerts.list(),
            await s.schedules.list(),
            await s.screeners.list(),
        )
    text = joined(await h.send(ALICE, f"/alert set {alert.id} price=75000"))
    assert f"Alert #{alert.id} now: BTCUSDT above 75000." in text
    # Listings render from the config: the new price, never the label it was created with.
    text = joined(await h.send(ALICE, "/alerts"))
    assert f"#{alert.id} BTCUSDT above 75000 — on" in text and "70000" not in text
    text = joined(await h.send(ALICE, "/schedules"))
    assert f"#{schedule.id} report pnl today at 0 18 * * * (UTC), on, next" in text
    assert "{" not in text and "{" not in joined(await h.send(ALICE, "/screeners"))
    assert "colour: is unknown here" in joined(
        await h.send(ALICE, f"/alert set {alert.id} colour=red")
    )
    assert "runs at 5 9 * * 1-5" in joined(
        await h.send(ALICE, f'/schedule set {schedule.id} "5 9 * * 1-5"')
    )
    assert "max_price=2" in joined(await h.send(ALICE, f"/screener set {screener.id} max_price=2"))
    assert f"no screener #{screener.id}" in joined(
        await h.send(BOB, f"/screener set {screener.id} max_price=3")
    )


async def test_open_paper_orders_survive_a_restart(h: Trading, db: Database) -> None:
    await h.confirm(ALICE, await h.send(ALICE, "/buy BTCUSDT 0.01 @59000"))
    await h.confirm(ALICE, await h.send(ALICE, "/buy BTCUSDT 0.02 @58000"))
    await h.trading.stop()  # the bot goes down with both orders open

    again = Trading(db)
    again.notifier = Notifier(db, again.bot)
    again.trading = build_trading(
        db,
        again.notifier,
        RandomWalkFeed(length=0, start=T0, warmup=0),
        REGISTRY,
        PaperConfig(),
        paced=False,
        lockstep=True,
    )
    again.dp.workflow_data.update(handler_data(again.trading))
    again.alice = h.alice
    again.minute = 10
    await again.trading.start(feed=False)
    await again.bar("60000")  # the feed runs before anyone touches the portfolio
    assert "Order #2: canceled." in joined(await again.send(ALICE, "/cancel 2"))
    await again.bar("58900")  # the first order, handed back to the new book, fills
    async with db.session(h.alice) as s:
        first, second = await s.orders.get(1), await s.orders.get(2)
    assert (first.status, second.status) == ("FILLED", "CANCELED")


async def test_no_order_is_stored_for_a_portfolio_without_gateway(
    h: Trading, engine: AsyncEngine
) -> None:
    await h.send(ALICE, "/account add IBKR Broker U1 USD")
    await h.send(ALICE, "/portfolio add Stocks Broker")
    await h.send(ALICE, "/portfolio Stocks")
    before = await table_counts(engine)
    assert "no gateway for IBKR" in joined(await h.send(ALICE, "/buy BTCUSDT 1"))
    assert await table_counts(engine) == before


async def test_a_strategy_that_cannot_start_is_not_recorded_running(h: Trading) -> None:
    await h.send(ALICE, "/account add IBKR Broker U1 USD")
    await h.send(ALICE, "/portfolio add Stocks Broker")
    await h.send(ALICE, "/portfolio Stocks")
    assert "no gateway for IBKR" in joined(await h.send(ALICE, "/strategy start sma_cross"))
    assert "running" not in joined(await h.send(ALICE, "/strategies"))
    async with h.db.session(h.alice) as s:
        assert await s.strategy_runs.running() == []


async def test_alerts_of_deactivated_users_are_not_evaluated(h: Trading, db: Database) -> None:
    await h.send(BOB, "/alert add price BTCUSDT above 61000")
    admin = await approved_user(db, 9001, admin=True)
    async with db.session(admin, admin=True) as s:
        await s.users.deactivate(BOB)
    calls = await h.bar("62000")
    assert not [c for c in calls if "Alert #" in (c.text or "")]


async def test_day_orders_end_at_the_owners_current_local_midnight(h: Trading) -> None:
    await h.confirm(ALICE, await h.send(ALICE, "/buy BTCUSDT 0.01 @1"))  # gateway made in UTC
    await h.send(ALICE, "/tz Asia/Tokyo")
    await h.confirm(ALICE, await h.send(ALICE, "/buy BTCUSDT 0.01 @2 tif=DAY"))
    async with h.db.session(h.alice) as s:
        pid = (await s.portfolios.current()).id
    gateway = h.trading.desk.gateways[pid]
    assert isinstance(gateway, PaperGateway)
    (day_order,) = [o for o in gateway.engine.open_orders() if o.time_in_force == "DAY"]
    # Bars are at 2024-05-01 12:0x UTC = 21:0x in Tokyo: the day ends at 15:00 UTC.
    assert day_order.day_ends_at == dt.datetime(2024, 5, 1, 15, 0, tzinfo=dt.UTC)


async def test_close_a_strategys_position_stops_the_strategy_first(h: Trading) -> None:
    assert "Started sma_cross 1.0" in joined(await h.send(ALICE, "/strategy start sma_cross"))
    dal = h.db.scoped(h.alice)
    strategy = await dal.strategies.latest("sma_cross")
    pid = (await dal.portfolios.current()).id
    order = {"portfolio_id": pid, "symbol": "BTCUSDT", "side": "BUY", "quantity": Decimal("0.03")}
    await h.trading.desk.place(dal, {**order, "strategy_id": strategy.id})
    await h.bar("60000")
    shown = joined(await h.send(ALICE, "/positions"))
    assert "close: /close BTCUSDT sma_cross" in shown
    assert "No manual BTCUSDT position" in joined(await h.send(ALICE, "/close BTCUSDT"))
    calls = await h.send(ALICE, "/close BTCUSDT sma_cross")
    assert "SELL 0.03 BTCUSDT MARKET in Main" in joined(calls)
    assert "Confirm stops sma_cross 1.0 first." in joined(calls)
    done = joined(await h.confirm(ALICE, calls))
    assert "Stopped strategy sma_cross 1.0." in done and "placed (NEW)" in done
    await h.bar("60100")
    (position,) = [p for p in await dal.positions.snapshot(pid, include_flat=True)]
    assert (position.strategy_id, position.quantity) == (strategy.id, 0)
    (run,) = await dal.strategy_runs.list()
    assert run.status == "STOPPED"


async def test_stopall_flatten_closes_every_position(h: Trading) -> None:
    await h.confirm(ALICE, await h.send(ALICE, "/buy BTCUSDT 0.02"))
    await h.confirm(ALICE, await h.send(ALICE, "/buy BTCUSDT 0.01 @1"))
    await h.bar("60000")
    calls = await h.send(ALICE, "/stopall flatten")
    assert "then close every position" in joined(calls)
    (yes, _no) = calls[-1].buttons()
    assert yes[1] is not None
    text = joined(await h.press(ALICE, yes[1]))
    assert "#2: canceled" in text
    assert "BTCUSDT [manual] in Main: order #3 NEW" in text
    await h.bar("60100")
    dal = h.db.scoped(h.alice)
    pid = (await dal.portfolios.current()).id
    assert await dal.positions.snapshot(pid) == []
    assert "Usage: /stopall" in joined(await h.send(ALICE, "/stopall everything"))


async def test_stopall_flatten_says_why_a_close_was_refused(h: Trading) -> None:
    await h.confirm(ALICE, await h.send(ALICE, "/buy BTCUSDT 0.02"))
    await h.bar("60000")
    await h.send(ALICE, "/policy add portfolio Main max_order_notional=100")
    (yes, _no) = (await h.send(ALICE, "/stopall flatten"))[-1].buttons()
    assert yes[1] is not None
    text = joined(await h.press(ALICE, yes[1]))
    assert "BTCUSDT [manual] in Main: order #2 REJECTED (" in text
    assert "exceeds the 100 limit" in text.split("Positions closed:")[1]


async def test_fill_is_refused_in_a_portfolio_whose_trades_go_through_a_gateway(
    h: Trading,
) -> None:
    h.trading.desk.factories["BINANCE"] = h.trading.desk.factories["PAPER"]
    await h.send(ALICE, "/account add BINANCE Spot")
    await h.send(ALICE, "/portfolio add Crypto Spot")
    await h.send(ALICE, "/portfolio Crypto")
    reply = joined(await h.send(ALICE, "/fill BTCUSDT BUY 0.001 60000"))
    assert "trades through its gateway" in reply
    dal = h.db.scoped(h.alice)
    assert await dal.trades.list((await dal.portfolios.current()).id) == []


async def test_a_portfolio_name_with_spaces_is_read_with_or_without_quotes(
    h: Trading,
) -> None:
    assert "Added account" in joined(await h.send(ALICE, "/account add IBKR Broker U1 USD"))
    assert "Added portfolio" in joined(await h.send(ALICE, '/portfolio add "My Stocks" Broker'))
    for command in ("/positions", "/balance", "/status", "/risk"):
        for name in ('"My Stocks"', "My Stocks"):
            text = joined(await h.send(ALICE, f"{command} {name}"))
            assert "My Stocks" in text and "no portfolio named" not in text, (command, text)
    assert "Current portfolio: My Stocks" in joined(await h.send(ALICE, '/portfolio "My Stocks"'))


async def test_going_live_is_refused_before_confirm_for_an_account_that_cannot(
    h: Trading,
) -> None:
    await h.send(ALICE, "/account add IBKR Broker U1 USD")
    calls = await h.send(ALICE, "/account live Broker")
    assert "'Broker' is not an exchange account" in joined(calls)
    assert not any(call.buttons() for call in calls)


async def test_balance_status_profit_and_an_oversize_order_before_confirm(h: Trading) -> None:
    await h.confirm(ALICE, await h.send(ALICE, "/buy BTCUSDT 0.1"))
    await h.bar("60000")  # fills at 60,030 (5 bps slippage), fee 6.003 USDT
    await h.bar("61000")
    text = joined(await h.send(ALICE, "/balance"))
    assert "asset      free  reserved     total  value USDT" in text
    assert "BTC         0.1         0       0.1        6100" in text
    assert "USDT   3990.997         0  3990.997    3990.997" in text
    assert "equity 10090.997 USDT" in text
    calls = await h.send(ALICE, "/buy BTCUSDT 1")
    assert calls[-1].buttons() == []  # no Confirm: the account refuses it
    assert "Rejected: insufficient balance: needs 61091.5305 USDT, free 3990.997 USDT" in joined(
        calls
    )
    text = joined(await h.send(ALICE, "/status"))
    assert "BTCUSDT [manual] long" in text
    assert "mark 61000  uPnL +97 USDT (+1.62%)" in text
    assert "close: /close BTCUSDT" in text
    text = joined(await h.send(ALICE, "/profit"))
    assert "return on net deposits +90.997 USDT (+0.91%)" in text
    assert "trades 1" in text
    await h.confirm(ALICE, await h.send(ALICE, "/sell BTCUSDT 0.05"))
    filled = joined(await h.bar("62000"))  # 61,969 after slippage
    assert "Filled: SELL 0.05 BTCUSDT at 61969 (order #2), realized +96.95 (+3.23%)" in filled
    text = joined(await h.send(ALICE, "/performance"))
    assert "BTCUSDT     +96.95 USDT       2      100%" in text
    text = joined(await h.send(ALICE, "/profit all"))
    assert "USDT: 1 won / 0 lost, win rate 100%" in text
    assert "best BTCUSDT +96.95 USDT" in text
    assert "average holding time 2m (1 closing trade)" in text  # bought at 12:02, sold 12:04
    await h.trading.save_marks()
    await h.trading.snapshot_equity()
    calls = await h.send(ALICE, "/export balances")
    (upload,) = next(c for c in calls if c.name == "SendDocument").files.values()
    assert upload.data.decode().splitlines() == [
        "portfolio,asset,free,reserved,total,value,currency",
        "Main,BTC,0.05,0,0.05,3100,USDT",
        "Main,USDT,7086.34855,0,7086.34855,7086.34855,USDT",  # 3,990.997 + 3,098.45 − 3.09845
    ]
    calls = await h.send(ALICE, "/export equity")
    (upload,) = next(c for c in calls if c.name == "SendDocument").files.values()
    today = dt.datetime.now(dt.UTC).date()
    assert upload.data.decode().splitlines() == [
        "day,timezone,portfolio,currency,equity,net_deposits",
        f"{today},UTC,Main,USDT,10186.34855,10000",
    ]
    # Bob sees his own, untouched account.
    assert "USDT   10000         0  10000       10000" in joined(await h.send(BOB, "/balance"))


async def test_profit_offers_the_equity_chart_of_the_daily_closes(h: Trading) -> None:
    async with h.db.session(h.alice) as s:
        pid = (await s.portfolios.default()).id
    assert "needs two daily equity closes" in joined(await h.send(ALICE, "/profit"))
    now = dt.datetime.now(dt.UTC)
    for days_ago, adjustment in ((2, "0"), (1, "-500"), (0, "300")):
        async with h.db.session(h.alice) as s:
            if adjustment != "0":
                await s.cash.adjust(pid, adjustment, "USDT")
            await s.equity.snapshot(pid, now - dt.timedelta(days=days_ago) + SECOND, {})
    calls = await h.send(ALICE, "/profit 7d")
    # 10,000 → 9,500 → 9,800: the largest fall is 500 of a 10,000 peak.
    assert "max drawdown 500 USDT (5%), 3 daily closes" in joined(calls)
    ((label, data),) = calls[-1].buttons()
    assert label == "Equity chart" and data is not None
    (photo,) = [c for c in await h.press(ALICE, data) if c.name == "SendPhoto"]
    assert photo.params["caption"] == "Equity and drawdown, last 7 days"
    (upload,) = photo.files.values()
    assert upload.data.startswith(b"\x89PNG")
    # Bob cannot draw Alice's chart with her button's data.
    assert f"no portfolio #{pid}" in joined(await h.press(BOB, data))


async def test_periodic_tables_and_notify_switches(h: Trading) -> None:
    lines = joined(await h.send(ALICE, "/daily 3")).splitlines()
    assert lines[1].split() == ["day", "realized", "trades", "equity"]
    today = dt.datetime.now(dt.UTC).date()  # Alice's zone is UTC; nothing traded lately
    assert [line.split()[:3] for line in lines[2:]] == [
        [str(today - dt.timedelta(days=n)), "0", "0"] for n in (2, 1, 0)
    ]
    assert "Usage: /weekly" in joined(await h.send(ALICE, "/weekly x"))
    assert "give a whole number from 1 to 60" in joined(await h.send(ALICE, "/monthly 61"))
    text = joined(await h.send(ALICE, "/notify fills off"))
    assert text == "Notifications: fills off, alerts on, reports on, risk on."
    await h.confirm(ALICE, await h.send(ALICE, "/buy BTCUSDT 0.01"))
    filled = await h.bar("60000")
    assert not [c for c in filled if c.name == "SendMessage" and c.chat_id == ALICE]
    assert "Usage: /notify" in joined(await h.send(ALICE, "/notify fills maybe"))
    assert "notifications are fills" in joined(await h.send(ALICE, "/notify trades on"))


async def test_a_screener_runs_now_and_takes_a_quoted_cron(h: Trading) -> None:
    text = joined(await h.send(ALICE, '/screener add cheap max_price=70000 cron="*/5 * * * *"'))
    assert "cron=*/5 * * * *" in text and "max_price=70000" in text
    async with h.db.session(h.alice) as s:
        (screener,) = await s.screeners.list()
    text = joined(await h.send(ALICE, f"/screener run {screener.id}"))
    assert text == f"Screener #{screener.id} cheap: BTCUSDT 60000."
    assert f"no screener #{screener.id}" in joined(
        await h.send(BOB, f"/screener run {screener.id}")
    )


async def test_numbers_are_read_strictly_and_echoed_as_values(
    h: Trading, engine: AsyncEngine
) -> None:
    before = await table_counts(engine)
    for bad in ("1_000", "1e5", "٣", "+inf", "0x10", "1,5"):
        text = joined(await h.send(ALICE, f"/deposit {bad}"))
        assert "is not a plain decimal number" in text, bad
        text = joined(await h.send(ALICE, f"/buy BTCUSDT {bad}"))
        assert "is not a plain decimal number" in text, bad
    assert "is not an id" in joined(await h.send(ALICE, "/cancel ٣"))
    assert "give a whole number" in joined(await h.send(ALICE, "/daily ٣"))
    assert await table_counts(engine) == before
    # The value, not the raw text, is echoed.
    assert "Deposited 5 USDT" in joined(await h.send(ALICE, "/deposit 5.000"))


FUZZ_TOKENS = [
    *("1", "0", "-1", "0.5", "1e5", "1_000", "٣", "+inf", "NaN", "#1", "#999999999999999999999"),
    *("99999999999999999999999", "0.0000000000000000001", "@alice", "@nobody", "BTCUSDT"),
    *("all", "ytd", "7d", "0d", "99999d", "2999-01-01..3000-01-01", "2024-02-30..2024-03-01"),
    *("on", "off", "add", "set", "del", "run", "list", "price", "above", "report", "pnl", "user"),
    *("max_price=1", "max_price=-1", 'cron="* * *"', "cron=", "=", "key=", '"', "'", "\\"),
    *("x" * 5000, "🚀", "\x00", "Main", "Europe/Berlin", "localtime", "GTC", "tif=XYZ", "@1"),
]


async def test_random_arguments_to_every_command_get_a_short_clear_reply(
    h: Trading, engine_name: str, db_url: str
) -> None:
    """A fuzz over every command (a fixed seed, so a failure reruns the same), with argument
    lists from tricky tokens and then arbitrary text: whatever the arguments, a reply comes,
    fits in one message, and is never the unexpected-error one; and a command that fails (its
    error reply comes from the error handler) writes nothing: not a row inserted, updated or
    deleted."""
    if engine_name != "sqlite":
        pytest.skip("the handlers are the same on both engines")
    import random
    import sqlite3

    from sqlalchemy.engine import make_url

    from bot.commands import COMMANDS

    # PRAGMA data_version changes whenever another connection commits a change to the file:
    # every insert, update or delete the DAL commits, whatever the table.
    watcher = sqlite3.connect(str(make_url(db_url).database))

    def version() -> int:
        return int(watcher.execute("PRAGMA data_version").fetchone()[0])

    failures: list[BaseException] = []

    async def note_failure(handler: Any, event: TelegramObject, data: dict[str, Any]) -> Any:
        assert isinstance(event, ErrorEvent)
        failures.append(event.exception)
        return await handler(event, data)

    h.dp.errors.outer_middleware(note_failure)
    before = version()
    assert "Deposited 5 USDT" in joined(await h.send(ALICE, "/deposit 5"))
    assert version() != before  # the watcher sees the DAL's commits
    assert "Usage: /deposit" in joined(await h.send(ALICE, "/deposit"))
    assert len(failures) == 1  # and failed commands are told apart

    rng = random.Random(30)
    problems = []
    failed = 0

    def random_text() -> str:  # any characters a chat can carry, quotes and controls included
        return "".join(
            chr(rng.choice([rng.randint(32, 126), rng.randint(0x80, 0x2FFF), rng.randint(1, 31)]))
            for _ in range(rng.randint(1, 40))
        )

    for i in range(800):
        command = rng.choice(COMMANDS)
        if i < 600:
            args = " ".join(rng.choice(FUZZ_TOKENS) for _ in range(rng.randint(0, 4)))
        else:
            args = random_text()
        sender = ALICE  # admin commands: "not allowed" is their clear reply
        text = f"/{command.name} {args}".strip()
        before, failures_before = version(), len(failures)
        calls = await h.send(sender, text)
        if len(failures) > failures_before:
            failed += 1
            if version() != before:
                reason = type(failures[-1]).__name__
                problems.append(f"{text[:80]!r}: failed ({reason}) but wrote to the database")
        replies = [c for c in calls if c.name in ("SendMessage", "SendPhoto", "SendDocument")]
        shown = joined(calls)
        if not replies:
            problems.append(f"{text[:80]!r}: no reply")
        elif "Something went wrong" in shown:
            problems.append(f"{text[:80]!r}: {shown[:120]!r}")
        elif any(len(c.text or "") > 4096 for c in replies):
            problems.append(f"{text[:80]!r}: a reply over 4,096 characters")
    watcher.close()
    assert problems == [], "\n".join(problems[:20])
    assert failed >= 100  # many random arguments are refused: the check above ran often


async def test_status_names_a_deactivated_strategys_position(h: Trading) -> None:
    from tests.factories import fill, make_strategy

    strategy = await make_strategy(h.db, h.alice, name="retired")
    async with h.db.session(h.alice) as s:
        pid = (await s.portfolios.default()).id
        btc = (await s.instruments.get(symbol="BTCUSDT")).id
        await s.trades.ingest_fill(fill(pid, btc, "BUY", "0.01", "60000", strategy_id=strategy))
        await s.strategies.set_active(strategy, False)
    text = joined(await h.send(ALICE, "/status"))
    assert "BTCUSDT [retired] long" in text and "close: /close BTCUSDT retired" in text
