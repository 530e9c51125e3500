"""Isolation between users, on both engines.

* Every scoped operation called by user A with user B's ids raises NotFound, worded exactly like
  the error for an id that exists nowhere, and changes nothing (row counts and contents).
* Listings show the caller's rows only.
* Pending, revoked and deactivated users get NotApproved from every call but register/me.
* The admin scope is for admins only; an admin's admin session sees every user's rows.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import inspect
import re
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from dal.accounts import AccountService, PortfolioService
from dal.audit import AuditLogger
from dal.brokers import BrokerService
from dal.cash import CashService
from dal.database import Database, Session
from dal.equity import EquityService
from dal.errors import Forbidden, NotApproved, NotFound
from dal.instruments import InstrumentService
from dal.marks import MarkService
from dal.orders import OrderService
from dal.positions import PositionService
from dal.risk import RiskService
from dal.risk_rules import Verdict
from dal.schema import metadata
from dal.scope import Actor
from dal.services import facades
from dal.strategies import StrategyRunService, StrategyService
from dal.trades import TradeService
from dal.unapplied_events import UnappliedEventService
from dal.user_configs import AlertService, ScheduleService, ScreenerService
from dal.users import UserService
from dal.valuation import ValuationService
from dal.vocabulary import ORDER_STATUSES
from tests.conftest import captured_statements, table_counts
from tests.factories import T0, fill, make_instrument, make_user

MISSING = 987_654_321  # an id no table holds
MARK = Decimal("100")
LIMITS = {"max_order_notional": "1"}
PRICE_ALERT = {"symbol": "BTCUSDT", "op": "above", "price": "70000"}
NEW_INSTRUMENT = {"symbol": "NEWCOIN", "asset_type": "CRYPTO", "currency": "USDT"}
FAR_FUTURE = dt.datetime(2100, 1, 1, tzinfo=dt.UTC)

# The services a session offers (dal.database.Session), for the "every method" guard.
SERVICES: dict[str, type] = {
    "users": UserService,
    "brokers": BrokerService,
    "accounts": AccountService,
    "portfolios": PortfolioService,
    "strategies": StrategyService,
    "strategy_runs": StrategyRunService,
    "instruments": InstrumentService,
    "orders": OrderService,
    "trades": TradeService,
    "positions": PositionService,
    "cash": CashService,
    "risk": RiskService,
    "alerts": AlertService,
    "schedules": ScheduleService,
    "screeners": ScreenerService,
    "audit": AuditLogger,
    "marks": MarkService,
    "unapplied_events": UnappliedEventService,
    "valuation": ValuationService,
    "equity": EquityService,
}


@dataclasses.dataclass(frozen=True)
class Ids:
    """One user's rows: one of everything the DAL scopes to a user."""

    actor: Actor
    telegram: str
    user: int
    account: int  # "Paper", holds the portfolios
    spare_account: int  # no portfolios
    portfolio: int  # the default "Main": orders, a trade, a position, cash, a breach
    spare_portfolio: int  # empty and not default
    strategy: int
    order: int
    trade: int
    policy: int
    alert: int
    schedule: int
    screener: int
    unapplied: int  # a broker event kept because it could not be applied
    instrument: int  # shared reference data, not owned
    verdict: Verdict  # a blocking verdict that names this user's policy
    tag: str

    @property
    def client_order_id(self) -> str:
        return f"c-{self.tag}"

    @property
    def broker_order_id(self) -> str:
        return f"b-{self.tag}"

    def missing(self) -> Ids:
        """The same shape with every owned id replaced by one that exists nowhere."""
        owned: dict[str, Any] = {
            f.name: MISSING
            for f in dataclasses.fields(self)
            if f.type == "int" and f.name != "instrument"
        }
        breaches = tuple(dataclasses.replace(b, policy_id=MISSING) for b in self.verdict.breaches)
        return dataclasses.replace(
            self, **owned, verdict=dataclasses.replace(self.verdict, breaches=breaches)
        )


def order_for(portfolio: int, instrument: int, **extra: Any) -> dict[str, Any]:
    base = {"portfolio_id": portfolio, "instrument_id": instrument, "side": "BUY"}
    return {**base, "type": "LIMIT", "quantity": "1", "price": "100", **extra}


def policy_on(scope: str, scope_id: int, name: str = "new") -> dict[str, Any]:
    return {"name": name, "scope_type": scope, "scope_id": scope_id, "config": LIMITS}


def price_alert(name: str, portfolio: int) -> dict[str, Any]:
    return {"name": name, "type": "PRICE", "portfolio_id": portfolio, "config": PRICE_ALERT}


