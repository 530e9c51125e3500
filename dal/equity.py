"""Equity history: one snapshot per portfolio and local day of its owner.

A snapshot is the portfolio's equity (``value_portfolio``) in its account's currency at the
marks of that moment, with the net deposits so far. The day's row is rewritten by every
snapshot taken that day, so it holds the equity at the day's last snapshot: its close. The
balances and marks it was valued on are stored with it, so its equity can be derived again
(``rederive``; ``db verify`` does). A fill that arrives late, dated before a snapshot, does
not rewrite that past day: the snapshot stays what the portfolio was worth when it was taken.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, localcontext
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from dal import schema as t
from dal.balances import Balance
from dal.decimals import DECIMAL_CONTEXT
from dal.errors import Forbidden
from dal.marks import stored_marks
from dal.models import aware_arg, check_marks
from dal.ownership import owned_portfolio, owned_portfolio_rows
from dal.position_math import ZERO, canonical_amount
from dal.scope import Tx, read_only
from dal.trades import PnlSummary, period_pnl
from dal.types import trimmed_on_postgresql
from dal.valuation import Prices, Valuation, value_portfolio

snapshots = t.equity_snapshots

_PORTFOLIO = (
    sa.select(t.portfolios.c.id, t.accounts.c.base_currency, t.users.c.timezone)
    .join(t.accounts, t.accounts.c.id == t.portfolios.c.account_id)
    .join(t.users, t.users.c.id == t.portfolios.c.user_id)
)
_NET_DEPOSITS = sa.select(t.cash_movements.c.currency, t.cash_movements.c.amount).where(
    t.cash_movements.c.portfolio_id == sa.bindparam("portfolio_id"),
    t.cash_movements.c.created_at <= sa.bindparam("until"),
)


def net_deposits(
    conn: sa.Connection, portfolio_id: int, currency: str, rates: Prices, until: dt.datetime
) -> Decimal:
    """Deposits minus withdrawals up to ``until``, in ``currency`` (other currencies at
    ``rates``; one that cannot be converted is left out of this sum)."""
    total = ZERO
    with localcontext(DECIMAL_CONTEXT):
        for asset, amount in conn.execute(
            _NET_DEPOSITS, {"portfolio_id": portfolio_id, "until": until}
        ):
            rate = rates.price(asset, currency)
            if rate is not None:
                total += amount * rate
    return canonical_amount(total)


@functools.cache
def _closes(dialect: str, since: bool) -> sa.Select[Any]:
    """The daily closes in one currency, oldest first (``since``: from a day on)."""
    query = (
        sa.select(snapshots.c.day, trimmed_on_postgresql(snapshots.c.equity, dialect))
        .where(
            snapshots.c.portfolio_id == sa.bindparam("portfolio_id"),
            snapshots.c.currency == sa.bindparam("currency"),
        )
        .order_by(snapshots.c.day)
    )
    return query.where(snapshots.c.day >= sa.bindparam("since")) if since else query


def _text_map(values: Mapping[Any, Decimal]) -> dict[str, str]:
    return {str(key): str(value) for key, value in sorted(values.items())}


def take_snapshot(
    conn: sa.Connection,
    portfolio_id: int,
    currency: str,
    zone: str,
    marks: Mapping[int, Decimal],
    at: dt.datetime,
) -> sa.Row[Any]:
    """Write the portfolio's snapshot for ``at``'s local day (replacing that day's row)."""
    day = at.astimezone(ZoneInfo(zone)).date()
    valuation = value_portfolio(conn, portfolio_id, currency, marks)
    row = {
        "portfolio_id": portfolio_id,
        "day": day,
        "currency": currency,
        "equity": valuation.equity,
        "net_deposits": net_deposits(conn, portfolio_id, currency, valuation.rates, at),
        "marks_json": _text_map(marks),
        "balances_json": _text_map({b.asset: b.total for b in valuation.balances}),
        "unconverted_json": _text_map(valuation.unconverted),
        "as_of": at,
    }
    conn.execute(
        snapshots.delete().where(snapshots.c.portfolio_id == portfolio_id, snapshots.c.day == day)
    )
    conn.execute(snapshots.insert(), row)
    return conn.execute(
        sa.select(snapshots).where(snapshots.c.portfolio_id == portfolio_id, snapshots.c.day == day)
    ).one()


def rederive(conn: sa.Connection, snapshot: Any) -> Decimal:
    """A stored snapshot's equity again, from its stored balances and marks."""
    marks = {int(key): Decimal(value) for key, value in snapshot.marks_json.items()}
    held = [Balance(a, Decimal(total), ZERO) for a, total in snapshot.balances_json.items()]
    return value_portfolio(conn, snapshot.portfolio_id, snapshot.currency, marks, held).equity


@dataclass(frozen=True)
class Profit:
    """The reads behind /profit (``EquityService.profit``)."""

    summary: PnlSummary  # the period's realized PnL, fees and trades (no daily series)
    valuation: Valuation  # now, in the account's currency (open orders' reservations not read)
    closes: list[tuple[dt.date, Decimal]]  # daily equity closes in that currency, oldest first


class EquityService:
    def __init__(self, tx: Tx) -> None:
        self.tx = tx

    def snapshot(
        self,
        portfolio_id: int,
        at: dt.datetime,
        marks: Mapping[int, Decimal] | None = None,
    ) -> sa.Row[Any]:
        """Record the portfolio's equity now (its owner's local day of ``at``)."""
        owned_portfolio(self.tx, portfolio_id)
        row = self.tx.conn.execute(_PORTFOLIO.where(t.portfolios.c.id == portfolio_id)).one()
        checked = stored_marks(self.tx.conn) if marks is None else check_marks(dict(marks))
        return take_snapshot(
            self.tx.conn, portfolio_id, row.base_currency, row.timezone, checked, at
        )

    def snapshot_all(self, at: dt.datetime, marks: Mapping[int, Decimal]) -> int:
        """Record every live portfolio's equity (tradebook's daily job; the system only)."""
        self.tx.require_approved()
        if not self.tx.actor.is_system:
            raise Forbidden("equity snapshots of every portfolio are taken by tradebook itself")
        checked = check_marks(dict(marks))
        rows = list(
            self.tx.conn.execute(
                _PORTFOLIO.where(
                    t.portfolios.c.archived_at.is_(None), t.users.c.is_active.is_(True)
                ).order_by(t.portfolios.c.id)
            )
        )
        for row in rows:
            take_snapshot(self.tx.conn, row.id, row.base_currency, row.timezone, checked, at)
        return len(rows)

    @read_only
    def curve(self, portfolio_id: int, since: dt.date | None = None) -> list[sa.Row[Any]]:
        """(day, currency, equity) of the daily snapshots, oldest first: what a drawdown, a
        chart or a period's closing equity needs."""
        columns = (snapshots.c.day, snapshots.c.currency, snapshots.c.equity)
        return self._snapshots(portfolio_id, since, columns)

    @read_only
    def profit(
        self,
        portfolio_id: int,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        tz: dt.tzinfo = dt.UTC,
        marks: Mapping[int, Decimal] | None = None,
    ) -> Profit:
        """What /profit shows, read in one call: ``TradeService.pnl`` of [since, until)
        without its daily series, the valuation at ``marks`` (default: the last stored marks)
        in the account's currency, and the daily closes in that currency from ``since``'s
        day in ``tz`` on (all of them without ``since``)."""
        (portfolio,) = owned_portfolio_rows(
            self.tx, portfolio_id, _PORTFOLIO.where(t.portfolios.c.id == portfolio_id)
        )
        since, until = aware_arg(since, "since"), aware_arg(until, "until")
        conn = self.tx.conn
        summary = period_pnl(conn, portfolio_id, since, until, tz, portfolio.timezone, False)
        currency = portfolio.base_currency
        checked = None if marks is None else check_marks(dict(marks))
        valuation = value_portfolio(conn, portfolio_id, currency, checked, open_orders=False)
        params: dict[str, Any] = {"portfolio_id": portfolio_id, "currency": currency}
        if since is not None:
            params["since"] = since.astimezone(tz).date()
        query = _closes(self.tx.dialect, since is not None)
        closes = [(day, equity) for day, equity in conn.execute(query, params).all()]
        return Profit(summary, valuation, closes)

    @read_only
    def history(
        self, portfolio_id: int, since: dt.date | None = None, with_inputs: bool = False
    ) -> list[sa.Row[Any]]:
        """The portfolio's daily snapshots, oldest first: day, currency, equity, net deposits
        and as_of (``with_inputs``: every column, the balances and marks too)."""
        if with_inputs:
            return self._snapshots(portfolio_id, since, tuple(snapshots.c))
        columns = (
            snapshots.c.day,
            snapshots.c.currency,
            snapshots.c.equity,
            snapshots.c.net_deposits,
            snapshots.c.as_of,
        )
        return self._snapshots(portfolio_id, since, columns)

    def _snapshots(
        self, portfolio_id: int, since: dt.date | None, columns: tuple[Any, ...]
    ) -> list[sa.Row[Any]]:
        query = sa.select(*columns).where(snapshots.c.portfolio_id == portfolio_id)
        if since is not None:
            query = query.where(snapshots.c.day >= since)
        return owned_portfolio_rows(self.tx, portfolio_id, query.order_by(snapshots.c.day))
