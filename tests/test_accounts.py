"""Paper accounts: the worked examples of docs/accounts.md, each a test, then the rules behind
them (reservations, refusals, equity snapshots, verify).

Every example starts from a new user's paper portfolio (10,000 USDT) and BTCUSDT; the fee is
10 bps, the market-order slippage 5 bps.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from dal.balances import Balance, Terms
from dal.database import Database
from dal.errors import Conflict, InvalidInput
from dal.scope import Actor
from tests.factories import T0, default_portfolio, fill, make_instrument, make_user

TERMS = Terms(fee_rate=Decimal("0.001"), slippage=Decimal("0.0005"))
MARK = Decimal("61000")


def table(balances: list[Balance]) -> dict[str, tuple[str, str, str]]:
    """asset → (total, reserved, free) as text."""
    return {b.asset: (str(b.total), str(b.reserved), str(b.free)) for b in balances}


async def paper_account(db: Database) -> tuple[Actor, int, int]:
    user = await make_user(db)
    btc = await make_instrument(db, "BTCUSDT")
    return user, await default_portfolio(db, user), btc


async def bought(db: Database) -> tuple[Actor, int, int]:
    """Example 2's state: 0.1 BTC bought at 60,000 with a 6 USDT fee."""
    user, pid, btc = await paper_account(db)
    async with db.session(user) as s:
        await s.trades.ingest_fill(
            fill(pid, btc, "BUY", "0.1", "60000", fee=Decimal("6"), fee_currency="USDT")
        )
    return user, pid, btc


def order(pid: int, btc: int, side: str, quantity: str, **kw: Any) -> dict[str, Any]:
    return {"portfolio_id": pid, "instrument_id": btc, "side": side, "quantity": quantity, **kw}


async def test_example_1_deposit(db: Database) -> None:
    user, pid, btc = await paper_account(db)
    async with db.session(user) as s:
        value = await s.valuation.value(pid, {btc: MARK})
    assert table(value.balances) == {"USDT": ("10000", "0", "10000")}
    assert value.equity == Decimal("10000")


async def test_example_2_buy_with_the_fee_in_the_quote_and_a_mark(db: Database) -> None:
    user, pid, btc = await bought(db)
    async with db.session(user) as s:
        value = await s.valuation.value(pid, {btc: MARK})
    # USDT: 10,000 − 0.1 × 60,000 − 6; BTC: 0.1, worth 6,100 at the mark.
    assert table(value.balances) == {
        "BTC": ("0.1", "0", "0.1"),
        "USDT": ("3994", "0", "3994"),
    }
    assert value.values == {"BTC": Decimal("6100"), "USDT": Decimal("3994")}
    assert value.equity == Decimal("10094")
    async with db.session(user) as s:  # the risk rules' equity is this valuation's
        assert (await s.risk.snapshot(pid, {btc: MARK}, "USDT")).equity == Decimal("10094")
    (position,) = value.positions
    # Positions cost their price (6,000; the fee is its own line): 6,100 at the mark.
    assert (position.unrealized, round(position.unrealized_pct or 0, 4)) == (
        Decimal("100"),
        Decimal("1.6667"),
    )


async def test_example_3_an_open_buy_reserves_its_cost_and_fee(db: Database) -> None:
    user, pid, btc = await bought(db)
    async with db.session(user) as s:
        limit = order(pid, btc, "BUY", "0.05", type="LIMIT", price="59000")
        check = await s.valuation.check_order(limit, {btc: MARK}, TERMS)
        assert (check.refusal, check.reserve_price) == (None, Decimal("59059"))
        await s.orders.place(limit, reserve_price=check.reserve_price)
        value = await s.valuation.value(pid, {btc: MARK})
    # 0.05 × 59,000 × 1.001 = 2,952.95 reserved; equity does not change.
    assert table(value.balances)["USDT"] == ("3994", "2952.95", "1041.05")
    assert value.equity == Decimal("10094")


async def test_example_4_an_oversize_order_is_refused(db: Database) -> None:
    user, pid, btc = await bought(db)
    async with db.session(user) as s:
        check = await s.valuation.check_order(order(pid, btc, "BUY", "1"), {btc: MARK}, TERMS)
    # A market BUY reserves the mark with slippage and fee: 61,000 × 1.0005 × 1.001.
    assert check.refusal == "insufficient balance: needs 61091.5305 USDT, free 3994 USDT"


