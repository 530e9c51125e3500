"""The bot through the real Dispatcher.feed_update, offline, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from bot.callbacks import ApproveUser, OrdersPage, PortfolioPick
from bot.recording import TEXT_LIMIT, Call
from dal.database import Database
from dal.scope import Actor
from tests.botkit import BotHarness, approved_user, joined, texts
from tests.factories import fill, make_instrument

ADMIN, ALICE, BOB, PENDING = 1001, 2001, 3001, 4001
NOW = dt.datetime.now(dt.UTC)
# The fixture's two fills happen today (UTC, the users' zone) whatever the time of day, so
# "/pnl today" sees them also in the first hours after midnight.
_MIDNIGHT = NOW.replace(hour=0, minute=0, second=0, microsecond=0)
FIRST_FILL = max(NOW - dt.timedelta(hours=2), _MIDNIGHT)
SECOND_FILL = max(NOW - dt.timedelta(hours=1), FIRST_FILL)


def text_of(call: Call) -> str:
    """The call's text or caption; one without either fails the test."""
    assert call.text is not None, call
    return call.text


@pytest.fixture
async def h(db: Database) -> BotHarness:
    harness = BotHarness(db)
    harness.admin = await approved_user(db, ADMIN, admin=True)  # type: ignore[attr-defined]
    harness.alice = await approved_user(db, ALICE, username="alice")  # type: ignore[attr-defined]
    harness.bob = await approved_user(db, BOB, username="bob")  # type: ignore[attr-defined]
    async with db.session(Actor.system()) as s:
        await s.users.register(PENDING, "pat", chat_id=PENDING)
    btc = await make_instrument(db, "BTCUSDT")
    eth = await make_instrument(db, "ETHUSDT")
    harness.btc, harness.eth = btc, eth  # type: ignore[attr-defined]
    for actor, price in ((harness.alice, "100"), (harness.bob, "200")):  # type: ignore[attr-defined]
        async with db.session(actor) as s:
            pid = (await s.portfolios.default()).id
            await s.orders.place(
                {
                    "portfolio_id": pid,
                    "instrument_id": eth,
                    "side": "BUY",
                    "type": "LIMIT",
                    "quantity": "3",
                    "price": price,
                    "client_order_id": f"open-{price}",
                }
            )
            await s.trades.ingest_fill(
                fill(
                    pid,
                    btc,
                    "BUY",
                    "2",
                    price,
                    at=FIRST_FILL,
                    trade_id="t1",
                    fee=Decimal("0.5"),
                    fee_currency="USDT",
                )
            )
            await s.trades.ingest_fill(
                fill(
                    pid,
                    btc,
                    "SELL",
                    "1",
                    str(int(price) * 11 // 10),
                    at=SECOND_FILL,
                    trade_id="t2",
                )
            )
    return harness


async def test_unknown_user_registers_and_admin_approves_with_the_button(
    h: BotHarness,
) -> None:
    calls = await h.send(5001, "/positions")
    assert texts(calls) == ["Welcome to tradebook. Send /start to register."]
    calls = await h.send(5001, "/Start", username="newbie")  # commands ignore case
    to_user = [c for c in calls if c.chat_id == 5001]
    to_admin = [c for c in calls if c.chat_id == ADMIN]
    assert "waiting for approval" in joined(to_user)
    assert "@newbie" in joined(to_admin)
    ((label, data), (reject_label, reject)) = to_admin[0].buttons()
    assert (label, reject_label) == ("Approve", "Reject") and data and reject
    # A non-admin pressing the same button gets nothing approved.
    calls = await h.press(ALICE, data)
    assert "not available" in joined(calls)
    assert "waiting" in joined(await h.send(5001, "/help"))
    calls = await h.press(ADMIN, data)
    assert "Approved" in joined(calls)
    assert any(c.chat_id == 5001 and "approved" in text_of(c) for c in calls)
    assert "Main" in joined(await h.send(5001, "/portfolios"))


async def test_reject_locks_the_newcomer_out_and_admins_manage_users(h: BotHarness) -> None:
    calls = await h.send(5002, "/start", username="stranger")
    (_, (_, reject)) = next(c for c in calls if c.chat_id == ADMIN).buttons()
    assert reject is not None
    assert "Rejected 5002 @stranger — deactivated" in joined(await h.press(ADMIN, reject))
    assert "deactivated" in joined(await h.send(5002, "/help"))
    # Approving a deactivated user does not quietly let them back: /reactivate does.
    assert "is deactivated; /reactivate them first" in joined(await h.send(ADMIN, "/approve 5002"))
    assert "Reactivated 5002 @stranger — pending" in joined(await h.send(ADMIN, "/reactivate 5002"))
    assert "Approved 5002 @stranger — approved" in joined(await h.send(ADMIN, "/approve 5002"))
    assert "Promoted 5002 @stranger — admin" in joined(await h.send(ADMIN, "/promote @stranger"))
    assert "Demoted 5002 @stranger — approved" in joined(await h.send(ADMIN, "/demote 5002"))
    # The last active admin cannot demote or deactivate themself.
    text = joined(await h.send(ADMIN, f"/demote {ADMIN}"))
    assert "the last active admin cannot be demoted" in text
    assert "admin" in joined(await h.send(ADMIN, "/users"))
    # Non-admins: the commands are not theirs.
    assert "Promoted" not in joined(await h.send(ALICE, "/promote 5002"))


async def test_pending_user_gets_one_clear_reply(h: BotHarness) -> None:
    for command in ("/positions", "/orders", "/pnl", "/risk", "/approve 2001"):
        calls = await h.send(PENDING, command)
        assert texts(calls) == [
            "Your account is waiting for approval by an admin. You will get a message here "
            "once approved."
        ]


async def test_positions_show_only_the_users_own(h: BotHarness) -> None:
    alice = joined(await h.send(ALICE, "/positions"))
    bob = joined(await h.send(BOB, "/positions"))
    assert "BTCUSDT [manual]" in alice and "qty 1  avg 100" in alice
    assert "realized +10 USDT" in alice
    assert "avg 200" in bob and "avg 100" not in bob


async def test_orders_default_open_status_filter_and_bad_status(h: BotHarness) -> None:
    text = joined(await h.send(ALICE, "/orders"))
    assert "BUY 3 ETHUSDT LIMIT @100" in text and "@200" not in text
    assert "None." in joined(await h.send(ALICE, "/orders filled"))
    bad = joined(await h.send(ALICE, "/orders DONE"))
    assert "Unknown status DONE" in bad and "Usage: /orders" in bad


async def test_orders_page_callback_with_someone_elses_portfolio(h: BotHarness) -> None:
    async with h.db.session(h.bob) as s:  # type: ignore[attr-defined]
        bob_pid = (await s.portfolios.default()).id
    forged = OrdersPage(portfolio_id=bob_pid, status="OPEN", offset=0).pack()
    calls = await h.press(ALICE, forged)
    assert f"no portfolio #{bob_pid}" in joined(calls)
    assert "@200" not in joined(calls)
    forged_pick = PortfolioPick(portfolio_id=bob_pid).pack()
    assert f"no portfolio #{bob_pid}" in joined(await h.press(ALICE, forged_pick))


async def test_pnl_per_currency_with_chart(h: BotHarness) -> None:
    calls = await h.send(ALICE, "/pnl today")
    text = joined(calls)
    assert "+10 USDT" in text and "Fees" in text and "0.5 USDT" in text
    assert "Trades: 2" in text and "BTCUSDT: +10 USDT (2)" in text
    photo = [c for c in calls if c.name == "SendPhoto"]
    assert len(photo) == 1
    (upload,) = photo[0].files.values()
    assert upload.data.startswith(b"\x89PNG")
    assert photo[0].params["caption"] == "Cumulative realized PnL per trade, today"
    calls = await h.send(ALICE, "/pnl 30d")
    (daily,) = [c for c in calls if c.name == "SendPhoto"]
    assert daily.params["caption"] == "Cumulative realized PnL per day, last 30 days"
    assert "+20 USDT" in joined(await h.send(BOB, "/pnl 7d"))
    bad = joined(await h.send(ALICE, "/pnl yesterday"))
    assert "unknown period" in bad and "Usage: /pnl" in bad
    assert "No trades" in joined(await h.send(ALICE, "/pnl 2020-01-01..2020-01-31"))


async def test_risk_lists_policies_and_breaches(h: BotHarness) -> None:
    async with h.db.session(h.alice) as s:  # type: ignore[attr-defined]
        pid = (await s.portfolios.default()).id
        await s.risk.create_policy(
            {"name": "base", "scope_type": "USER", "config": {"max_daily_loss": "0.03"}}
        )
        await s.risk.create_policy(
            {
                "name": "tight",
                "scope_type": "PORTFOLIO",
                "scope_id": pid,
                "config": {"max_order_notional": "500", "mode": "warn"},
            }
        )
        verdict = await s.risk.evaluate(
            {"portfolio_id": pid, "symbol": "BTCUSDT", "side": "BUY", "quantity": "10"},
            {h.btc: Decimal("100")},  # type: ignore[attr-defined]
        )
        await s.risk.record_breach(verdict, pid, h.btc)  # type: ignore[attr-defined]
    text = joined(await h.send(ALICE, "/risk"))
    assert "max_daily_loss 3% block — user policy base" in text
    assert "max_order_notional 500 warn — portfolio policy tight" in text
    assert "WARNED tight" in text
    assert "No risk policies" in joined(await h.send(BOB, "/risk"))


async def test_portfolio_switching(h: BotHarness) -> None:
    async with h.db.session(h.alice) as s:  # type: ignore[attr-defined]
        (account,) = await s.accounts.list()
        side = await s.portfolios.create({"name": "Side <b>", "account_id": account.id})
    calls = await h.send(ALICE, "/portfolio")
    labels = [label for label, _ in calls[0].buttons()]
    assert labels == ["• Main", "Side <b>"]
    calls = await h.press(ALICE, PortfolioPick(portfolio_id=side.id).pack())
    assert "Current portfolio: Side <b>" in joined(calls)  # escaped markup, shown verbatim
    assert "No open positions" in joined(await h.send(ALICE, "/positions"))
    assert "BTCUSDT" in joined(await h.send(ALICE, "/positions Main"))
    assert "no portfolio named 'Nope'" in joined(await h.send(ALICE, "/portfolio Nope"))
    assert "Current portfolio: Main" in joined(await h.send(ALICE, "/portfolio main"))


async def test_timezone(h: BotHarness) -> None:
    assert "Europe/Berlin" in joined(await h.send(ALICE, "/tz Europe/Berlin"))
    assert "unknown time zone" in joined(await h.send(ALICE, "/tz Mars/Base"))
    assert "Your time zone is Europe/Berlin" in joined(await h.send(ALICE, "/tz"))


async def test_lists(h: BotHarness) -> None:
    async with h.db.session(h.alice) as s:  # type: ignore[attr-defined]
        await s.alerts.create(
            {
                "name": "btc<70k>",
                "type": "PRICE",
                "config": {"symbol": "BTCUSDT", "op": "above", "price": "70000"},
            }
        )
        await s.schedules.create(
            {"name": "daily", "cron": "0 18 * * *", "config": {"report": "pnl", "period": "today"}}
        )
        await s.screeners.create({"name": "cheap", "config": {"max_price": "1"}})
    assert "BTCUSDT above 70000 — on" in joined(await h.send(ALICE, "/alerts"))
    assert "report pnl today at 0 18 * * * (UTC)" in joined(await h.send(ALICE, "/schedules"))
    assert "cheap" in joined(await h.send(ALICE, "/screeners"))
    assert "None yet." in joined(await h.send(BOB, "/alerts"))


async def test_admin_commands_and_non_admins(h: BotHarness) -> None:
    for command in (
        "/pending",
        "/approve 4001",
        "/users",
        "/addbroker KRAKEN Kraken",
        "/addinstrument SOLUSDT BINANCE CRYPTO USDT",
        "/accounts 2001",
    ):
        calls = await h.send(ALICE, command)
        assert texts(calls) == ["Unknown command or not allowed. Send /help for the commands."]
    assert "@pat" in joined(await h.send(ADMIN, "/pending"))
    calls = await h.send(ADMIN, "/approve @pat")
    assert "Approved 4001 @pat" in joined(calls)
    assert any(c.chat_id == PENDING for c in calls)  # the user is told
    assert "4001 @pat — approved" in joined(await h.send(ADMIN, "/users"))
    assert "Revoked" in joined(await h.send(ADMIN, "/revoke 4001"))
    assert "Usage: /approve" in joined(await h.send(ADMIN, "/approve"))
    assert "no user 999" in joined(await h.send(ADMIN, "/approve 999"))
    assert "Added broker KRAKEN" in joined(await h.send(ADMIN, "/addbroker kraken Kraken"))
    assert "KRAKEN — Kraken" in joined(await h.send(ADMIN, "/brokers"))
    added = joined(await h.send(ADMIN, "/addinstrument SOLUSDT BINANCE CRYPTO USDT 0.01 0.1"))
    assert "Added SOLUSDT on BINANCE" in added
    bad = joined(await h.send(ADMIN, "/addinstrument SOLUSDT BINANCE BOND USDT"))
    assert "asset_type" in bad and "Usage: /addinstrument" in bad
    assert "SOLUSDT BINANCE CRYPTO USDT tick 0.01 lot 0.1" in joined(
        await h.send(ADMIN, "/instruments")
    )
    assert "Paper — PAPER" in joined(await h.send(ADMIN, "/accounts @alice"))
    assert "Admin" in joined(await h.send(ADMIN, "/help"))
    assert "Admin" not in joined(await h.send(ALICE, "/help"))


async def test_admin_callback_from_non_admin_is_refused(h: BotHarness) -> None:
    data = ApproveUser(action="approve", telegram_id=PENDING).pack()
    calls = await h.press(BOB, data)
    assert "not available" in joined(calls)
    async with h.db.session(Actor.system()) as s:
        pending = await s.users.lookup(PENDING)
        assert pending is not None and pending.approved_at is None


async def test_unexpected_error_gets_a_reference(
    h: BotHarness, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("kaboom")

    monkeypatch.setattr("bot.routers.positions.positions_report", boom)
    text = joined(await h.send(ALICE, "/positions"))
    assert text.startswith("Something went wrong (ref ")
    ref = text.split("ref ")[1].rstrip(").")
    assert any(ref in r.getMessage() for r in caplog.records)
    assert "kaboom" not in text


async def test_long_replies_are_split(h: BotHarness, db: Database) -> None:
    async with db.session(Actor.system()) as s:
        ids = [
            (
                await s.instruments.create(
                    {
                        "symbol": f"COIN{i:03d}",
                        "exchange": "TEST",
                        "asset_type": "CRYPTO",
                        "currency": "USDT",
                    }
                )
            ).id
            for i in range(500)
        ]
    async with db.session(h.alice) as s:  # type: ignore[attr-defined]
        pid = (await s.portfolios.default()).id
        await s.trades.ingest_fills(
            [fill(pid, inst, "BUY", "1.123456789", "12345.678901234") for inst in ids]
        )
        for i, inst in enumerate(ids):
            await s.orders.place(
                {
                    "portfolio_id": pid,
                    "instrument_id": inst,
                    "side": "SELL",
                    "type": "STOP_LIMIT",
                    "quantity": "1.5",
                    "price": "99999",
                    "stop_price": "88888",
                    "client_order_id": f"bulk-{i}",
                }
            )
    positions = await h.send(ALICE, "/positions")
    assert len(positions) > 1
    assert all(len(c.params["text"]) <= TEXT_LIMIT for c in positions)
    assert sum(joined([c]).count("[manual]") for c in positions) == 501
    orders = await h.send(ALICE, "/orders")
    assert all(len(c.params["text"]) <= TEXT_LIMIT for c in orders)
    *cancels, (label, data) = orders[-1].buttons()
    assert len(cancels) == 15 and all(text.startswith("Cancel #") for text, _ in cancels)
    assert label == "Older ▶" and data is not None
    page2 = await h.press(ALICE, data)
    assert "16–30" in joined(page2)
    assert all(len(c.params.get("text", "")) <= TEXT_LIMIT for c in page2)


async def test_no_handler_can_reach_the_unscoped_database(h: BotHarness) -> None:
    from typing import Any

    from aiogram import Router
    from aiogram.filters import Command

    seen: dict[str, Any] = {}
    probe = Router(name="probe")

    @probe.message(Command("probe"))
    async def capture(message: Any, **data: Any) -> None:
        seen.update(data)

    h.dp.sub_routers.insert(0, probe)
    probe._parent_router = h.dp
    await h.send(ALICE, "/probe")
    assert "dal" in seen and seen["dal"].actor.user_id is not None
    leaks = [k for k, v in seen.items() if isinstance(v, Database) or k == "db"]
    assert leaks == []
    # Every feature handler asks only for what it declares; none declares the database.
    for router in h.dp.chain_tail:
        for observer in router.observers.values():
            for handler in observer.handlers:
                params = handler.params
                assert "db" not in params, f"{router.name}: {handler.callback.__name__}"


async def test_an_error_echoing_a_huge_argument_still_gets_a_short_reply(h: BotHarness) -> None:
    for command in ("/tz", "/pnl", "/buy BTCUSDT", "/portfolio"):
        calls = await h.send(ALICE, f"{command} {'x' * 10_000}")
        (reply,) = texts(calls)
        assert 0 < len(reply) <= 1000, command


def test_error_replies_are_cut_per_line_and_in_total() -> None:
    from bot.app import shortened

    text = shortened("unknown zone 'x" + "y" * 5000 + "'\nUsage: /tz <zone>")
    first, usage = text.splitlines()
    assert len(first) == 300 and first.endswith("…") and usage == "Usage: /tz <zone>"
    assert len(shortened("\n".join(["z" * 200] * 10), limit=1000)) == 1000


async def test_commands_and_time_zones_ignore_case(h: BotHarness) -> None:
    assert "Welcome back" in joined(await h.send(ALICE, "/START"))
    assert "BTCUSDT [manual]" in joined(await h.send(ALICE, "/Positions"))
    assert "Time zone set to UTC." in joined(await h.send(ALICE, "/tz utc"))
    assert "Europe/Berlin" in joined(await h.send(ALICE, "/TZ europe/berlin"))
    assert "unknown time zone 'localtime'" in joined(await h.send(ALICE, "/tz localtime"))


async def test_orders_all_and_portfolio_add_without_arguments(h: BotHarness) -> None:
    text = joined(await h.send(ALICE, "/orders all"))
    assert text.startswith("Orders — Main") and "BUY 3 ETHUSDT LIMIT @100" in text
    assert "Usage: /portfolio" in joined(await h.send(ALICE, "/portfolio add"))
    assert "Usage: /portfolio" in joined(await h.send(ALICE, "/portfolio ADD"))


async def test_a_forged_page_offset_gets_a_page_not_an_error(h: BotHarness) -> None:
    async with h.db.session(h.alice) as s:  # type: ignore[attr-defined]
        pid = (await s.portfolios.default()).id
    forged = f"ord:{pid}:OPEN:{10**30}"
    text = joined(await h.press(ALICE, forged))
    assert "Something went wrong" not in text


async def test_orders_that_ended_say_why(h: BotHarness) -> None:
    """A rejected or canceled order's line in /orders carries its reason, whether it was
    refused before reaching a broker or ended there; an open order's line carries none."""
    async with h.db.session(h.alice) as s:  # type: ignore[attr-defined]
        pid = (await s.portfolios.default()).id
        order = {"portfolio_id": pid, "instrument_id": h.eth, "side": "BUY", "quantity": "1"}  # type: ignore[attr-defined]
        await s.orders.place(
            order, status="REJECTED", reason="insufficient balance: needs 5 USDT, free 1 USDT"
        )
        placed = await s.orders.place({**order, "type": "LIMIT", "price": "90"})
        await s.orders.cancel(placed.id, reason="canceled by its owner")
    rejected = joined(await h.send(ALICE, "/orders rejected"))
    assert "REJECTED 0/1" in rejected
    assert "insufficient balance: needs 5 USDT, free 1 USDT" in rejected
    assert "canceled by its owner" in joined(await h.send(ALICE, "/orders canceled"))
    open_orders = joined(await h.send(ALICE, "/orders"))
    assert "insufficient" not in open_orders and "canceled by" not in open_orders
