"""Users, accounts, portfolios, strategies, cash, risk policies, alerts and schedules."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from dal.database import Database
from dal.errors import Conflict, Forbidden, InvalidInput, NotApproved, NotFound
from dal.scope import Actor
from tests.conftest import captured_statements, table_counts
from tests.factories import (
    T0,
    default_portfolio,
    fill,
    make_instrument,
    make_portfolio,
    make_strategy,
    make_user,
)


async def test_registration_is_pending_until_approved(db: Database) -> None:
    async with db.session(Actor.system()) as s:
        pending = await s.users.register(555, "alice", chat_id=555)
        again = await s.users.register(555, "alice2", chat_id=556)
    assert again.id == pending.id and again.username == "alice2"
    actor = Actor.user(pending.id)
    with pytest.raises(NotApproved, match="waiting for approval"):
        async with db.session(actor) as s:
            await s.portfolios.list()
    async with db.session(actor) as s:
        assert (await s.users.me()).approved_at is None

    admin = await make_user(db, admin=True)
    async with db.session(admin, admin=True) as s:
        assert [u.telegram_user_id for u in await s.users.pending()] == ["555"]
        approved = await s.users.approve("@alice2")
    assert approved.approved_by_user_id == admin.user_id
    async with db.session(actor) as s:
        (portfolio,) = await s.portfolios.list()
        (account,) = await s.accounts.list()
        balances = await s.cash.balances(portfolio.id)
        current = await s.portfolios.current()
    assert (portfolio.name, portfolio.is_default, current.id) == ("Main", True, portfolio.id)
    assert (account.name, account.broker_code, account.base_currency) == ("Paper", "PAPER", "USDT")
    assert balances == {"USDT": Decimal("10000")}

    # Approving twice (or revoking and re-approving) never creates a second default.
    async with db.session(admin, admin=True) as s:
        await s.users.approve(555)
        await s.users.revoke(555)
    with pytest.raises(NotApproved):
        async with db.session(actor) as s:
            await s.portfolios.list()
    async with db.session(admin, admin=True) as s:
        await s.users.approve(555)
        await s.users.deactivate(555)
    with pytest.raises(NotApproved, match="deactivated"):
        async with db.session(actor) as s:
            await s.portfolios.list()
    async with db.session(admin, admin=True) as s:
        with pytest.raises(Conflict, match="deactivated; /reactivate them first"):
            await s.users.approve(555)  # approving never quietly reactivates
        await s.users.reactivate(555)
    async with db.session(actor) as s:
        assert len(await s.portfolios.list()) == 1


async def test_admin_scope_needs_an_admin(db: Database) -> None:
    user = await make_user(db)
    with pytest.raises(Forbidden):
        async with db.session(user, admin=True) as s:
            await s.users.pending()
    async with db.session(user) as s:
        with pytest.raises(Forbidden):
            await s.users.approve(1)
        with pytest.raises(Forbidden):
            await s.instruments.create({"symbol": "X", "asset_type": "CRYPTO", "currency": "USDT"})


async def test_bootstrap_admins_is_idempotent(db: Database) -> None:
    async with db.session(Actor.system()) as s:
        first = await s.users.bootstrap_admins([77, 78])
        second = await s.users.bootstrap_admins([77, 78])
    assert [u.id for u in first] == [u.id for u in second]
    assert all(u.is_admin and u.approved_at is not None for u in second)
    async with db.session(Actor.user(first[0].id)) as s:
        assert len(await s.portfolios.list()) == 1


async def test_portfolios_names_default_archive_delete(db: Database, engine: AsyncEngine) -> None:
    actor = await make_user(db)
    inst = await make_instrument(db)
    async with db.session(actor) as s:
        main = await s.portfolios.default()
        (account,) = await s.accounts.list()
        side = await s.portfolios.create({"name": "Side", "account_id": account.id})
        with pytest.raises(Conflict, match="already have a portfolio"):
            await s.portfolios.create({"name": "side", "account_id": account.id})
        with pytest.raises(Conflict, match="cannot be archived"):
            await s.portfolios.archive(main.id)
        await s.portfolios.set_default(side.id)
        assert (await s.portfolios.default()).id == side.id
        assert sum(p.is_default for p in await s.portfolios.list()) == 1
        await s.trades.ingest_fill(fill(main.id, inst, "BUY", "1", "5"))
        with pytest.raises(Conflict, match="archive it instead"):
            await s.portfolios.delete(main.id)
        archived = await s.portfolios.archive(main.id)
        assert archived.archived_at is not None
        assert [p.name for p in await s.portfolios.list()] == ["Side"]
        with pytest.raises(Conflict, match="archived"):
            await s.trades.ingest_fill(fill(main.id, inst, "BUY", "1", "5"))
        empty = await s.portfolios.create({"name": "Tmp", "account_id": account.id})
        # A change in the session is seen by its next check (checked rows are remembered).
        await s.portfolios.get(empty.id)
        await s.portfolios.update(empty.id, name="Tmp2")
        assert (await s.portfolios.get(empty.id)).name == "Tmp2"
        await s.portfolios.delete(empty.id)
        with pytest.raises(NotFound):
            await s.portfolios.get(empty.id)


async def test_the_current_portfolio_is_the_chosen_one_else_the_default(db: Database) -> None:
    actor = await make_user(db)
    dal = db.scoped(actor)  # each call a fresh session: the one-statement read
    main = await dal.portfolios.default()
    (account,) = await dal.accounts.list()
    side = await dal.portfolios.create({"name": "Side", "account_id": account.id})
    assert (await dal.portfolios.current()).id == main.id
    await dal.portfolios.set_current(side.id)
    assert (await dal.portfolios.current()).id == side.id
    async with db.session(actor) as s:  # the user row read first: the two-step read
        await s.users.me()
        assert (await s.portfolios.current()).id == side.id
    await dal.portfolios.archive(side.id)
    assert (await dal.portfolios.current()).id == main.id
    me = await dal.users.me()
    admin = await make_user(db, admin=True)
    async with db.session(admin, admin=True) as s:
        await s.users.deactivate(me.telegram_user_id)
    with pytest.raises(NotApproved, match="deactivated"):
        await dal.portfolios.current()


async def test_accounts(db: Database) -> None:
    actor = await make_user(db)
    async with db.session(actor) as s:
        account = await s.accounts.create(
            {"broker": "binance", "name": "Spot", "account_uid": "abc", "base_currency": "usdt"}
        )
        assert (account.base_currency, account.account_uid) == ("USDT", "abc")
        with pytest.raises(InvalidInput, match="unknown broker"):
            await s.accounts.create({"broker": "NOPE", "name": "X"})
        with pytest.raises(Conflict):
            await s.accounts.create({"broker": "IBKR", "name": "Spot"})
        await s.portfolios.create({"name": "Binance", "account_id": account.id})
        with pytest.raises(Conflict, match="still has portfolios"):
            await s.accounts.delete(account.id)


async def test_strategy_versions(db: Database) -> None:
    actor = await make_user(db)
    pid = await default_portfolio(db, actor)
    inst = await make_instrument(db)
    v19 = await make_strategy(db, actor, "sma", "1.9", fast=5)
    v110 = await make_strategy(db, actor, "sma", "1.10", fast=7)
    async with db.session(actor) as s:
        assert (await s.strategies.latest("sma")).id == v110
        assert (await s.strategies.latest("sma", "1.9")).id == v19
        with pytest.raises(Conflict, match="already exists"):
            await s.strategies.create({"name": "sma", "version": "1.10"})
        await s.trades.ingest_fill(fill(pid, inst, "BUY", "1", "5", strategy_id=v19))
        with pytest.raises(Conflict, match="hold positions"):
            await s.strategies.check_start(v110, pid)
        with pytest.raises(Conflict, match="deactivate it instead"):
            await s.strategies.delete(v19)
        await s.trades.ingest_fill(
            fill(
                pid, inst, "SELL", "1", "6", strategy_id=v19, exec_time=T0 + dt.timedelta(minutes=1)
            )
        )
        assert (await s.strategies.check_start(v110, pid)).id == v110
        await s.strategies.set_active(v110, False)
        assert (await s.strategies.latest("sma")).id == v19
        v2 = await s.strategies.create({"name": "sma", "version": "2.0"})
        await s.strategies.delete(v2.id)


async def test_cash_and_equity(db: Database) -> None:
    actor = await make_user(db)
    pid = await default_portfolio(db, actor)
    inst = await make_instrument(db, "BTCUSDT")
    async with db.session(actor) as s:
        await s.cash.deposit(pid, "500", "USDT")
        await s.cash.withdraw(pid, "200.5", "USDT")
        with pytest.raises(Conflict, match=r"free balance 10299\.5 USDT"):
            await s.cash.withdraw(pid, "1000000", "USDT")
        await s.cash.adjust(pid, "-0.5", "USDT", note="fee rebate correction")
        assert await s.cash.balances(pid) == {"USDT": Decimal("10299")}
        await s.trades.ingest_fill(
            fill(pid, inst, "BUY", "2", "100", fee=Decimal("0.2"), fee_currency="USDT")
        )
        await s.trades.ingest_fill(
            fill(pid, inst, "SELL", "1", "150", exec_time=T0 + dt.timedelta(minutes=1))
        )
        equity = await s.valuation.value(pid, {inst: Decimal("120")})
        no_mark = await s.valuation.value(pid, {})
    # USDT: 10299 − 2 × 100 − fee 0.2 + 1 × 150 = 10248.8; BTC: 1, at 120
    assert equity.equity == Decimal("10368.8") and equity.currency == "USDT"
    assert equity.values == {"USDT": Decimal("10248.8"), "BTC": Decimal("120")}
    assert no_mark.unconverted == {"BTC": Decimal("1")}
    assert no_mark.equity == Decimal("10248.8")


async def test_policies_precedence_evaluate_and_breach(db: Database, engine: AsyncEngine) -> None:
    actor = await make_user(db)
    pid = await default_portfolio(db, actor)
    inst = await make_instrument(db, "BTCUSDT")
    strategy = await make_strategy(db, actor)
    async with db.session(actor) as s:
        user_policy = await s.risk.create_policy(
            {
                "name": "base",
                "scope_type": "USER",
                "config": {"max_order_notional": "5000", "max_daily_loss": "0.05"},
            }
        )
        pf_policy = await s.risk.create_policy(
            {
                "name": "main",
                "scope_type": "PORTFOLIO",
                "scope_id": pid,
                "config": {"max_order_notional": "2000", "mode": "warn"},
            }
        )
        st_policy = await s.risk.create_policy(
            {
                "name": "sma",
                "scope_type": "STRATEGY",
                "scope_id": strategy,
                "config": {"max_order_notional": "1000"},
            }
        )
        limits = await s.risk.load_policies(pid)
        assert limits["max_order_notional"].policy_id == pf_policy.id
        assert limits["max_daily_loss"].policy_id == user_policy.id
        limits = await s.risk.load_policies(pid, strategy)
        assert limits["max_order_notional"].policy_id == st_policy.id

        order = {
            "portfolio_id": pid,
            "instrument_id": inst,
            "side": "BUY",
            "type": "LIMIT",
            "quantity": "30",
            "price": "100",
        }
        verdict = await s.risk.evaluate(order, {inst: Decimal("100")})
        assert verdict.decision == "warn"  # 3000 > 2000 under the portfolio's warn policy
        blocked = await s.risk.evaluate({**order, "strategy_id": strategy}, {inst: Decimal("100")})
        assert blocked.decision == "block"
        before = await table_counts(engine)
        ids = await s.risk.record_breach(blocked, pid, inst)
        assert len(ids) == len(blocked.breaches) >= 1
        (latest, *_) = await s.risk.breaches(pid)
        assert latest.policy_name == "sma" and latest.action == "BLOCKED"
        with pytest.raises(Conflict, match="breaches"):
            await s.risk.delete_policy(st_policy.id)
        await s.risk.set_active(st_policy.id, False)
        limits = await s.risk.load_policies(pid, strategy)
        assert limits["max_order_notional"].policy_id == pf_policy.id
    after = await table_counts(engine)
    assert after["risk_breaches"] == before["risk_breaches"] + len(ids)


async def test_a_fresh_call_reads_the_policies_with_the_portfolio_check(db: Database) -> None:
    """A short call (a bot command, a placement) checks the portfolio and reads the policies
    that cover it in one statement; the policies are those a longer session reads."""
    actor = await make_user(db)
    pid = await default_portfolio(db, actor)
    other_pid = await make_portfolio(db, actor, "other")
    strategy = await make_strategy(db, actor)
    stranger = await make_user(db)
    limits = {"max_order_notional": "1000"}
    async with db.session(actor) as s:
        for name, scope, scope_id in (
            ("mine", "USER", None),
            ("here", "PORTFOLIO", pid),
            ("there", "PORTFOLIO", other_pid),
            ("sma", "STRATEGY", strategy),
            ("off", "PORTFOLIO", pid),
        ):
            row = await s.risk.create_policy(
                {"name": name, "scope_type": scope, "scope_id": scope_id, "config": limits}
            )
        await s.risk.set_active(row.id, False)
    async with db.session(stranger) as s:
        await s.risk.create_policy({"name": "theirs", "scope_type": "USER", "config": limits})

    dal = db.scoped(actor)
    for strategy_id, names in ((None, ["here", "mine"]), (strategy, ["sma", "here", "mine"])):
        with captured_statements(db) as sent:
            fresh = await dal.risk.applicable_policies(pid, strategy_id)
        assert [p.name for p in fresh] == names
        assert len(_reads(sent)) == (1 if strategy_id is None else 2)  # + the strategy check
        async with db.session(actor) as s:
            await s.users.me()  # the session has read the user: the two-step check runs
            assert [tuple(p) for p in await s.risk.applicable_policies(pid, strategy_id)] == [
                tuple(p) for p in fresh
            ]
    # A portfolio no policy covers still checks out in one statement; another's is not found.
    newcomer = await make_user(db)
    newcomer_pid = await default_portfolio(db, newcomer)
    with captured_statements(db) as sent:
        assert await db.scoped(newcomer).risk.applicable_policies(newcomer_pid) == []
    assert len(_reads(sent)) == 1
    with pytest.raises(NotFound):
        await db.scoped(stranger).risk.applicable_policies(pid)
    with captured_statements(db) as sent:
        assert [p.name for p in await dal.risk.applicable_policies(other_pid)] == ["there", "mine"]
    assert len(_reads(sent)) == 1


def _reads(sent: list[tuple[str, Any]]) -> list[str]:
    return [sql for sql, _ in sent if not sql.startswith("BEGIN")]


async def test_daily_loss_uses_the_users_local_day(db: Database) -> None:
    actor = await make_user(db)
    pid = await default_portfolio(db, actor)
    inst = await make_instrument(db, "BTCUSDT")
    # 23:30 UTC on May 1st is already May 2nd in Tokyo.
    now = dt.datetime(2024, 5, 1, 23, 30, tzinfo=dt.UTC)
    async with db.session(actor) as s:
        await s.users.set_timezone("Asia/Tokyo")
        await s.trades.ingest_fill(
            fill(pid, inst, "BUY", "1", "1000", exec_time=now - dt.timedelta(hours=2))
        )
        await s.trades.ingest_fill(
            fill(pid, inst, "SELL", "1", "600", exec_time=now - dt.timedelta(hours=1))
        )
        tokyo = await s.risk.snapshot(pid, {}, "USDT", now=now)
        await s.users.set_timezone("America/New_York")
        new_york = await s.risk.snapshot(pid, {}, "USDT", now=now)
    # Tokyo's day began at 15:00 UTC: both fills are today. New York's began at 04:00 UTC.
    assert tokyo.realized_today == Decimal(-400)
    assert new_york.realized_today == Decimal(-400)
    async with db.session(actor) as s:
        later = await s.risk.snapshot(pid, {}, "USDT", now=now + dt.timedelta(hours=1))
        await s.users.set_timezone("Asia/Tokyo")
        tokyo_later = await s.risk.snapshot(pid, {}, "USDT", now=now + dt.timedelta(hours=1))
        with pytest.raises(InvalidInput, match="time zone"):
            await s.users.set_timezone("Mars/Olympus")
    assert later.realized_today == Decimal(-400)  # 00:30 UTC May 2 = 20:30 May 1 in New York
    assert tokyo_later.realized_today == Decimal(-400)
    assert tokyo.day_start_equity == tokyo.equity + Decimal(400)


async def test_schedules_next_run_and_missed_runs(db: Database) -> None:
    actor = await make_user(db)
    async with db.session(actor) as s:
        schedule = await s.schedules.create(
            {
                "name": "daily pnl",
                "cron": "0 18 * * *",
                "config": {"report": "pnl", "period": "today"},
            }
        )
        assert schedule.next_run_at.hour == 18 and schedule.next_run_at.minute == 0
        three_days_later = schedule.next_run_at + dt.timedelta(days=3, hours=1)
        (due,) = await s.schedules.due(three_days_later)
        ran = await s.schedules.mark_run(due.id, three_days_later)
        # Three missed runs collapse into this one; the next is tomorrow's 18:00.
        assert ran.last_run_at == three_days_later
        assert ran.next_run_at == (three_days_later + dt.timedelta(days=1)).replace(
            hour=18, minute=0, second=0, microsecond=0
        )
        assert await s.schedules.due(three_days_later) == []
        paused = await s.schedules.set_active(schedule.id, False)
        assert not paused.is_active


async def test_alerts_and_screeners_crud(db: Database) -> None:
    actor = await make_user(db)
    await make_instrument(db, "BTCUSDT")
    async with db.session(actor) as s:
        with pytest.raises(InvalidInput, match="no instrument 'NOPEUSDT'"):
            await s.alerts.create(
                {
                    "name": "never",
                    "type": "PRICE",
                    "config": {"symbol": "NOPEUSDT", "op": "above", "price": "1"},
                }
            )
        alert = await s.alerts.create(
            {
                "name": "btc 70k",
                "type": "PRICE",
                "config": {"symbol": "BTCUSDT", "op": "above", "price": "70000"},
            }
        )
        assert alert.config_json == {"symbol": "BTCUSDT", "op": "above", "price": "70000"}
        updated = await s.alerts.update_config(
            alert.id, {"symbol": "BTCUSDT", "op": "below", "price": "60000"}
        )
        assert updated.config_json["op"] == "below"
        with pytest.raises(Conflict):
            await s.alerts.create(
                {
                    "name": "btc 70k",
                    "type": "RISK",
                    "config": {"metric": "leverage", "op": "above", "value": "2"},
                }
            )
        screener = await s.screeners.create(
            {"name": "cheap", "config": {"asset_type": "CRYPTO", "max_price": "1"}}
        )
        await s.alerts.set_active(alert.id, False)
        assert [a.id for a in await s.alerts.list(include_inactive=False)] == []
        await s.alerts.delete(alert.id)
        await s.screeners.delete(screener.id)
        assert await s.alerts.list() == [] and await s.screeners.list() == []
        kinds = [r.action for r in await s.audit.recent(entity_type="ALERT")]
    assert kinds == ["DELETE", "DEACTIVATE", "UPDATE", "CREATE"]


async def test_instruments_by_symbol(db: Database) -> None:
    actor = await make_user(db)
    await make_instrument(db, "BTCUSDT", exchange="BINANCE", tick_size=Decimal("0.01"))
    await make_instrument(db, "BTCUSDT", exchange="KRAKEN")
    async with db.session(actor) as s:
        with pytest.raises(InvalidInput, match="several exchanges"):
            await s.instruments.get(symbol="BTCUSDT")
        row = await s.instruments.get(symbol="btcusdt", exchange="binance")
        assert row.tick_size == Decimal("0.01")
        with pytest.raises(NotFound, match="unknown symbol DOGE"):
            await s.instruments.get(symbol="DOGE")
    async with db.session(Actor.system()) as s:
        again = await s.instruments.ensure(
            {"symbol": "BTCUSDT", "exchange": "BINANCE", "asset_type": "CRYPTO", "currency": "USDT"}
        )
        assert again.id == row.id
        with pytest.raises(Conflict):
            await s.instruments.create(
                {
                    "symbol": "BTCUSDT",
                    "exchange": "BINANCE",
                    "asset_type": "CRYPTO",
                    "currency": "USDT",
                }
            )