async def test_example_5_a_sell_with_the_fee_in_the_base_asset(db: Database) -> None:
    user, pid, btc = await bought(db)
    async with db.session(user) as s:
        too_much = await s.valuation.check_order(order(pid, btc, "SELL", "0.2"), {btc: MARK})
        await s.trades.ingest_fill(
            fill(pid, btc, "SELL", "0.05", "61000", fee=Decimal("0.00005"), fee_currency="BTC")
        )
        value = await s.valuation.value(pid, {btc: MARK})
    assert too_much.refusal == "insufficient balance: needs 0.2 BTC, free 0.1 BTC"
    # BTC: 0.1 − 0.05 − 0.00005; USDT: 3,994 + 0.05 × 61,000.
    assert table(value.balances) == {
        "BTC": ("0.04995", "0", "0.04995"),
        "USDT": ("7044", "0", "7044"),
    }
    assert value.equity == Decimal("10090.95")


async def test_example_6_a_withdrawal_above_the_free_balance_is_refused(db: Database) -> None:
    user, pid, btc = await bought(db)
    async with db.session(user) as s:
        with pytest.raises(Conflict) as refused:
            await s.cash.withdraw(pid, "4000", "USDT")
        with pytest.raises(Conflict, match=r"cannot withdraw 3994\.000000000000000001 USDT"):
            await s.cash.withdraw(pid, "3994.000000000000000001", "USDT")
        with pytest.raises(Conflict, match="cannot withdraw 1 EUR: free balance 0 EUR"):
            await s.cash.withdraw(pid, "1", "EUR")
        await s.cash.withdraw(pid, "3994", "USDT")
        assert table(await s.valuation.balances(pid, {btc: MARK})) == {"BTC": ("0.1", "0", "0.1")}
    assert str(refused.value) == "cannot withdraw 4000 USDT: free balance 3994 USDT"


async def test_example_7_a_margin_account_may_go_short_within_its_leverage(
    db: Database,
) -> None:
    user, pid, btc = await paper_account(db)
    async with db.session(user) as s:
        spot = await s.valuation.check_order(order(pid, btc, "SELL", "0.1"), {btc: MARK})
        account = (await s.accounts.list())[0]
        await s.accounts.set_margin(account.id, Decimal(2))
        short = await s.valuation.check_order(order(pid, btc, "SELL", "0.1"), {btc: MARK})
        too_big = await s.valuation.check_order(order(pid, btc, "SELL", "0.4"), {btc: MARK})
        await s.trades.ingest_fill(fill(pid, btc, "SELL", "0.1", "61000"))
        at_entry = await s.valuation.value(pid, {btc: MARK})
        lower = await s.valuation.value(pid, {btc: Decimal("60000")})
    assert spot.refusal == "insufficient balance: needs 0.1 BTC, free 0 BTC"
    assert short.refusal is None
    # Buying power: equity 10,000 × 2 − 0 of positions = 20,000; 0.4 × 61,000 is 24400.
    assert too_big.refusal == (
        "insufficient margin: needs 24400 USDT of buying power, free 20000 USDT (2x leverage)"
    )
    assert table(at_entry.balances) == {
        "BTC": ("-0.1", "0", "-0.1"),
        "USDT": ("16100", "0", "16100"),
    }
    assert (at_entry.equity, at_entry.gross_exposure) == (Decimal("10000"), Decimal("6100"))
    assert lower.equity == Decimal("10100")
    assert lower.positions[0].unrealized == Decimal("100")


# --- the rules behind the examples ---------------------------------------------------------


async def test_a_sell_order_reserves_the_base_and_fills_release_it(db: Database) -> None:
    user, pid, btc = await bought(db)
    async with db.session(user) as s:
        placed = await s.orders.place(
            order(pid, btc, "SELL", "0.08", type="LIMIT", price="70000", client_order_id="s1")
        )
        again = await s.valuation.check_order(order(pid, btc, "SELL", "0.03"), {btc: MARK})
        await s.trades.ingest_fill(
            fill(pid, btc, "SELL", "0.05", "70000", order_id=placed.id, trade_id="p1")
        )
        after = table(await s.valuation.balances(pid, {btc: MARK}))
    assert again.refusal == "insufficient balance: needs 0.03 BTC, free 0.02 BTC"
    # 0.05 of 0.08 filled: 0.03 stays reserved of the 0.05 left.
    assert after["BTC"] == ("0.05", "0.03", "0.02")


async def test_an_order_cannot_be_checked_without_any_price(db: Database) -> None:
    user, pid, btc = await paper_account(db)
    async with db.session(user) as s:
        check = await s.valuation.check_order(order(pid, btc, "BUY", "1"), {}, TERMS)
    assert check.refusal == "no price for BTCUSDT yet: cannot reserve the order"