async def populate(db: Database, actor: Actor, instrument: int, tag: str) -> Ids:
    async with db.session(actor) as s:
        me = await s.users.me()
        main = await s.portfolios.default()
        spare_account = await s.accounts.create({"broker": "BINANCE", "name": f"Spot {tag}"})
        spare = await s.portfolios.create({"name": f"Spare {tag}", "account_id": main.account_id})
        strategy = await s.strategies.create({"name": f"sma-{tag}", "params": {"fast": 10}})
        await s.strategy_runs.start(strategy.id, main.id)
        ids = {"client_order_id": f"c-{tag}", "broker_order_id": f"b-{tag}"}
        order = await s.orders.place(order_for(main.id, instrument, strategy_id=strategy.id, **ids))
        the_fill = fill(main.id, instrument, "BUY", "0.5", "100", order_id=order.id, trade_id=tag)
        trade = (await s.trades.ingest_fill(the_fill)).trade
        await s.cash.deposit(main.id, "250", "USDT", note=f"top-up {tag}")
        policy = await s.risk.create_policy(policy_on("PORTFOLIO", main.id, f"limits-{tag}"))
        verdict = await s.risk.evaluate(order_for(main.id, instrument), {instrument: MARK})
        assert verdict.decision == "block"
        await s.risk.record_breach(verdict, main.id, instrument, order.id)
        alert = await s.alerts.create(price_alert(f"alert-{tag}", main.id))
        daily = {"name": f"daily-{tag}", "cron": "0 18 * * *", "config": {"report": "pnl"}}
        schedule = await s.schedules.create(daily)
        screener = await s.screeners.create({"name": f"cheap-{tag}", "config": {"max_price": "1"}})
        kept = await s.unapplied_events.keep(main.id, {"kind": "fill"}, f"kept {tag}")
    return Ids(actor, me.telegram_user_id, me.id, main.account_id, spare_account.id, main.id,
               spare.id, strategy.id, order.id, trade.id, policy.id, alert.id, schedule.id,
               screener.id, kept.id, instrument, verdict, tag)  # fmt: skip


@pytest.fixture
async def world(db: Database) -> tuple[Ids, Ids]:
    instrument = await make_instrument(db)
    await make_instrument(db, "BTCUSDT")  # what the price alerts watch
    a = await populate(db, await make_user(db), instrument, "A")
    b = await populate(db, await make_user(db), instrument, "B")
    return a, b


