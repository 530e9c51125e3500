"""Bad input through the public services: InvalidInput naming the problem, nothing written.

Each group of cases is one test per engine: the cases run one after another on one database,
each in its own session. Every case must raise the DAL's InvalidInput (not a pydantic
ValidationError, not a SQLAlchemy or driver error) whose message matches the case's pattern
(the field and the problem), and leave the row count of every table unchanged. A control
call per group (the valid input the cases are variations of) must be accepted.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from dal.configs import POLICY_LIMITS
from dal.database import Database, Session
from dal.errors import InvalidInput, NotFound
from dal.scope import Actor
from tests.conftest import table_counts
from tests.factories import T0, make_user

DROP = object()  # leave this key out of the input
MISSING = 987_654_321
NAME_65 = "n" * 65
KIB_17 = "x" * (17 * 1024)  # pushes any JSON document past the 16 KiB limit
PRICE_ALERT = {"symbol": "BTCUSDT", "op": "above", "price": "70000"}
TICKS = {"symbol": "TICKS", "exchange": "TEST", "asset_type": "CRYPTO", "currency": "USDT"}


def merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in {**base, **changes}.items() if v is not DROP}


@dataclass(frozen=True)
class Env:
    actor: Actor
    admin: Actor
    portfolio: int  # "Main": 10000 USDT and an open position of 1 TICKS
    account: int
    instrument: int  # TICKS: tick size 0.01, lot size 0.001
    order_id: int  # an open BUY LIMIT order
    policy: int
    alert: int
    schedule: int
    screener: int

    def order(self, **changes: Any) -> dict[str, Any]:
        base = {"portfolio_id": self.portfolio, "instrument_id": self.instrument, "side": "BUY"}
        return merge({**base, "type": "LIMIT", "quantity": "1", "price": "100"}, changes)

    def fill(self, **changes: Any) -> dict[str, Any]:
        base = {"portfolio_id": self.portfolio, "instrument_id": self.instrument, "side": "BUY"}
        return merge({**base, "quantity": "1", "price": "100", "exec_time": T0}, changes)


@pytest.fixture
async def env(db: Database) -> Env:
    admin = await make_user(db, admin=True)
    async with db.session(admin, admin=True) as s:  # instruments.create as an admin
        ticks = await s.instruments.create({**TICKS, "tick_size": "0.01", "lot_size": "0.001"})
        await s.instruments.create(
            {"symbol": "BTCUSDT", "asset_type": "CRYPTO", "currency": "USDT"}
        )
    actor = await make_user(db)
    async with db.session(actor) as s:
        main = await s.portfolios.default()
        base = {"portfolio_id": main.id, "instrument_id": ticks.id, "side": "BUY"}
        order = await s.orders.place({**base, "type": "LIMIT", "quantity": "1", "price": "100"})
        await s.trades.ingest_fill({**base, "quantity": "1", "price": "100", "exec_time": T0})
        limits = {"max_order_notional": "1000"}
        policy = await s.risk.create_policy({"name": "l", "scope_type": "USER", "config": limits})
        alert = await s.alerts.create({"name": "btc", "type": "PRICE", "config": PRICE_ALERT})
        daily = {"name": "daily", "cron": "0 18 * * *", "config": {"report": "pnl"}}
        schedule = await s.schedules.create(daily)
        screener = await s.screeners.create({"name": "cheap", "config": {"max_price": "1"}})
    return Env(actor, admin, main.id, main.account_id, ticks.id, order.id, policy.id, alert.id,
               schedule.id, screener.id)  # fmt: skip


Call = Callable[[Session, Env], Awaitable[Any]]
Case = tuple[str, Call, str]  # id, call, a regex the message must contain (case-insensitive)


class _Rollback(Exception):
    pass


async def outcome(
    db: Database, env: Env, call: Call, *, admin: bool = False, commit: bool = True
) -> BaseException | None:
    """Run ``call`` in its own session; the exception it raised, or None (then committed)."""
    try:
        async with db.session(env.admin if admin else env.actor, admin=admin) as s:
            await call(s, env)
            if not commit:
                raise _Rollback
    except _Rollback:
        return None
    except Exception as exc:
        return exc
    return None


# --- bad amounts: (label, value, what the message says) ----------------------------------------
NON_NUMBERS: list[tuple[str, Any, str]] = [
    ("nan", "NaN", "finite"), ("snan", Decimal("sNaN"), "finite"), ("inf", "Infinity", "finite"),
    ("minus-inf", Decimal("-Infinity"), "finite"), ("float", 0.5, "float"),
    ("float-nan", float("nan"), "float"), ("float-inf", float("inf"), "float"),
    ("19-fraction-digits", "0.0000000000000000001", "more than 18 fractional digits"),
    ("21-integer-digits", "1" + "0" * 20, "more than 20 integer digits"),
    ("text", "ten", "not a decimal"), ("empty", "", "not a decimal"), ("bool", True, "bool"),
    ("list", [1], "not a decimal"),
]  # fmt: skip
NON_POSITIVE = [("negative", "-1", "positive"), ("zero", "0", "positive"),
                ("minus-zero", "-0.000", "positive")]  # fmt: skip
BAD_POSITIVE = NON_POSITIVE + NON_NUMBERS


def amounts(field: str, make: Callable[[Any], Call], bad: list[tuple[str, Any, str]],
            *, named: bool = True) -> list[Case]:  # fmt: skip
    """One case per bad value; the message names the field (when ``named``) and the problem."""
    return [(f"{field}-{label}", make(v), f"{field}.*{m}" if named else m) for label, v, m in bad]


# --- orders ------------------------------------------------------------------------------------
def place(**changes: Any) -> Call:
    return lambda s, e: s.orders.place(e.order(**changes))


def set_status(status: str) -> Call:
    return lambda s, e: s.orders.update_status(e.order_id, status)


ORDERS: list[Case] = [
    *amounts("quantity", lambda v: place(quantity=v), BAD_POSITIVE),
    *amounts("price", lambda v: place(price=v), BAD_POSITIVE),
    *amounts("stop_price", lambda v: place(type="STOP", price=DROP, stop_price=v), BAD_POSITIVE),
    ("limit-without-price", place(price=DROP), "a LIMIT order needs a price"),
    ("stop-limit-without-price", place(type="STOP_LIMIT", price=DROP, stop_price="99"),
     "a STOP_LIMIT order needs a price"),
    ("market-with-price", place(type="MARKET"), "a MARKET order takes no limit price"),
    ("market-with-stop", place(type="MARKET", price=DROP, stop_price="99"),
     "a MARKET order takes no stop price"),
    ("stop-without-stop-price", place(type="STOP", price=DROP), "a STOP order needs a stop"),
    ("stop-with-price", place(type="STOP", stop_price="99"), "a STOP order takes no limit"),
    ("stop-limit-without-stop", place(type="STOP_LIMIT"), "STOP_LIMIT order needs a stop"),
    ("trailing-without-stop", place(type="TRAILING", price=DROP), "needs a stop price"),
    ("lot-size", place(quantity="0.0015"), "0.0015 is not a multiple of TICKS's lot size 0.001"),
    ("lot-size-tiny", place(quantity="0.0000001"), "^quantity 0.0000001 is not a multiple"),
    ("tick-size", place(price="100.005"), "100.005 is not a multiple of TICKS's tick size 0.01"),
    ("tick-size-stop", place(type="STOP_LIMIT", stop_price="99.999"), "99.999 .*tick size"),
    ("unknown-side", place(side="HOLD"), "side.*BUY.*SELL"),
    ("unknown-type", place(type="ICEBERG"), "type.*MARKET"),
    ("unknown-time-in-force", place(time_in_force="GTD"), "time_in_force.*GTC"),
    ("status-in-data", place(status="FILLED"), "status.*NEW"),
    ("status-argument", lambda s, e: s.orders.place(e.order(), status="FILLED"), "placed NEW"),
    ("no-instrument", place(instrument_id=DROP), "give instrument_id or symbol"),
    ("symbol-contradicts-id", place(symbol="OTHER"), "is TICKS, not OTHER"),
    ("naive-placed-at", place(placed_at=dt.datetime(2024, 5, 1, 9)), "placed_at.*time zone"),
    ("date-only-placed-at", place(placed_at="2024-05-01"), "placed_at.*time zone"),
    ("placed-at-text", place(placed_at="yesterday"), "placed_at.*datetime"),
    ("client-id-65", place(client_order_id="c" * 65), "client_order_id.*64"),
    ("client-id-blank", place(client_order_id="   "), "client_order_id.*at least 1"),
    ("broker-id-65", place(broker_order_id="b" * 65), "broker_order_id.*64"),
    ("meta-over-16k", place(meta={"pad": KIB_17}), "meta.*limit is 16384"),
    ("meta-not-object", place(meta=["a"]), "meta.*dictionary"),
    ("unknown-field", place(qty="1"), "qty.*unknown here"),
    ("portfolio-id-text", place(portfolio_id="main"), "portfolio_id.*integer"),
    ("strategy-id-text", place(strategy_id="sma"), "strategy_id.*integer"),
    ("not-a-mapping",
     lambda s, e: s.orders.place("BUY 1 TICKS"),  # type: ignore[arg-type]  # text: refused
     "expected a mapping"),
    ("none",
     lambda s, e: s.orders.place(None),  # type: ignore[arg-type]  # None: refused
     "expected a mapping"),
    ("update-unknown-status", set_status("DONE"), "unknown order status 'DONE'"),
    ("update-to-filled", set_status("FILLED"), "follow from fills"),
    ("list-unknown-status", lambda s, e: s.orders.list(status="OPEN"), "status 'OPEN'"),
]  # fmt: skip


# --- fills -------------------------------------------------------------------------------------
def ingest(**changes: Any) -> Call:
    return lambda s, e: s.trades.ingest_fill(e.fill(**changes))


FILLS: list[Case] = [
    *amounts("quantity", lambda v: ingest(quantity=v), BAD_POSITIVE),
    *amounts("price", lambda v: ingest(price=v), BAD_POSITIVE),
    *amounts("fee", lambda v: ingest(fee=v, fee_currency="USDT"), NON_NUMBERS),
    ("naive-exec-time", ingest(exec_time=dt.datetime(2024, 5, 1, 9)), "exec_time.*time zone"),
    ("naive-exec-time-text", ingest(exec_time="2024-05-01T09:00:00"), "exec_time.*time zone"),
    ("no-exec-time", ingest(exec_time=DROP), "exec_time.*required"),
    ("fee-without-currency", ingest(fee="0.1"), "a fee needs its currency.*fee_currency"),
    ("fee-currency-symbol", ingest(fee="0.1", fee_currency="US$"), "fee_currency.*not allowed"),
    ("fee-currency-1-char", ingest(fee="0.1", fee_currency="U"), "fee_currency.*at least 2"),
    ("unknown-side", ingest(side="HOLD"), "side.*BUY.*SELL"),
    ("no-instrument", ingest(instrument_id=DROP), "give instrument_id or symbol"),
    ("trade-id-65", ingest(broker_trade_id="t" * 65), "broker_trade_id.*64"),
    ("meta-over-16k", ingest(meta={"pad": KIB_17}), "meta.*limit is 16384"),
    ("unknown-field", ingest(commission="1"), "commission.*unknown here"),
    ("side-contradicts-order", lambda s, e: s.trades.ingest_fill(
        e.fill(side="SELL", order_id=e.order_id)), r"fill \(SELL TICKS\) does not match order"),
    ("batch-with-one-bad", lambda s, e: s.trades.ingest_fills(
        [e.fill(broker_trade_id="ok"), e.fill(quantity="-1")]), "quantity.*positive"),
]  # fmt: skip


# --- cash --------------------------------------------------------------------------------------
def deposit(amount: Any, currency: str = "USDT", note: str | None = None) -> Call:
    return lambda s, e: s.cash.deposit(e.portfolio, amount, currency, note)


def withdraw(amount: Any, currency: str = "USDT") -> Call:
    return lambda s, e: s.cash.withdraw(e.portfolio, amount, currency)


def record(**changes: Any) -> Call:
    base = {"kind": "DEPOSIT", "amount": "1", "currency": "USDT"}
    return lambda s, e: s.cash.record(merge({"portfolio_id": e.portfolio, **base}, changes))


CASH: list[Case] = [
    *amounts("deposit", deposit, BAD_POSITIVE, named=False),
    *amounts("withdraw", withdraw, BAD_POSITIVE, named=False),
    ("adjust-zero", lambda s, e: s.cash.adjust(e.portfolio, "0", "USDT"), "cannot be zero"),
    ("currency-symbol", deposit("1", "US$"), "currency.*not allowed here"),
    ("currency-1-char", deposit("1", "U"), "currency.*at least 2"),
    ("currency-17-chars", deposit("1", "C" * 17), "currency.*at most 16"),
    ("note-501", deposit("1", note="n" * 501), "note.*500"),
    ("unknown-kind", record(kind="GIFT"), "kind.*DEPOSIT"),
    ("unknown-field", record(memo="hi"), "memo.*unknown here"),
]  # fmt: skip


# --- strategies, risk policies -----------------------------------------------------------------
def strategy(**changes: Any) -> Call:
    return lambda s, e: s.strategies.create(merge({"name": "sma", "version": "1.0"}, changes))


STRATEGIES: list[Case] = [
    ("name-65", strategy(name=NAME_65), "name.*64"),
    ("name-empty", strategy(name=""), "name.*at least 1"),
    ("name-blank", strategy(name="   "), "name.*at least 1"),
    ("version-v1", strategy(version="v1"), "version.*not allowed here"),
    ("version-5-parts", strategy(version="1.0.0.0.0"), "version.*not allowed here"),
    ("version-empty-part", strategy(version="1..0"), "version.*not allowed here"),
    ("version-33-chars", strategy(version="1" * 33), "version.*32"),
    ("params-over-16k", strategy(params={"pad": KIB_17}), "params.*limit is 16384"),
    ("params-not-object", strategy(params=[1, 2]), "params.*dictionary"),
    ("unknown-field", strategy(owner=1), "owner.*unknown here"),
]


def policy(config: Any, **changes: Any) -> Call:
    base = {"name": "p2", "scope_type": "USER", "config": config}
    return lambda s, e: s.risk.create_policy(merge(base, changes))


def update_policy(config: Any) -> Call:
    return lambda s, e: s.risk.update_policy(e.policy, config)


LEVERAGE = {"max_leverage": "2"}
POLICIES: list[Case] = [
    *[(f"{key}-float", policy({key: 0.01}), f"{key}.*float") for key in POLICY_LIMITS],
    ("unknown-key", policy({"max_drawdown": "0.1"}), "max_drawdown.*unknown here"),
    ("no-limits", policy({}), "give at least one limit"),
    ("only-mode", policy({"mode": "warn"}), "give at least one limit"),
    ("max-daily-loss-above-1", policy({"max_daily_loss": "1.01"}), "fraction of equity.*1.01"),
    ("max-daily-loss-zero", policy({"max_daily_loss": "0"}), "fraction of equity"),
    ("max-risk-negative", policy({"max_risk_per_trade": "-0.01"}), "fraction of equity"),
    ("max-leverage-zero", policy({"max_leverage": "0"}), "max_leverage.*positive"),
    ("max-notional-nan", policy({"max_order_notional": "NaN"}), "max_order_notional.*finite"),
    ("unknown-mode", policy({**LEVERAGE, "mode": "ignore"}), "mode.*block.*warn"),
    ("config-over-16k", policy({**LEVERAGE, "pad": KIB_17}), "pad.*unknown here"),
    ("config-not-object", policy(["max_leverage"]), "config.*dictionary"),
    ("unknown-scope", policy(LEVERAGE, scope_type="GLOBAL"), "scope_type.*USER"),
    ("portfolio-without-id", policy(LEVERAGE, scope_type="PORTFOLIO"), "needs the portfolio"),
    ("name-65", policy(LEVERAGE, name=NAME_65), "name.*64"),
    ("update-float", update_policy({"max_daily_loss": 0.03}), "max_daily_loss.*float"),
    ("update-no-limits", update_policy({}), "at least one limit"),
    ("update-unknown-key", update_policy({"stop_all": True}), "stop_all.*unknown here"),
    ("update-over-16k", update_policy({**LEVERAGE, "pad": KIB_17}), "limit is 16384"),
]


# --- alerts, schedules, screeners --------------------------------------------------------------
def alert(kind: str, config: Any, **changes: Any) -> Call:
    return lambda s, e: s.alerts.create(merge({"name": "a", "type": kind, "config": config},
                                              changes))  # fmt: skip


def alert_update(config: Any) -> Call:
    return lambda s, e: s.alerts.update_config(e.alert, config)


IND = {"symbol": "BTCUSDT", "indicator": "sma_cross", "fast": 10, "slow": 30}
POS = {"symbol": "BTCUSDT", "metric": "unrealized_pnl", "op": "below", "value": "-500"}
RISK = {"metric": "daily_loss", "op": "above", "value": "0.02"}
SCHED = {"cron": "0 9 * * 1-5", "message": "market open"}
PRICE = PRICE_ALERT
FAST_SLOW = "fast period must be shorter than slow period"
ALERTS: list[Case] = [
    ("price-unknown-key", alert("PRICE", {**PRICE, "note": "x"}), "note.*unknown here"),
    ("price-unknown-op", alert("PRICE", {**PRICE, "op": "equals"}), "op.*above.*below"),
    ("price-zero", alert("PRICE", {**PRICE, "price": "0"}), "price.*positive"),
    ("price-float", alert("PRICE", {**PRICE, "price": 70000.5}), "price.*float"),
    ("price-no-symbol", alert("PRICE", {"op": "above", "price": "1"}), "symbol.*required"),
    (
        "price-bad-symbol",
        alert("PRICE", {**PRICE, "symbol": "BTC USDT"}),
        "symbol.*not allowed here",
    ),
    ("indicator-fast-eq-slow", alert("INDICATOR", {**IND, "fast": 30}), FAST_SLOW),
    ("indicator-fast-gt-slow", alert("INDICATOR", {**IND, "fast": 50}), FAST_SLOW),
    ("indicator-unknown", alert("INDICATOR", {**IND, "indicator": "rsi"}), "indicator.*sma"),
    ("indicator-fast-0", alert("INDICATOR", {**IND, "fast": 0}), "fast.*greater than or equal"),
    ("indicator-slow-1001", alert("INDICATOR", {**IND, "slow": 1001}), "slow.*less than or"),
    ("indicator-unknown-key", alert("INDICATOR", {**IND, "rsi": 14}), "rsi.*unknown here"),
    ("position-unknown-metric", alert("POSITION", {**POS, "metric": "delta"}), "metric.*quant"),
    ("position-float", alert("POSITION", {**POS, "value": -500.0}), "value.*float"),
    ("position-no-value", alert("POSITION", merge(POS, {"value": DROP})), "value.*required"),
    ("risk-unknown-metric", alert("RISK", {**RISK, "metric": "var"}), "metric.*daily_loss"),
    ("risk-nan", alert("RISK", {**RISK, "value": "NaN"}), "value.*finite"),
    ("risk-unknown-key", alert("RISK", {**RISK, "window": "1d"}), "window.*unknown here"),
    ("schedule-6-fields", alert("SCHEDULE", {**SCHED, "cron": "0 9 * * 1-5 *"}), "5-field cron"),
    ("schedule-bad-hour", alert("SCHEDULE", {**SCHED, "cron": "0 25 * * *"}), "5-field cron"),
    ("schedule-no-message", alert("SCHEDULE", {**SCHED, "message": ""}), "message.*at least 1"),
    ("schedule-message-501", alert("SCHEDULE", {**SCHED, "message": "m" * 501}), "message.*500"),
    ("unknown-type", alert("SMS", PRICE), "type.*PRICE"),
    ("config-not-object", alert("PRICE", ["BTCUSDT"]), "config.*dictionary"),
    ("config-over-16k", alert("PRICE", {**PRICE, "pad": KIB_17}), "limit is 16384"),
    ("config-not-json", alert("PRICE", {**PRICE, "price": object()}), "JSON object"),
    ("name-65", alert("PRICE", PRICE, name=NAME_65), "name.*64"),
    ("update-unknown-key", alert_update({**PRICE, "x": 1}), r"\bx: is unknown here"),
    ("update-over-16k", alert_update({**PRICE, "pad": KIB_17}), "limit is 16384"),
]


def schedule(cron: Any = "0 18 * * *", config: Any = None, **changes: Any) -> Call:
    base = {"name": "s2", "cron": cron, "config": config or {"report": "pnl"}}
    return lambda s, e: s.schedules.create(merge(base, changes))


BAD_CRONS = {
    "6-fields": "0 18 * * * *", "4-fields": "0 18 * *", "minute-61": "61 * * * *",
    "hour-24": "0 24 * * *", "day-32": "0 0 32 * *", "month-13": "0 0 1 13 *",
    "weekday-8": "0 0 * * 8", "nickname": "@daily", "words": "every day at six", "empty": "",
}  # fmt: skip
SCHEDULES: list[Case] = [
    *[(f"cron-{label}", schedule(cron), "5-field cron") for label, cron in BAD_CRONS.items()],
    ("cron-none", schedule(None), "cron.*string"),
    ("unknown-report", schedule(config={"report": "trades"}), "report.*pnl"),
    ("no-report", schedule(config={"period": "today"}), "report.*required"),
    ("unknown-key", schedule(config={"report": "pnl", "format": "pdf"}), "format.*unknown here"),
    ("period-33", schedule(config={"report": "pnl", "period": "p" * 33}), "period.*32"),
    ("portfolio-65", schedule(config={"report": "pnl", "portfolio": NAME_65}), "portfolio.*64"),
    ("name-65", schedule(name=NAME_65), "name.*64"),
    ("update-bad-cron", lambda s, e: s.schedules.update(e.schedule, cron="0 18 * * * *"),
     "5-field cron"),
]  # fmt: skip


def screener(config: Any, **changes: Any) -> Call:
    return lambda s, e: s.screeners.create(merge({"name": "s2", "config": config}, changes))


SCREENERS: list[Case] = [
    ("unknown-asset-type", screener({"asset_type": "BOND"}), "asset_type.*CRYPTO"),
    ("201-symbols", screener({"symbols": [f"S{i}" for i in range(201)]}), "symbols.*200"),
    ("bad-symbol", screener({"symbols": ["BTC USDT"]}), "symbols.*not allowed here"),
    ("min-price-zero", screener({"min_price": "0"}), "min_price.*positive"),
    ("max-price-float", screener({"max_price": 1.5}), "max_price.*float"),
    ("change-nan", screener({"min_change_pct": "NaN"}), "min_change_pct.*finite"),
    ("bad-cron", screener({"cron": "0 0 * *"}), "5-field cron"),
    ("exchange-33", screener({"exchange": "E" * 33}), "exchange.*32"),
    ("unknown-key", screener({"sort": "volume"}), "sort.*unknown here"),
    ("config-not-object", screener("cheap"), "config.*dictionary"),
    ("name-65", screener({}, name=NAME_65), "name.*64"),
    ("min-above-max", screener({"min_price": "100", "max_price": "1"}), "min_price is above max"),
    ("update-negative", lambda s, e: s.screeners.update_config(e.screener, {"max_price": "-1"}),
     "max_price.*positive"),
]  # fmt: skip


# --- portfolios, accounts, instruments, time zones ---------------------------------------------
def portfolio(**changes: Any) -> Call:
    return lambda s, e: s.portfolios.create(merge({"name": "p2", "account_id": e.account},
                                                  changes))  # fmt: skip


def account(**changes: Any) -> Call:
    return lambda s, e: s.accounts.create(merge({"broker": "PAPER", "name": "a2"}, changes))


PORTFOLIOS_AND_ACCOUNTS: list[Case] = [
    ("portfolio-name-65", portfolio(name=NAME_65), "name.*64"),
    ("portfolio-name-blank", portfolio(name=" "), "name.*at least 1"),
    ("portfolio-description-501", portfolio(description="d" * 501), "description.*500"),
    ("portfolio-account-text", portfolio(account_id="Paper"), "account_id.*integer"),
    ("portfolio-default-maybe", portfolio(is_default="maybe"), "is_default.*boolean"),
    ("portfolio-unknown-field", portfolio(currency="EUR"), "currency.*unknown here"),
    ("portfolio-rename-65", lambda s, e: s.portfolios.update(e.portfolio, name=NAME_65),
     "name.*64"),
    ("account-unknown-broker", account(broker="NOPE"), "unknown broker 'NOPE'; known: BINANCE"),
    ("account-broker-empty", account(broker=""), "broker.*at least 1"),
    ("account-name-65", account(name=NAME_65), "name.*64"),
    ("account-currency-symbol", account(base_currency="US$"), "base_currency.*not allowed here"),
    ("account-currency-1-char", account(base_currency="D"), "base_currency.*at least 2"),
    ("account-uid-129", account(account_uid="u" * 129), "account_uid.*128"),
    ("account-unknown-field", account(owner="me"), "owner.*unknown here"),
]  # fmt: skip


def instrument(**changes: Any) -> Call:
    return lambda s, e: s.instruments.create(merge({**TICKS, "symbol": "NEWCOIN"}, changes))


INSTRUMENTS_AND_BROKERS: list[Case] = [  # run in the admin's admin session
    *amounts("tick_size", lambda v: instrument(tick_size=v), BAD_POSITIVE),
    *amounts("lot_size", lambda v: instrument(lot_size=v), BAD_POSITIVE),
    ("symbol-space", instrument(symbol="NEW COIN"), "symbol.*not allowed here"),
    ("symbol-33", instrument(symbol="S" * 33), "symbol.*32"),
    ("symbol-empty", instrument(symbol=""), "symbol.*at least 1"),
    ("exchange-33", instrument(exchange="E" * 33), "exchange.*32"),
    ("unknown-asset-type", instrument(asset_type="BOND"), "asset_type.*CRYPTO"),
    ("currency-empty", instrument(currency=""), "currency.*at least 2"),
    ("currency-words", instrument(currency="US DOLLAR"), "currency.*not allowed here"),
    ("unknown-field", instrument(name="New coin"), "name.*unknown here"),
    ("broker-code-1-char", lambda s, e: s.brokers.create("K", "Kraken"), "broker code is 2"),
    ("broker-code-space", lambda s, e: s.brokers.create("KRA KEN", "Kraken"), "broker code"),
    ("broker-name-empty", lambda s, e: s.brokers.create("KRAKEN", " "), "broker name is 1"),
    ("broker-name-65", lambda s, e: s.brokers.create("KRAKEN", NAME_65), "broker name is 1.64"),
]


def zone(name: Any) -> Call:
    return lambda s, e: s.users.set_timezone(name)


ZONES = ["Mars/Olympus_Mons", "", "Europe/Berlinn", "../../etc/passwd", "UTC+3", "Etc/GMT+25",
         "europe berlin"]  # fmt: skip
TIMEZONES: list[Case] = [(f"zone-{z!r}", zone(z), f"unknown time zone {re.escape(repr(z))}")
                         for z in ZONES]  # fmt: skip

# Each group: its cases, and the valid input they are variations of (it must be accepted).
GROUPS: dict[str, tuple[list[Case], Call]] = {
    "orders": (ORDERS, place()),
    "fills": (FILLS, ingest()),
    "cash": (CASH, withdraw("9800")),  # 10000 − 100 paid − 100 held by the open BUY
    "strategies": (STRATEGIES, strategy()),
    "policies": (POLICIES, policy({"max_daily_loss": "1", "max_leverage": "2"})),
    "alerts": (ALERTS, alert("INDICATOR", IND)),
    "schedules": (SCHEDULES, schedule("0,30 9-17 * * 1-5")),
    "screeners": (SCREENERS, screener({"symbols": ["S"] * 200, "min_price": "1"})),
    "portfolios_and_accounts": (PORTFOLIOS_AND_ACCOUNTS, portfolio(description="d" * 500)),
    "instruments_and_brokers": (INSTRUMENTS_AND_BROKERS, instrument(tick_size="0.01")),
    "timezones": (TIMEZONES, zone("America/Argentina/Buenos_Aires")),
}


@pytest.mark.parametrize("group", list(GROUPS))
async def test_bad_input_is_refused_and_writes_nothing(
    db: Database, engine: AsyncEngine, env: Env, group: str
) -> None:
    cases, control = GROUPS[group]
    admin = group == "instruments_and_brokers"
    assert await outcome(db, env, control, admin=admin, commit=False) is None
    problems: list[str] = []
    for case_id, call, pattern in cases:
        before = await table_counts(engine)
        exc = await outcome(db, env, call, admin=admin)
        message = str(exc)
        if type(exc) is not InvalidInput:
            what = "accepted" if exc is None else f"{type(exc).__name__}: {message[:300]}"
            problems.append(f"{case_id}: {what}")
        elif not re.search(pattern, message, re.IGNORECASE | re.DOTALL):
            problems.append(f"{case_id}: {message[:300]!r} does not match {pattern!r}")
        elif message.count("invalid ") > 1:
            problems.append(f"{case_id}: the message repeats its prefix: {message[:300]!r}")
        elif isinstance(exc.__cause__, SQLAlchemyError) or "[SQL" in message:
            problems.append(f"{case_id}: a database error leaked: {message[:300]}")
        if await table_counts(engine) != before:
            problems.append(f"{case_id}: row counts changed")
    assert not problems, f"{len(problems)} of {len(cases)} cases:\n" + "\n".join(problems)


async def breach(s: Session, e: Env, **refs: Any) -> Any:
    """Record a real breach (an order of 100 x 100 against the 1000 notional limit)."""
    verdict = await s.risk.evaluate(e.order(quantity="100"), {e.instrument: Decimal(100)})
    assert verdict.breaches
    return await s.risk.record_breach(verdict, e.portfolio, **refs)


def evaluate(**changes: Any) -> Call:
    return lambda s, e: s.risk.evaluate(e.order(**changes), {e.instrument: Decimal(100)})


async def test_unknown_references_are_not_found(
    db: Database, engine: AsyncEngine, env: Env
) -> None:
    calls: list[tuple[Call, str]] = [
        (place(instrument_id=DROP, symbol="nope"), "unknown symbol NOPE; an admin can add it"),
        (place(instrument_id=DROP, symbol="TICKS", exchange="moon"), "unknown symbol TICKS on"),
        (place(instrument_id=MISSING), f"unknown instrument #{MISSING}"),
        (ingest(instrument_id=DROP, symbol="NOPE"), "unknown symbol NOPE"),
        (evaluate(instrument_id=DROP, symbol="NOPE"), "unknown symbol NOPE"),
        (lambda s, e: s.instruments.get(symbol="NOPE"), "unknown symbol NOPE"),
        (lambda s, e: breach(s, e, instrument_id=MISSING), f"unknown instrument #{MISSING}"),
        (lambda s, e: breach(s, e, order_id=MISSING), f"no order #{MISSING}"),
    ]  # fmt: skip
    before = await table_counts(engine)
    for call, message in calls:
        exc = await outcome(db, env, call)
        assert isinstance(exc, NotFound) and str(exc).startswith(message), repr(exc)
    assert await table_counts(engine) == before


async def test_messages_read_cleanly(db: Database, env: Env) -> None:
    exc = await outcome(db, env, deposit(0.5))
    float_message = "amount: 0.5 is a float; give amounts as Decimal or text"
    assert str(exc) == f"invalid cash movement: {float_message}"
    exc = await outcome(db, env, account(broker="B" * 33))
    assert str(exc) == "invalid account: broker: String should have at most 32 characters"


# --- edge cases found in review: each line says what used to happen; all are refused now ------
def deep_json(depth: int = 5000) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


NAIVE = dt.datetime(2024, 5, 1, 9)
CRON_170 = ",".join(str(m) for m in range(60)) + " * * * *"  # valid: every minute, 170 chars
MARK = Decimal(100)
REFUSED = (InvalidInput,)
REFUSED_OR_NOT_FOUND = (InvalidInput, NotFound)

BUGS: list[tuple[str, str, tuple[type[Exception], ...], dict[str, Call]]] = [
    ("ids-beyond-64-bits", "ids beyond 64 bits reach the driver: OverflowError (SQLite), "
     "DBAPIError 'out of int64 range' (PostgreSQL)", REFUSED_OR_NOT_FOUND, {
        "portfolios.get": lambda s, e: s.portfolios.get(2**63),
        "orders.get": lambda s, e: s.orders.get(2**63),
        "orders.place": place(portfolio_id=2**64),
        "cash.deposit": lambda s, e: s.cash.deposit(2**63, "1", "USDT"),
    }),
    ("nan-in-json", "NaN/Infinity floats inside JSON params/meta are accepted: SQLite stores the "
     "non-standard token NaN, PostgreSQL raises DBAPIError 'invalid input syntax for type json'",
     REFUSED, {
        "strategies.create params": strategy(params={"x": float("nan")}),
        "orders.place meta": place(meta={"x": float("inf")}),
        "trades.ingest_fill meta": ingest(meta={"x": float("nan")}),
        "orders.update_status meta": lambda s, e: s.orders.update_status(
            e.order_id, "NEW", meta={"x": float("nan")}),
    }),
    ("non-json-values", "values JSON cannot encode (a date, a set, an object) in strategy params "
     "or order/fill meta raise a bare TypeError", REFUSED, {
        "strategies.create params": strategy(params={"start": dt.date(2024, 5, 1)}),
        "orders.place meta": place(meta={"tags": {"a", "b"}}),
        "trades.ingest_fill meta": ingest(meta={"source": object()}),
    }),
    ("deep-json", "JSON nested 5000 deep raises RecursionError (from the size check)", REFUSED, {
        "strategies.create params": strategy(params={"x": deep_json()}),
        "orders.place meta": place(meta={"x": deep_json()}),
        "alerts.create config": alert("PRICE", {**PRICE, "x": deep_json()}),
    }),
    ("cron-over-128", "a valid cron longer than schedules.cron VARCHAR(128) is accepted: SQLite "
     "stores it, PostgreSQL raises DBAPIError 'value too long'", REFUSED, {
        "schedules.create": schedule(CRON_170),
        "schedules.update": lambda s, e: s.schedules.update(e.schedule, cron=CRON_170),
    }),
    ("odd-time-zones", "users.set_timezone: a 300-character name raises OSError (File name too "
     "long), None raises TypeError", REFUSED, {
        "300 chars": zone("Europe/" + "x" * 300),
        "None": zone(None),
    }),
    ("time-overflow", "aware times at the edge of the datetime range raise OverflowError while "
     "converting to UTC", REFUSED, {
        "orders.place placed_at": place(placed_at="0001-01-01T00:00:00+01:00"),
        "trades.ingest_fill exec_time": ingest(exec_time="9999-12-31T23:00:00-02:00"),
    }),
    ("long-description-truncated", "portfolios.update silently truncates a description over 500 "
     "characters to 500 (portfolios.create refuses it)", REFUSED, {
        "portfolios.update": lambda s, e: s.portfolios.update(e.portfolio, description="d" * 501),
    }),
    ("nul-characters", "NUL characters in text are accepted: SQLite stores them, PostgreSQL "
     "raises DBAPIError", REFUSED, {
        "strategies.create name": strategy(name="sma\x00"),
        "portfolios.create name": portfolio(name="p\x00"),
        "strategies.create params": strategy(name="nul", params={"x": "a\x00b"}),
        "cash.deposit note": deposit("1", note="top\x00up"),
    }),
    ("json-limit-bypassed", "the 16 KiB JSON limit is only enforced on input models: "
     "update_status meta, cancel reason, place(status=REJECTED, reason) and audit.log details "
     "store any size", REFUSED, {
        "orders.update_status meta": lambda s, e: s.orders.update_status(
            e.order_id, "NEW", meta={"pad": KIB_17}),
        "orders.cancel reason": lambda s, e: s.orders.cancel(e.order_id, reason=KIB_17),
        "orders.place reason": lambda s, e: s.orders.place(
            e.order(), status="REJECTED", reason=KIB_17),
        "audit.log details": lambda s, e: s.audit.log("ORDER", 1, "UPDATE", {"pad": KIB_17}),
    }),
    ("naive-time-arguments", "naive datetimes passed as arguments: trades.list/pnl and "
     "schedules.due/mark_run raise SQLAlchemy StatementError, risk.snapshot/evaluate silently "
     "read them as server-local time", REFUSED, {
        "trades.list since": lambda s, e: s.trades.list(e.portfolio, since=NAIVE),
        "trades.pnl until": lambda s, e: s.trades.pnl(e.portfolio, until=NAIVE),
        "schedules.due": lambda s, e: s.schedules.due(NAIVE),
        "schedules.mark_run": lambda s, e: s.schedules.mark_run(e.schedule, NAIVE),
        "risk.snapshot": lambda s, e: s.risk.snapshot(
            e.portfolio, {e.instrument: MARK}, "USDT", NAIVE),
        "risk.evaluate": lambda s, e: s.risk.evaluate(e.order(), {e.instrument: MARK}, NAIVE),
    }),
    ("marks-unchecked", "marks are not validated: risk.evaluate raises TypeError/ValueError/"
     "AttributeError, cash.equity raises TypeError on a float and values a position at a "
     "negative mark", REFUSED, {
        # The wrong types below are the point: each must be refused.
        "evaluate float": lambda s, e: s.risk.evaluate(
            e.order(), {e.instrument: 100.0}),  # type: ignore[dict-item]  # a float mark
        "evaluate negative": lambda s, e: s.risk.evaluate(e.order(), {e.instrument: -MARK}),
        "evaluate text": lambda s, e: s.risk.evaluate(
            e.order(), {e.instrument: "100"}),  # type: ignore[dict-item]  # a text mark
        "evaluate None": lambda s, e: s.risk.evaluate(
            e.order(), None),  # type: ignore[arg-type]  # no marks at all
        "equity float": lambda s, e: s.valuation.value(
            e.portfolio, {e.instrument: 100.0}),  # type: ignore[dict-item]  # a float mark
        "equity negative": lambda s, e: s.valuation.value(e.portfolio, {e.instrument: -MARK}),
    }),
]  # fmt: skip


@pytest.mark.parametrize(
    ("expected", "calls"),
    [pytest.param(expected, calls, id=bug_id) for bug_id, _was, expected, calls in BUGS],
)
async def test_edge_inputs_are_refused(
    db: Database, engine: AsyncEngine, env: Env,
    expected: tuple[type[Exception], ...], calls: dict[str, Call],
) -> None:  # fmt: skip
    """Every call must raise one of ``expected`` and leave the row counts as they were."""
    wrong = {}
    for name, call in calls.items():
        before = await table_counts(engine)
        exc = await outcome(db, env, call)
        if not isinstance(exc, expected):
            wrong[name] = "accepted" if exc is None else f"{type(exc).__name__}: {str(exc)[:120]}"
        elif await table_counts(engine) != before:
            wrong[name] = "row counts changed"
    assert not wrong, wrong