async def test_an_asset_without_a_price_stays_in_its_own_units(db: Database) -> None:
    user, pid, btc = await paper_account(db)
    odd = await make_instrument(db, "ODDEUR", currency="EUR")
    async with db.session(user) as s:
        await s.trades.ingest_fill(fill(pid, odd, "BUY", "3", "2"))
        value = await s.valuation.value(pid, {btc: MARK, odd: Decimal("2.5")})
    # ODD is priced in EUR, and nothing prices EUR in USDT: both stay unconverted.
    assert value.unconverted == {"EUR": Decimal("-6"), "ODD": Decimal("3")}
    assert value.equity == Decimal("10000")
    assert value.positions[0].unrealized == Decimal("1.5")


async def test_prices_convert_inverse_and_through_one_asset(db: Database) -> None:
    user, pid, btc = await paper_account(db)
    eth = await make_instrument(db, "ETHBTC", currency="BTC", base_asset="ETH")
    eur = await make_instrument(db, "USDTEUR", currency="EUR", base_asset="USDT")
    async with db.session(user) as s:
        await s.cash.deposit(pid, "1", "ETH")
        await s.cash.deposit(pid, "10", "EUR")
        marks = {btc: MARK, eth: Decimal("0.05"), eur: Decimal("0.8")}
        value = await s.valuation.value(pid, marks)
    # ETH via BTC: 0.05 × 61,000; EUR as the inverse of USDTEUR: 10 / 0.8.
    assert value.values == {
        "ETH": Decimal("3050"),
        "EUR": Decimal("12.5"),
        "USDT": Decimal("10000"),
    }
    assert value.unconverted == {}


async def test_equity_snapshots_keep_one_row_per_local_day_and_rederive(
    db: Database,
) -> None:
    user, pid, btc = await bought(db)
    async with db.session(user) as s:
        await s.users.set_timezone("Asia/Tokyo")
    tomorrow = dt.datetime.now(dt.UTC).date() + dt.timedelta(days=1)  # after the deposit
    late_evening = dt.datetime.combine(tomorrow, dt.time(14, 30), dt.UTC)  # 23:30 in Tokyo
    async with db.session(Actor.system()) as s:
        assert await s.equity.snapshot_all(late_evening, {btc: Decimal("60000")}) >= 1
        await s.equity.snapshot_all(late_evening + dt.timedelta(minutes=20), {btc: MARK})
        await s.equity.snapshot_all(late_evening + dt.timedelta(minutes=40), {btc: MARK})
    async with db.session(user) as s:
        first, second = await s.equity.history(pid, with_inputs=True)
    # 23:50 was still the same day in Tokyo and replaced 23:30; 00:10 is the next day.
    assert [(r.day, r.equity, r.net_deposits) for r in (first, second)] == [
        (tomorrow, Decimal("10094"), Decimal("10000")),
        (tomorrow + dt.timedelta(days=1), Decimal("10094"), Decimal("10000")),
    ]
    assert first.balances_json == {"BTC": "0.1", "USDT": "3994"}
    assert first.marks_json == {str(btc): "61000"}


