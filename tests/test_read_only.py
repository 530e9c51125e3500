"""PostgreSQL reads marked ``read_only`` run in autocommit on a connection the server holds
read-only (no BEGIN/COMMIT round trips); everything else keeps its transaction."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from dal import schema as t
from dal.accounts import PortfolioService
from dal.cash import CashService
from dal.database import Database
from dal.equity import EquityService
from dal.orders import OrderService
from dal.positions import PositionService
from dal.scope import is_read_only, read_only
from dal.trades import TradeService
from dal.valuation import ValuationService
from tests.factories import default_portfolio, make_user

postgresql_only = pytest.mark.parametrize("engine_name", ["postgresql"], indirect=True)

# now() is the transaction's start: two statements of one transaction read the same value.
_TWO_NOWS = "SELECT now(), pg_sleep(0.01), current_setting('transaction_read_only')"


def _probe(service: Any, portfolio_id: int) -> tuple[Any, Any, str]:
    conn = service.tx.conn
    first = conn.execute(sa.text(_TWO_NOWS)).one()
    second = conn.execute(sa.text("SELECT now()")).scalar_one()
    return first[0], second, first[2]


@postgresql_only
async def test_a_read_only_call_runs_without_a_transaction_on_a_read_only_connection(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    actor = await make_user(db)
    pid = await default_portfolio(db, actor)
    # (read_only marks the function it is given, so the marked probe is a function of its own.)
    monkeypatch.setattr(PositionService, "snapshot", read_only(lambda s, pid: _probe(s, pid)))
    monkeypatch.setattr(PositionService, "recompute", _probe)  # not marked: a transaction

    first, second, ro = await db.scoped(actor).positions.snapshot(pid)
    assert ro == "on" and second > first  # each statement its own (read-only) transaction

    # (recompute is patched to _probe above: it returns _probe's tuple, not its own dict.)
    first, second, ro = await db.scoped(actor).positions.recompute(pid)  # type: ignore[assignment]  # patched
    assert ro == "off" and second == first  # both statements in one transaction


@postgresql_only
async def test_a_write_from_a_read_only_call_is_refused_and_nothing_is_written(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    actor = await make_user(db)
    pid = await default_portfolio(db, actor)

    def rename(service: Any, portfolio_id: int) -> None:
        service.tx.conn.execute(
            sa.update(t.portfolios).where(t.portfolios.c.id == portfolio_id).values(name="oops")
        )

    monkeypatch.setattr(PositionService, "snapshot", read_only(rename))
    with pytest.raises(sa.exc.DBAPIError, match="read-only transaction"):
        await db.scoped(actor).positions.snapshot(pid)
    assert (await db.scoped(actor).portfolios.get(pid)).name != "oops"


@postgresql_only
async def test_a_read_only_session_refuses_writes_too(db: Database) -> None:
    actor = await make_user(db)
    pid = await default_portfolio(db, actor)
    with pytest.raises(sa.exc.DBAPIError, match="read-only transaction"):
        async with db.session(actor, readonly=True) as s:
            await s.portfolios.update(pid, name="oops")
    assert (await db.scoped(actor).portfolios.get(pid)).name != "oops"


def test_the_bots_hot_reads_are_marked() -> None:
    for method in (
        PositionService.snapshot,
        OrderService.list,
        OrderService.open_orders,
        TradeService.pnl,
        PortfolioService.current,
        PortfolioService.by_name,
        ValuationService.value,
        ValuationService.balances,
        CashService.balances,
        EquityService.history,
    ):
        assert is_read_only(method), method.__qualname__
    assert not is_read_only(TradeService.ingest_fill)
    assert not is_read_only(PortfolioService.set_current)