async def contents(engine: AsyncEngine) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, in primary-key order."""
    dump = {}
    async with engine.connect() as conn:
        for table in metadata.sorted_tables:
            query = sa.select(table).order_by(*table.primary_key.columns)
            dump[table.name] = [tuple(row) for row in await conn.execute(query)]
    return dump


class _Rollback(Exception):
    """Ends a control session without committing it."""


Op = Callable[[Session, Ids, Ids], Awaitable[Any]]


async def outcome(
    db: Database, actor: Actor, op: Op, target: Ids, own: Ids, *, commit: bool = True
) -> BaseException | None:
    """Run ``op`` in its own session; the exception it raised, or None.

    With ``commit=True`` a call that wrongly succeeds is committed, so the row checks see it.
    """
    try:
        async with db.session(actor) as s:
            await op(s, target, own)
            if not commit:
                raise _Rollback
    except _Rollback:
        return None
    except Exception as exc:
        return exc
    return None


def shape(exc: BaseException) -> str:
    """The message with every number replaced: what a user could compare across ids."""
    return re.sub(r"\d+", "<n>", str(exc))


# Every operation that takes an id, as (name, op(session, target ids, caller's own ids)). Called
# by A with ``target`` = B's ids each must raise NotFound; with A's own ids none may.
ID_OPS: dict[str, Op] = {
    "accounts.get": lambda s, o, m: s.accounts.get(o.account),
    "accounts.delete": lambda s, o, m: s.accounts.delete(o.spare_account),
    "accounts.set_margin": lambda s, o, m: s.accounts.set_margin(o.account, Decimal(3)),
    "accounts.set_trading_mode": lambda s, o, m: s.accounts.set_trading_mode(o.account, "live"),
    "portfolios.get": lambda s, o, m: s.portfolios.get(o.portfolio),
    "portfolios.broker_code": lambda s, o, m: s.portfolios.broker_code(o.portfolio),
    "portfolios.owner_zone": lambda s, o, m: s.portfolios.owner_zone(o.portfolio),
    "portfolios.update[name]": lambda s, o, m: s.portfolios.update(o.portfolio, name="Mine"),
    "portfolios.update[description]": lambda s, o, m: s.portfolios.update(
        o.portfolio, description="mine now"
    ),
    "portfolios.set_default": lambda s, o, m: s.portfolios.set_default(o.spare_portfolio),
    "portfolios.set_current": lambda s, o, m: s.portfolios.set_current(o.portfolio),
    "portfolios.archive": lambda s, o, m: s.portfolios.archive(o.spare_portfolio),
    "portfolios.delete": lambda s, o, m: s.portfolios.delete(o.spare_portfolio),
    "portfolios.create[account]": lambda s, o, m: s.portfolios.create(
        {"name": "Stolen", "account_id": o.account}
    ),
    "strategies.get": lambda s, o, m: s.strategies.get(o.strategy),
    "strategies.set_active": lambda s, o, m: s.strategies.set_active(o.strategy, False),
    "strategies.delete": lambda s, o, m: s.strategies.delete(o.strategy),
    "strategies.check_start[strategy]": lambda s, o, m: s.strategies.check_start(
        o.strategy, m.portfolio
    ),
    "strategies.check_start[portfolio]": lambda s, o, m: s.strategies.check_start(
        m.strategy, o.portfolio
    ),
    "orders.get": lambda s, o, m: s.orders.get(o.order),
    "orders.cancel": lambda s, o, m: s.orders.cancel(o.order, reason="not yours"),
    "orders.record_broker_id": lambda s, o, m: s.orders.record_broker_id(o.order, "X-1"),
    "orders.update_status": lambda s, o, m: s.orders.update_status(o.order, "EXPIRED"),
    "orders.update_status[broker_id]": lambda s, o, m: s.orders.update_status(
        o.order, "CANCELED", broker_order_id="x-1"
    ),
    "orders.by_client_id": lambda s, o, m: s.orders.by_client_id(o.portfolio, o.client_order_id),
    "orders.by_broker_id": lambda s, o, m: s.orders.by_broker_id(
        o.portfolio, o.instrument, o.broker_order_id
    ),
    "orders.list": lambda s, o, m: s.orders.list(portfolio_id=o.portfolio),
    "orders.open_orders": lambda s, o, m: s.orders.open_orders(o.portfolio),
    "orders.place[portfolio]": lambda s, o, m: s.orders.place(order_for(o.portfolio, m.instrument)),
    "orders.place[strategy]": lambda s, o, m: s.orders.place(
        order_for(m.portfolio, m.instrument, strategy_id=o.strategy)
    ),
    "trades.get": lambda s, o, m: s.trades.get(o.trade),
    "trades.list": lambda s, o, m: s.trades.list(o.portfolio),
    "trades.last_broker_trade_ids": lambda s, o, m: s.trades.last_broker_trade_ids(
        o.portfolio, "TEST"
    ),
    "trades.pnl": lambda s, o, m: s.trades.pnl(o.portfolio),
    "trades.ingest_fill[portfolio]": lambda s, o, m: s.trades.ingest_fill(
        fill(o.portfolio, m.instrument, "BUY", "0.1", "100")
    ),
    "trades.ingest_fill[order]": lambda s, o, m: s.trades.ingest_fill(
        fill(m.portfolio, m.instrument, "BUY", "0.1", "100", order_id=o.order)
    ),
    "trades.ingest_fill[strategy]": lambda s, o, m: s.trades.ingest_fill(
        fill(m.portfolio, m.instrument, "BUY", "0.1", "100", strategy_id=o.strategy)
    ),
    # all or nothing: the caller's own fill in the same batch is not kept either
    "trades.ingest_fills": lambda s, o, m: s.trades.ingest_fills(
        [fill(p, m.instrument, "BUY", "0.1", "100") for p in (m.portfolio, o.portfolio)]
    ),
    "positions.snapshot": lambda s, o, m: s.positions.snapshot(o.portfolio, include_flat=True),
    "positions.recompute": lambda s, o, m: s.positions.recompute(o.portfolio),
    "positions.verify": lambda s, o, m: s.positions.verify(o.portfolio),
    "positions.repair": lambda s, o, m: s.positions.repair(o.portfolio),
    "cash.deposit": lambda s, o, m: s.cash.deposit(o.portfolio, "1", "USDT"),
    "cash.withdraw": lambda s, o, m: s.cash.withdraw(o.portfolio, "1", "USDT"),
    "cash.adjust": lambda s, o, m: s.cash.adjust(o.portfolio, "-1", "USDT"),
    "cash.record": lambda s, o, m: s.cash.record(
        {"portfolio_id": o.portfolio, "kind": "DEPOSIT", "amount": "1", "currency": "USDT"}
    ),
    "cash.balances": lambda s, o, m: s.cash.balances(o.portfolio),
    "cash.movements": lambda s, o, m: s.cash.movements(o.portfolio),
    "valuation.value": lambda s, o, m: s.valuation.value(o.portfolio, {m.instrument: MARK}),
    "valuation.balances": lambda s, o, m: s.valuation.balances(o.portfolio),
    "valuation.totals": lambda s, o, m: s.valuation.totals(o.portfolio),
    "equity.snapshot": lambda s, o, m: s.equity.snapshot(o.portfolio, T0, {m.instrument: MARK}),
    "equity.history": lambda s, o, m: s.equity.history(o.portfolio),
    "equity.curve": lambda s, o, m: s.equity.curve(o.portfolio),
    "equity.profit": lambda s, o, m: s.equity.profit(o.portfolio, marks={m.instrument: MARK}),
    "valuation.check_order": lambda s, o, m: s.valuation.check_order(
        {
            "portfolio_id": o.portfolio,
            "instrument_id": m.instrument,
            "side": "BUY",
            "quantity": "1",
        },
        {m.instrument: MARK},
    ),
    "risk.create_policy[portfolio]": lambda s, o, m: s.risk.create_policy(
        policy_on("PORTFOLIO", o.portfolio)
    ),
    "risk.create_policy[strategy]": lambda s, o, m: s.risk.create_policy(
        policy_on("STRATEGY", o.strategy)
    ),
    "risk.create_policy[user]": lambda s, o, m: s.risk.create_policy(policy_on("USER", o.user)),
    "risk.update_policy": lambda s, o, m: s.risk.update_policy(o.policy, {"max_leverage": "2"}),
    "risk.set_active": lambda s, o, m: s.risk.set_active(o.policy, False),
    "risk.delete_policy": lambda s, o, m: s.risk.delete_policy(o.policy),
    "risk.applicable_policies": lambda s, o, m: s.risk.applicable_policies(o.portfolio),
    "risk.load_policies": lambda s, o, m: s.risk.load_policies(o.portfolio),
    "risk.snapshot": lambda s, o, m: s.risk.snapshot(o.portfolio, {m.instrument: MARK}, "USDT"),
    "risk.evaluate": lambda s, o, m: s.risk.evaluate(
        order_for(o.portfolio, m.instrument), {m.instrument: MARK}
    ),
    "risk.record_breach[portfolio]": lambda s, o, m: s.risk.record_breach(m.verdict, o.portfolio),
    "risk.record_breach[policy]": lambda s, o, m: s.risk.record_breach(o.verdict, m.portfolio),
    "risk.breaches": lambda s, o, m: s.risk.breaches(portfolio_id=o.portfolio),
    "alerts.create[portfolio]": lambda s, o, m: s.alerts.create(price_alert("new", o.portfolio)),
    "alerts.get": lambda s, o, m: s.alerts.get(o.alert),
    "alerts.set_active": lambda s, o, m: s.alerts.set_active(o.alert, False),
    "alerts.update_config": lambda s, o, m: s.alerts.update_config(o.alert, PRICE_ALERT),
    "alerts.delete": lambda s, o, m: s.alerts.delete(o.alert),
    "schedules.get": lambda s, o, m: s.schedules.get(o.schedule),
    "schedules.set_active": lambda s, o, m: s.schedules.set_active(o.schedule, False),
    "schedules.update": lambda s, o, m: s.schedules.update(o.schedule, cron="5 4 * * *"),
    "schedules.mark_run": lambda s, o, m: s.schedules.mark_run(o.schedule, T0),
    "schedules.delete": lambda s, o, m: s.schedules.delete(o.schedule),
    "screeners.get": lambda s, o, m: s.screeners.get(o.screener),
    "screeners.set_active": lambda s, o, m: s.screeners.set_active(o.screener, False),
    "screeners.update_config": lambda s, o, m: s.screeners.update_config(
        o.screener, {"min_price": "2"}
    ),
    "screeners.delete": lambda s, o, m: s.screeners.delete(o.screener),
    "risk.record_breach[order]": lambda s, o, m: s.risk.record_breach(
        m.verdict, m.portfolio, order_id=o.order
    ),
    "risk.evaluate[strategy]": lambda s, o, m: s.risk.evaluate(
        order_for(m.portfolio, m.instrument, strategy_id=o.strategy), {m.instrument: MARK}
    ),
    "risk.applicable_policies[strategy]": lambda s, o, m: s.risk.applicable_policies(
        m.portfolio, o.strategy
    ),
    "risk.load_policies[strategy]": lambda s, o, m: s.risk.load_policies(m.portfolio, o.strategy),
    "strategy_runs.start": lambda s, o, m: s.strategy_runs.start(o.strategy, o.portfolio),
    "strategy_runs.start[portfolio]": lambda s, o, m: s.strategy_runs.start(
        m.strategy, o.portfolio
    ),
    "strategy_runs.stop": lambda s, o, m: s.strategy_runs.stop(o.strategy, o.portfolio),
    "accounts.default_portfolio": lambda s, o, m: s.accounts.default_portfolio(o.account),
    "unapplied_events.keep": lambda s, o, m: s.unapplied_events.keep(
        o.portfolio, {"kind": "fill"}, "not yours"
    ),
    "unapplied_events.failed_again": lambda s, o, m: s.unapplied_events.failed_again(
        o.unapplied, "again"
    ),
    "unapplied_events.applied": lambda s, o, m: s.unapplied_events.applied(o.unapplied),
}

# Everything else a session offers (called with the caller's own ids).
OTHER_OPS: dict[str, Op] = {
    "users.set_timezone": lambda s, o, m: s.users.set_timezone("Europe/Berlin"),
    "users.set_muted": lambda s, o, m: s.users.set_muted(True),
    "users.set_notify": lambda s, o, m: s.users.set_notify("fills", False),
    "users.set_reachable": lambda s, o, m: s.users.set_reachable(o.user, False),
    "users.pending": lambda s, o, m: s.users.pending(),
    "users.list_all": lambda s, o, m: s.users.list_all(),
    "users.approve": lambda s, o, m: s.users.approve(o.telegram),
    "users.revoke": lambda s, o, m: s.users.revoke(o.telegram),
    "users.deactivate": lambda s, o, m: s.users.deactivate(o.telegram),
    "users.reactivate": lambda s, o, m: s.users.reactivate(o.telegram),
    "users.promote": lambda s, o, m: s.users.promote(o.telegram),
    "users.demote": lambda s, o, m: s.users.demote(o.telegram),
    "users.register": lambda s, o, m: s.users.register(o.telegram, "x", chat_id=1),
    "users.lookup": lambda s, o, m: s.users.lookup(o.telegram),
    "users.find": lambda s, o, m: s.users.find(o.telegram),
    "users.find_by_id": lambda s, o, m: s.users.find_by_id(o.user),
    "users.admins": lambda s, o, m: s.users.admins(),
    "brokers.list": lambda s, o, m: s.brokers.list(),
    "brokers.create": lambda s, o, m: s.brokers.create("KRAKEN", "Kraken"),
    "accounts.list": lambda s, o, m: s.accounts.list(),
    "accounts.list_for_user": lambda s, o, m: s.accounts.list_for_user(o.user),
    "accounts.by_name": lambda s, o, m: s.accounts.by_name("Paper"),
    "accounts.create": lambda s, o, m: s.accounts.create({"broker": "IBKR", "name": "New"}),
    "portfolios.list": lambda s, o, m: s.portfolios.list(),
    "portfolios.by_name": lambda s, o, m: s.portfolios.by_name("Main"),
    "portfolios.default": lambda s, o, m: s.portfolios.default(),
    "portfolios.current": lambda s, o, m: s.portfolios.current(),
    "portfolios.create": lambda s, o, m: s.portfolios.create({"name": "N", "account_id": 1}),
    "strategies.create": lambda s, o, m: s.strategies.create({"name": "fresh"}),
    "strategies.list": lambda s, o, m: s.strategies.list(),
    "strategies.versions": lambda s, o, m: s.strategies.versions(f"sma-{o.tag}"),
    "strategies.latest": lambda s, o, m: s.strategies.latest(f"sma-{o.tag}"),
    "instruments.list": lambda s, o, m: s.instruments.list(),
    "instruments.get": lambda s, o, m: s.instruments.get(o.instrument),
    "instruments.create": lambda s, o, m: s.instruments.create(NEW_INSTRUMENT),
    "instruments.ensure": lambda s, o, m: s.instruments.ensure(NEW_INSTRUMENT),
    "instruments.apply_exchange_rules": lambda s, o, m: s.instruments.apply_exchange_rules(
        [NEW_INSTRUMENT]
    ),
    "orders.list[all]": lambda s, o, m: s.orders.list(),
    "orders.open_orders[all]": lambda s, o, m: s.orders.open_orders(),
    "positions.verify[all]": lambda s, o, m: s.positions.verify(),
    "risk.list_policies": lambda s, o, m: s.risk.list_policies(),
    "risk.breaches[all]": lambda s, o, m: s.risk.breaches(),
    "alerts.list": lambda s, o, m: s.alerts.list(),
    "alerts.create": lambda s, o, m: s.alerts.create(
        {"name": "n", "type": "PRICE", "config": PRICE_ALERT}
    ),
    "schedules.list": lambda s, o, m: s.schedules.list(),
    "schedules.create": lambda s, o, m: s.schedules.create(
        {"name": "n", "cron": "0 9 * * 1-5", "config": {"report": "pnl"}}
    ),
    "schedules.due": lambda s, o, m: s.schedules.due(FAR_FUTURE),
    "screeners.list": lambda s, o, m: s.screeners.list(),
    "screeners.create": lambda s, o, m: s.screeners.create({"name": "n", "config": {}}),
    "trades.ingest_fills[empty]": lambda s, o, m: s.trades.ingest_fills([]),
    "audit.recent": lambda s, o, m: s.audit.recent(),
    "strategy_runs.list": lambda s, o, m: s.strategy_runs.list(),
    "strategy_runs.running": lambda s, o, m: s.strategy_runs.running(),
    "audit.log": lambda s, o, m: s.audit.log("USER", o.user, "UPDATE", {"note": "x"}),
    "unapplied_events.list": lambda s, o, m: s.unapplied_events.list(include_applied=True),
    "unapplied_events.pending": lambda s, o, m: s.unapplied_events.pending(),
    "marks.latest": lambda s, o, m: s.marks.latest(),
    "marks.save": lambda s, o, m: s.marks.save({m.instrument: MARK}, T0),
    "equity.snapshot_all": lambda s, o, m: s.equity.snapshot_all(T0, {m.instrument: MARK}),
}
ALL_OPS = {**ID_OPS, **OTHER_OPS}
ADMIN_ONLY = {
    *("users.pending", "users.list_all", "users.approve", "users.revoke", "users.deactivate"),
    *("users.lookup", "users.find", "users.find_by_id", "users.admins", "brokers.create"),
    "users.set_reachable",
    *("users.reactivate", "users.promote", "users.demote", "users.register", "audit.log"),
    *("accounts.list_for_user", "instruments.create", "instruments.ensure"),
    "instruments.apply_exchange_rules",
    *("unapplied_events.pending", "marks.save", "equity.snapshot_all"),
}

# Not in ALL_OPS, on purpose: register and me work for anyone (asserted below),
# bootstrap_admins is for the system actor only (Forbidden, asserted below) and
# positions.apply_fill is the pure position arithmetic (no database, no user data).
EXEMPT = {"users.me", "users.bootstrap_admins", "positions.apply_fill"}
# The short list of methods that take an id and answer whatever its owner: everything else
# that takes one is in ID_OPS (a foreign id is NotFound) or ADMIN_ONLY (Forbidden to users).
IGNORE_THE_SCOPE = {
    "instruments.get": "instruments are market data every approved user reads",
    "users.bootstrap_admins": "the system actor's (Forbidden to users, asserted below)",
}
BOOTSTRAP: Op = lambda s, o, m: s.users.bootstrap_admins([1])  # noqa: E731

# The exact wording for a few of them: B's id and a missing id read the same.
WORDING = {
    "accounts.get": ("account", "no account #{}"),
    "portfolios.get": ("portfolio", "no portfolio #{}"),
    "strategies.get": ("strategy", "no strategy #{}"),
    "orders.get": ("order", "no order #{}"),
    "trades.get": ("trade", "no trade #{}"),
    "risk.set_active": ("policy", "no policy #{}"),
    "alerts.get": ("alert", "no alert #{}"),
    "schedules.get": ("schedule", "no schedule #{}"),
    "screeners.get": ("screener", "no screener #{}"),
    "risk.create_policy[user]": ("user", "no user #{}"),
}


async def test_foreign_ids_are_not_found_and_change_nothing(
    db: Database, engine: AsyncEngine, world: tuple[Ids, Ids]
) -> None:
    a, b = world
    missing = b.missing()
    before = await contents(engine)
    problems: list[str] = []
    for name, op in ID_OPS.items():
        counts = await table_counts(engine)
        foreign = await outcome(db, a.actor, op, b, a)
        absent = await outcome(db, a.actor, op, missing, a)
        own = await outcome(db, a.actor, op, a, a, commit=False)  # rolled back
        if await table_counts(engine) != counts:
            problems.append(f"{name}: row counts changed")
        if not isinstance(foreign, NotFound):
            problems.append(f"{name}: B's ids gave {foreign!r}, not NotFound")
        elif not isinstance(absent, NotFound):
            problems.append(f"{name}: a missing id gave {absent!r}, not NotFound")
        elif shape(foreign) != shape(absent):
            problems.append(f"{name}: {str(foreign)!r} vs missing {str(absent)!r}")
        if name in WORDING and isinstance(foreign, NotFound):
            field, template = WORDING[name]
            expected = (template.format(getattr(b, field)), template.format(MISSING))
            if (str(foreign), str(absent)) != expected:
                problems.append(f"{name}: {str(foreign)!r}, {str(absent)!r} != {expected}")
        if isinstance(own, NotFound):  # the call itself must be right for A's own rows
            problems.append(f"{name}: A's own ids gave {own!r}")
    assert not problems, "\n".join(problems)
    assert await contents(engine) == before


async def test_listings_show_only_the_callers_rows(db: Database, world: tuple[Ids, Ids]) -> None:
    a, b = world
    for me, other in ((a, b), (b, a)):
        async with db.session(me.actor, readonly=True) as s:
            orders = await s.orders.list(status=list(ORDER_STATUSES), limit=1000)
            open_orders = await s.orders.open_orders(limit=1000)
            portfolios = await s.portfolios.list(include_archived=True)
            accounts = await s.accounts.list()
            strategies = await s.strategies.list(include_inactive=True)
            policies = await s.risk.list_policies(include_inactive=True)
            breaches = await s.risk.breaches(limit=500)
            alerts = await s.alerts.list()
            schedules = await s.schedules.list()
            due = await s.schedules.due(FAR_FUTURE)
            screeners = await s.screeners.list()
            kept = await s.unapplied_events.list(include_applied=True)
            audit = await s.audit.recent(limit=1000)
            trades = await s.trades.list(me.portfolio)
            versions = await s.strategies.versions(f"sma-{other.tag}")
            with pytest.raises(NotFound):
                await s.portfolios.by_name(f"Spare {other.tag}")
            with pytest.raises(NotFound):
                await s.accounts.by_name(f"Spot {other.tag}")
            with pytest.raises(NotFound):
                await s.strategies.latest(f"sma-{other.tag}")
        assert {r.id for r in orders} == {r.id for r in open_orders} == {me.order}
        assert {r.id for r in portfolios} == {me.portfolio, me.spare_portfolio}
        assert {r.id for r in accounts} == {me.account, me.spare_account}
        assert {r.id for r in strategies} == {me.strategy}
        assert {r.id for r in policies} == {me.policy}
        assert {(r.policy_id, r.portfolio_id, r.order_id) for r in breaches} == {
            (me.policy, me.portfolio, me.order)
        }
        assert {r.id for r in alerts} == {me.alert}
        assert {r.id for r in schedules} == {r.id for r in due} == {me.schedule}
        assert {r.id for r in screeners} == {me.screener}
        assert {r.id for r in kept} == {me.unapplied}
        assert audit and {r.user_id for r in audit} == {me.user}
        assert {r.id for r in trades} == {me.trade}
        assert versions == []


async def test_unapproved_users_get_not_approved_from_every_call(
    db: Database, engine: AsyncEngine, world: tuple[Ids, Ids]
) -> None:
    services = {name: facade.service for name, facade in facades().items()}
    assert services == SERVICES, "a session service is missing from SERVICES"
    public = {
        f"{name}.{attr}"
        for name, cls in SERVICES.items()
        for attr in dir(cls)
        if not attr.startswith("_") and callable(getattr(cls, attr))
    }
    called = {name.split("[")[0] for name in ALL_OPS}
    assert public - called - EXEMPT == set(), "a service method is missing from the call table"

    a, _ = world
    pending = await make_user(db, approved=False)
    revoked = await populate(db, await make_user(db), a.instrument, "R")
    deactivated = await populate(db, await make_user(db), a.instrument, "D")
    admin = await make_user(db, admin=True)
    async with db.session(admin, admin=True) as s:
        await s.users.revoke(revoked.telegram)
        await s.users.deactivate(deactivated.telegram)
    ghost = Actor.user(MISSING)  # a user id with no users row

    before = await contents(engine)
    problems: list[str] = []
    # The pending user owns nothing yet: it aims at A's rows, and must still hear NotApproved.
    for label, actor, ids in (
        ("pending", pending, a),
        ("revoked", revoked.actor, revoked),
        ("deactivated", deactivated.actor, deactivated),
        ("unknown", ghost, a),
    ):
        for name, op in ALL_OPS.items():
            exc = await outcome(db, actor, op, ids, ids)
            if not isinstance(exc, NotApproved):
                problems.append(f"{label} {name}: {exc!r}")
        if await outcome(db, actor, BOOTSTRAP, ids, ids) is None:
            problems.append(f"{label} users.bootstrap_admins succeeded")
    assert not problems, "\n".join(problems)
    assert await contents(engine) == before

    async with db.session(pending) as s:
        me = await s.users.me()
        with pytest.raises(NotApproved):  # registering is tradebook's, for /start's sender
            await s.users.register(me.telegram_user_id, "new name")
    async with db.session(Actor.system()) as s:
        again = await s.users.register(me.telegram_user_id, "new name")
    assert me.approved_at is None and again.id == me.id == pending.user_id
    async with db.session(revoked.actor) as s:
        assert (await s.users.me()).approved_at is None
    async with db.session(deactivated.actor) as s:
        assert (await s.users.me()).is_active is False
    with pytest.raises(NotApproved, match="deactivated"):
        async with db.session(deactivated.actor) as s:
            await s.portfolios.list()
    with pytest.raises(NotApproved, match="waiting for approval"):
        async with db.session(revoked.actor) as s:
            await s.portfolios.list()


async def test_admin_scope_is_for_admins_only(
    db: Database, engine: AsyncEngine, world: tuple[Ids, Ids]
) -> None:
    a, b = world
    before = await contents(engine)
    with pytest.raises(Forbidden):
        async with db.session(a.actor, admin=True) as s:
            await s.orders.list()
    # Every other call, as A: exactly the admin methods are Forbidden (others rolled back).
    for name, op in OTHER_OPS.items():
        exc = await outcome(db, a.actor, op, b, a, commit=False)
        assert isinstance(exc, Forbidden) == (name in ADMIN_ONLY), f"{name}: {exc!r}"
    bootstrap = await outcome(db, a.actor, BOOTSTRAP, b, a)
    assert isinstance(bootstrap, Forbidden), repr(bootstrap)
    assert await contents(engine) == before

    admin = await make_user(db, admin=True)
    async with db.session(admin, admin=True, readonly=True) as s:
        every_order = {r.id for r in await s.orders.list()}
        every_portfolio = {r.id for r in await s.portfolios.list()}
    assert {a.order, b.order} <= every_order
    assert {a.portfolio, b.portfolio} <= every_portfolio
    async with db.session(admin) as s:  # without the admin scope an admin is an ordinary user
        assert await s.orders.list() == []
        with pytest.raises(NotFound):
            await s.orders.get(a.order)
        with pytest.raises(Forbidden, match="admin session"):
            await s.users.approve(a.telegram)


async def test_a_portfolios_open_orders_check_the_owner_in_the_same_statement(
    db: Database, world: tuple[Ids, Ids]
) -> None:
    """``/orders`` on a fresh session (one call, as the bot makes it) is one statement: the
    approval and ownership check rides in the query. Its rows are still only the caller's; an
    empty answer runs the precise check (NotFound for another user's portfolio)."""
    a, b = world
    dal = db.scoped(a.actor)
    with captured_statements(db) as sent:
        assert {r.id for r in await dal.orders.open_orders(a.portfolio)} == {a.order}
    seen = [statement for statement, _ in sent if statement.lstrip().startswith("SELECT")]
    assert len(seen) == 1 and "EXISTS" in seen[0], seen
    assert await dal.orders.open_orders(a.spare_portfolio) == []
    with pytest.raises(NotFound, match=f"no portfolio #{b.portfolio}"):
        await dal.orders.open_orders(b.portfolio)
    admin = db.scoped(await make_user(db, admin=True)).as_admin()
    assert {r.id for r in await admin.orders.open_orders(b.portfolio)} == {b.order}


def test_a_method_that_takes_an_id_follows_the_scope_or_is_on_the_short_list() -> None:
    scoped = {name.split("[")[0] for name in ID_OPS}
    unchecked = []
    for name, cls in SERVICES.items():
        for attr in dir(cls):
            method = getattr(cls, attr)
            if attr.startswith("_") or not callable(method):
                continue
            parameters = inspect.signature(method).parameters
            takes_id = any(p.endswith(("_id", "_ids")) for p in parameters)
            full = f"{name}.{attr}"
            if takes_id and full not in scoped | ADMIN_ONLY | set(IGNORE_THE_SCOPE):
                unchecked.append(full)
    assert unchecked == [], "these take an id but nothing shows they follow the actor's scope"