async def test_profit_reads_in_one_call_what_pnl_valuation_and_curve_read(db: Database) -> None:
    user, pid, btc = await bought(db)
    tokyo = ZoneInfo("Asia/Tokyo")
    today = dt.datetime.now(tokyo).date()
    async with db.session(user) as s:
        await s.users.set_timezone("Asia/Tokyo")
        await s.cash.deposit(pid, "2", "EUR")  # a second currency, left unconverted
        sold = fill(pid, btc, "SELL", "0.04", "62000", fee=Decimal("2"), fee_currency="USDT")
        await s.trades.ingest_fill({**sold, "exec_time": dt.datetime.now(dt.UTC)})
        limit = order(pid, btc, "BUY", "0.01", type="LIMIT", price="59000")
        await s.orders.place(limit, reserve_price=Decimal("59059"))
    async with db.session(Actor.system()) as s:
        for back, mark in ((3, "60000"), (2, "59000"), (1, "61000")):
            at = dt.datetime.combine(today - dt.timedelta(days=back), dt.time(23), tokyo)
            await s.equity.snapshot_all(at, {btc: Decimal(mark)})
    midnight = dt.datetime.combine(today - dt.timedelta(days=2), dt.time(), tokyo)
    periods = [
        (None, None, 3),  # all time
        (midnight, None, 2),  # from a local midnight: the PnL summary
        (midnight + dt.timedelta(hours=1), None, 2),  # from any time: the trades themselves
    ]
    for since, until, closes in periods:
        async with db.session(user) as s:
            profit = await s.equity.profit(pid, since, until, tokyo, {btc: MARK})
            pnl = await s.trades.pnl(pid, since, until, tokyo, daily=False)
            value = await s.valuation.value(pid, {btc: MARK})
            day = since.astimezone(tokyo).date() if since else None
            curve = await s.equity.curve(pid, day)
        assert profit.summary == pnl
        assert profit.closes == [(r.day, r.equity) for r in curve if r.currency == "USDT"]
        assert len(profit.closes) == closes
        # Everything but what open orders reserve, which /profit does not show. USDT:
        # 3,994 + 0.04 × 62,000 − 2; BTC: 0.06 at the mark.
        assert profit.valuation.equity == value.equity == Decimal("10132")
        assert profit.valuation.net_deposits == value.net_deposits
        assert profit.valuation.unrealized() == value.unrealized()
        assert profit.valuation.unconverted == value.unconverted == {"EUR": Decimal("2")}
        totals = [(b.asset, b.total) for b in value.balances]
        assert [(b.asset, b.total, b.reserved) for b in profit.valuation.balances] == [
            (asset, total, Decimal(0)) for asset, total in totals
        ]


async def test_a_user_snapshots_only_their_own_portfolio(db: Database) -> None:
    user, pid, btc = await bought(db)
    async with db.session(user) as s:
        row = await s.equity.snapshot(pid, T0, {btc: MARK})
    assert (row.equity, row.currency) == (Decimal("10094"), "USDT")


async def test_holding_times_follow_the_position_even_after_a_late_fill(db: Database) -> None:
    user, pid, btc = await paper_account(db)
    hour = dt.timedelta(hours=1)
    async with db.session(user) as s:
        for n, (side, at) in enumerate(
            (("BUY", T0), ("BUY", T0 + hour), ("SELL", T0 + 3 * hour), ("SELL", T0 + 5 * hour))
        ):
            await s.trades.ingest_fill(fill(pid, btc, side, "1", "100", at=at, trade_id=f"h{n}"))
        before = (await s.trades.pnl(pid)).by_instrument["BTCUSDT"]
        # A fill dated before the first: the position was opened an hour earlier.
        await s.trades.ingest_fill(fill(pid, btc, "BUY", "1", "90", at=T0 - hour, trade_id="l"))
        after = (await s.trades.pnl(pid)).by_instrument["BTCUSDT"]
        closing = [t for t in await s.trades.list(pid) if t.side == "SELL"]
        assert await s.positions.verify(pid) == []
    # Two sells, held 3 h and 5 h from T0, then 4 h and 6 h from T0 − 1 h.
    assert (before.closes, before.held) == (2, Decimal(8 * 3600))
    assert (after.closes, after.held) == (2, Decimal(10 * 3600))
    assert {t.position_opened_at for t in closing} == {T0 - hour}


def test_durations_read_as_days_hours_and_minutes() -> None:
    from bot.account_reports import duration

    assert [duration(Decimal(s)) for s in (45, 750, 7500, 273600)] == [
        "45s",
        "12m",
        "2h 5m",
        "3d 4h",
    ]


async def test_two_orders_placed_at_once_cannot_both_spend_one_free_balance(
    db: Database,
) -> None:
    user, pid, btc = await paper_account(db)
    dal = db.scoped(user)
    limit = order(pid, btc, "BUY", "0.1", type="LIMIT", price="60000")  # 6,000 of 10,000

    async def place(s: Any) -> Any:
        check = await s.valuation.check_order(limit, {btc: MARK})
        status = "REJECTED" if check.refusal else "NEW"
        return await s.orders.place(
            limit, status=status, reason=check.refusal, reserve_price=check.reserve_price
        )

    rows = await asyncio.gather(*(dal.transaction(place) for _ in range(4)))
    assert sorted(r.status for r in rows) == ["NEW", "REJECTED", "REJECTED", "REJECTED"]
    async with db.session(user) as s:
        (usdt,) = await s.valuation.balances(pid)
    assert (usdt.reserved, usdt.free) == (Decimal("6000"), Decimal("4000"))


