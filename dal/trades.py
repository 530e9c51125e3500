"""Trades: ingestion (``dal/ingest.py`` does the work), listing, and realized PnL reports."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Sized
from dataclasses import dataclass, field
from decimal import Decimal, localcontext
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from dal import schema as t
from dal.decimals import DECIMAL_CONTEXT
from dal.errors import NotFound
from dal.ingest import IngestResult, ingest
from dal.models import Fill, aware_arg, parse, valid_id
from dal.ownership import owned_portfolio
from dal.pnl_summary import (
    daily_totals,
    owner_zone,
    totals_by_instrument,
)
from dal.position_math import holding_seconds
from dal.scope import Tx, long_running_when, read_only

trades = t.trades

# A batch of more fills than this runs on SQLite's writer thread instead of the event loop's
# (dal/execution.py): about 0.1 ms of Python per fill, so the loop is never held for much
# longer than a few milliseconds by one transaction (docs/performance.md, "The event loop
# while fills pour in").
LOOP_BATCH_FILLS = 20


def _long_batch(fills: Any) -> bool:
    return not isinstance(fills, Sized) or len(fills) > LOOP_BATCH_FILLS


@dataclass
class InstrumentPnl:
    """One instrument's realized PnL (in its currency) and its winning and losing trades
    (those that realized a profit or a loss)."""

    currency: str
    realized: Decimal = Decimal(0)
    trades: int = 0
    wins: int = 0
    losses: int = 0
    gross_profit: Decimal = Decimal(0)
    gross_loss: Decimal = Decimal(0)  # ≥ 0
    closes: int = 0  # trades that reduced a position
    held: Decimal = Decimal(0)  # seconds those positions had been open, summed


@dataclass
class PnlSummary:
    """Realized PnL per currency (never summed across currencies), fees per fee currency."""

    realized: dict[str, Decimal] = field(default_factory=dict)
    fees: dict[str, Decimal] = field(default_factory=dict)
    trade_count: int = 0
    by_instrument: dict[str, InstrumentPnl] = field(default_factory=dict)
    daily: list[tuple[dt.date, str, Decimal]] = field(default_factory=list)

    def add(
        self,
        symbol: str,
        currency: str,
        realized: Decimal,
        fee: Decimal,
        fee_currency: str | None,
        trades: int,
        wins: int = 0,
        losses: int = 0,
        gross_profit: Decimal = Decimal(0),
        gross_loss: Decimal = Decimal(0),
        closes: int = 0,
        held: Decimal = Decimal(0),
    ) -> None:
        """Count trades of one instrument (call inside ``localcontext(DECIMAL_CONTEXT)``)."""
        self.trade_count += trades
        self.realized[currency] = self.realized.get(currency, Decimal(0)) + realized
        if fee and fee_currency:
            self.fees[fee_currency] = self.fees.get(fee_currency, Decimal(0)) + fee
        entry = self.by_instrument.setdefault(symbol, InstrumentPnl(currency))
        entry.realized += realized
        entry.trades += trades
        entry.wins += wins
        entry.losses += losses
        entry.gross_profit += gross_profit
        entry.gross_loss += gross_loss
        entry.closes += closes
        entry.held += held


class TradeService:
    def __init__(self, tx: Tx) -> None:
        self.tx = tx

    def ingest_fill(self, fill: Fill | dict[str, Any]) -> IngestResult:
        """Ingest one execution in the session's transaction: trade, order, position, PnL
        summary and audit row, all or nothing; a replayed fill changes nothing."""
        (result,) = ingest(self.tx, [parse(Fill, fill)])
        return result

    @long_running_when(_long_batch)
    def ingest_fills(self, fills: list[Fill | dict[str, Any]]) -> list[IngestResult]:
        """Ingest many fills in one transaction (imports, replays, benchmarks) with the
        statements of one fill. All or nothing: one bad fill rolls the whole batch back when
        the session ends in error."""
        parsed = [parse(Fill, f) for f in fills]
        if not parsed:
            self.tx.require_approved()
            return []
        return ingest(self.tx, parsed)  # checks the acting user with the first portfolio

    def last_broker_trade_ids(self, portfolio_id: int, exchange: str) -> dict[str, int]:
        """Per symbol of ``exchange``, the highest numeric broker trade id stored in the
        portfolio (where an exchange's catch-up resumes). Ids that are not numbers (trades
        recorded by hand) are left out."""
        owned_portfolio(self.tx, portfolio_id)
        trade_id = trades.c.broker_trade_id
        digits_removed: sa.ColumnElement[str] = trade_id
        for digit in "0123456789":
            digits_removed = sa.func.replace(digits_removed, digit, "")
        query = (
            sa.select(t.instruments.c.symbol, sa.func.max(sa.cast(trade_id, sa.BigInteger)))
            .join(t.instruments, t.instruments.c.id == trades.c.instrument_id)
            .where(
                trades.c.portfolio_id == portfolio_id,
                t.instruments.c.exchange == exchange.upper(),
                sa.func.length(trade_id).between(1, 18),
                digits_removed == "",
            )
            .group_by(t.instruments.c.symbol)
        )
        return {symbol: int(last) for symbol, last in self.tx.conn.execute(query)}

    def get(self, trade_id: int) -> sa.Row[Any]:
        if not valid_id(trade_id):
            raise NotFound(f"no trade #{trade_id}")
        row = self.tx.conn.execute(
            sa.select(trades)
            .join(t.portfolios, t.portfolios.c.id == trades.c.portfolio_id)
            .where(trades.c.id == trade_id, self.tx.owned(t.portfolios.c.user_id))
        ).one_or_none()
        if row is None:
            raise NotFound(f"no trade #{trade_id}")
        return row

    def list(
        self,
        portfolio_id: int,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        limit: int | None = 100,
    ) -> list[sa.Row[Any]]:
        """Trades of a portfolio in [since, until), newest first."""
        owned_portfolio(self.tx, portfolio_id)
        since, until = aware_arg(since, "since"), aware_arg(until, "until")
        query = (
            sa.select(trades, t.instruments.c.symbol, t.instruments.c.currency)
            .join(t.instruments, t.instruments.c.id == trades.c.instrument_id)
            .where(trades.c.portfolio_id == portfolio_id)
            .order_by(trades.c.exec_time.desc(), trades.c.id.desc())
        )
        if since is not None:
            query = query.where(trades.c.exec_time >= since)
        if until is not None:
            query = query.where(trades.c.exec_time < until)
        if limit is not None:
            query = query.limit(limit)
        return list(self.tx.conn.execute(query))

    @read_only
    def pnl(
        self,
        portfolio_id: int,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        tz: dt.tzinfo = dt.UTC,
        daily: bool = True,
    ) -> PnlSummary:
        """Realized PnL and fees from trades in [since, until), exact. Periods that start and
        end at local midnights of the owner's time zone (every /pnl period) are read from the
        PnL summary (dal/pnl_summary.py); any other range sums the trades themselves.
        ``daily=False`` leaves out the per-day series (what only a chart needs)."""
        owned_portfolio(self.tx, portfolio_id)  # remembers the owner's zone when it reads it
        since, until = aware_arg(since, "since"), aware_arg(until, "until")
        zone = owner_zone(self.tx, portfolio_id)
        return period_pnl(self.tx.conn, portfolio_id, since, until, tz, zone, daily)


def period_pnl(
    conn: sa.Connection,
    portfolio_id: int,
    since: dt.datetime | None,
    until: dt.datetime | None,
    tz: dt.tzinfo,
    zone: str,
    daily: bool = True,
) -> PnlSummary:
    """``TradeService.pnl`` of a portfolio the caller has checked, whose owner's time zone
    is ``zone``."""
    days = _local_days(since, until, tz, zone)
    if days is None:
        return _pnl_from_trades(conn, portfolio_id, since, until, tz)
    summary = PnlSummary()
    with localcontext(DECIMAL_CONTEXT):
        for row in totals_by_instrument(conn, portfolio_id, *days):
            summary.add(
                row.symbol,
                row.currency,
                row.realized_pnl,
                row.fees,
                row.fee_currency,
                row.trade_count,
                row.win_count,
                row.loss_count,
                row.gross_profit,
                row.gross_loss,
                row.closing_count,
                row.holding_seconds,
            )
    if daily:
        summary.daily = daily_totals(conn, portfolio_id, *days)
    return summary


def _local_days(
    since: dt.datetime | None, until: dt.datetime | None, tz: dt.tzinfo, zone: str
) -> tuple[dt.date | None, dt.date | None] | None:
    """[since, until) as local days [first, end) of ``zone`` when ``tz`` is that zone and
    both ends are local midnights; None when the summary cannot answer exactly."""
    if getattr(tz, "key", "UTC" if tz is dt.UTC else None) != zone:
        return None
    local_zone = ZoneInfo(zone)
    days = []
    for moment in (since, until):
        day = moment.astimezone(local_zone).date() if moment is not None else None
        if day is not None and dt.datetime.combine(day, dt.time(), local_zone) != moment:
            return None  # not a local midnight
        days.append(day)
    return days[0], days[1]


def _pnl_from_trades(
    conn: sa.Connection,
    portfolio_id: int,
    since: dt.datetime | None,
    until: dt.datetime | None,
    tz: dt.tzinfo,
) -> PnlSummary:
    """``TradeService.pnl`` summed from the trades themselves (SQLite would sum decimal TEXT
    as floats, so in Python). Reads only the columns it sums."""
    query = (
        sa.select(
            trades.c.realized_pnl,
            trades.c.fee,
            trades.c.fee_currency,
            trades.c.exec_time,
            trades.c.position_opened_at,
            t.instruments.c.symbol,
            t.instruments.c.currency,
        )
        .join(t.instruments, t.instruments.c.id == trades.c.instrument_id)
        .where(trades.c.portfolio_id == portfolio_id)
    )
    if since is not None:
        query = query.where(trades.c.exec_time >= since)
    if until is not None:
        query = query.where(trades.c.exec_time < until)
    summary = PnlSummary()
    daily: dict[tuple[dt.date, str], Decimal] = defaultdict(Decimal)
    with localcontext(DECIMAL_CONTEXT):
        for row in conn.execute(query):
            pnl = row.realized_pnl
            summary.add(
                row.symbol,
                row.currency,
                pnl,
                row.fee,
                row.fee_currency,
                1,
                int(pnl > 0),
                int(pnl < 0),
                max(pnl, Decimal(0)),
                max(-pnl, Decimal(0)),
                int(row.position_opened_at is not None),
                holding_seconds(row.position_opened_at, row.exec_time),
            )
            daily[(row.exec_time.astimezone(tz).date(), row.currency)] += row.realized_pnl
    summary.daily = [(day, cur, v) for (day, cur), v in sorted(daily.items())]
    return summary