async def test_lot_and_tick_sizes_are_checked_with_the_balance_before_confirm(
    db: Database,
) -> None:
    user = await make_user(db)
    pid = await default_portfolio(db, user)
    eth = await make_instrument(db, "ETHUSDT", lot_size=Decimal("0.001"), tick_size=Decimal("0.01"))
    async with db.session(user) as s:
        with pytest.raises(InvalidInput, match=r"not a multiple of ETHUSDT's lot size 0\.001"):
            await s.valuation.check_order(order(pid, eth, "BUY", "0.0005"), {eth: MARK})
        with pytest.raises(InvalidInput, match=r"not a multiple of ETHUSDT's tick size 0\.01"):
            limit = order(pid, eth, "BUY", "0.001", type="LIMIT", price="3000.005")
            await s.valuation.check_order(limit, {eth: MARK})


async def test_a_portfolio_recorded_from_elsewhere_shows_balances_but_refuses_nothing(
    db: Database,
) -> None:
    user, _, btc = await paper_account(db)
    async with db.session(user) as s:
        account = await s.accounts.create({"broker": "IBKR", "name": "Broker"})
        stocks = await s.portfolios.create({"name": "Stocks", "account_id": account.id})
        await s.cash.deposit(stocks.id, "100", "USD")
        # The record may be incomplete: a withdrawal beyond what it shows is recorded.
        await s.cash.withdraw(stocks.id, "250", "USD")
        await s.trades.ingest_fill(fill(stocks.id, btc, "SELL", "1", "60000"))
        balances = table(await s.valuation.balances(stocks.id, {btc: MARK}))
    assert balances == {
        "BTC": ("-1", "0", "-1"),
        "USD": ("-150", "0", "-150"),
        "USDT": ("60000", "0", "60000"),
    }


async def test_totals_and_open_orders_read_at_once_equal_their_own_reads(db: Database) -> None:
    """A placement reads the totals and what open orders hold back in one statement: the
    same as the two reads of /balance, for cash, trades with fees in either asset, and open
    orders of every kind (a partly filled one, a canceled one that holds nothing)."""
    user, pid, btc = await bought(db)
    eth = await make_instrument(db, "ETHBTC", base_asset="ETH", currency="BTC")
    marks = {btc: MARK, eth: Decimal("0.05")}
    async with db.session(user) as s:
        await s.cash.deposit(pid, "1.5", "BTC")
        await s.cash.withdraw(pid, "12.25", "USDT")
        await s.trades.ingest_fill(
            fill(pid, eth, "BUY", "2", "0.049", fee=Decimal("0.002"), fee_currency="ETH")
        )
        placed = [
            await s.orders.place(order(pid, btc, "BUY", "0.01", type="LIMIT", price="58000")),
            await s.orders.place(order(pid, btc, "BUY", "0.02"), reserve_price=Decimal("61100")),
            await s.orders.place(order(pid, btc, "BUY", "0.03", type="STOP", stop_price="62000")),
            await s.orders.place(order(pid, btc, "SELL", "0.04", type="LIMIT", price="65000")),
            await s.orders.place(order(pid, eth, "SELL", "1.5", type="LIMIT", price="0.06")),
            await s.orders.place(order(pid, eth, "BUY", "1", type="LIMIT", price="0.04")),
        ]
        await s.trades.ingest_fill(
            fill(pid, eth, "SELL", "0.5", "0.06", order_id=placed[4].id, at=T0 + dt.timedelta(1))
        )
        await s.orders.cancel(placed[5].id)

        def both(tx: Any) -> tuple[Any, Any]:
            from dal import balances

            at_once = balances.cash_totals_and_reserved(tx.conn, pid, marks)
            cash, held = balances.cash_and_totals(tx.conn, pid)
            return at_once, (cash, held, balances.reserved(tx.conn, pid, marks))

        at_once, apart = await s.run(both)
    assert at_once == apart
    cash, held, held_back = at_once
    assert cash == {"BTC": Decimal("1.5"), "USDT": Decimal("9987.75")}
    # BTC: 0.1 + 1.5 − 2 × 0.049 + 0.5 × 0.06; ETH: 2 − 0.002 (fee) − 0.5; USDT: 3,994 − 12.25
    assert held == {"BTC": Decimal("1.532"), "ETH": Decimal("1.498"), "USDT": Decimal("3981.75")}
    assert held_back == {
        "BTC": Decimal("0.04"),  # the unfilled rest of the SELL's 0.04
        "ETH": Decimal("1"),  # 1.5 − 0.5 filled
        # 0.01 × 58,000 + 0.02 × 61,100 + 0.03 × 62,000 (stop, no terms here)
        "USDT": Decimal("3662"),
    }
