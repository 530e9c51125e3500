"""Fill ingestion: trade → order → position → audit in one transaction, idempotent.

``ingest_fill`` statement plan (6 statements for a fill of a known order): lock the order,
lock the position, insert the trade (``ON CONFLICT DO NOTHING`` on the idempotency key),
update the order, update the position, insert the audit row. A replayed fill stops after
the trade insert and writes nothing.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal, localcontext
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from dal import schema as t
from dal.accounts import owned_portfolio, owned_portfolio_fast
from dal.errors import Conflict, InvalidInput, NotFound
from dal.instruments import resolve_instrument
from dal.models import Fill, aware_arg, parse, valid_id
from dal.pnl_summary import (
    Entry,
    add_to_summary,
    daily_totals,
    owner_zone,
    remember_zone,
    totals_by_instrument,
)
from dal.position_math import apply_fill
from dal.positions import lock_position, rederive_position, state_of, write_position
from dal.scope import Tx
from dal.strategies import owned_strategy
from dal.types import DECIMAL_CONTEXT, new_uid, quantize18

trades = t.trades
orders = t.orders
log = logging.getLogger("tradebook.ingest")

_TRADE_CONFLICT_TARGET = [trades.c.portfolio_id, trades.c.instrument_id, trades.c.broker_trade_id]
# Fields a replay must repeat exactly; anything else under the same broker trade id conflicts.
_REPLAY_FIELDS = ("side", "quantity", "price", "fee", "fee_currency", "exec_time", "order_id")


@dataclass(frozen=True)
class IngestResult:
    trade: sa.Row
    replayed: bool  # True when this fill had been ingested before (nothing changed)


# Statements of the hot path, built once (see dal/positions.py).
_INSERT_TRADE = {
    name: dialect_insert(trades)
    .on_conflict_do_nothing(index_elements=_TRADE_CONFLICT_TARGET)
    .returning(*trades.c)
    for name, dialect_insert in (("sqlite", sqlite.insert), ("postgresql", postgresql.insert))
}
_TRADE = sa.select(trades).where(trades.c.id == sa.bindparam("trade_id"))
_LOCK_ORDER = sa.select(orders).where(orders.c.id == sa.bindparam("order_id")).with_for_update()
_UPDATE_ORDER = orders.update().where(orders.c.id == sa.bindparam("order_id"))


def _trade(conn: sa.Connection, trade_id: int) -> sa.Row:
    return conn.execute(_TRADE, {"trade_id": trade_id}).one()


def _lock_order(tx: Tx, order_id: int, portfolio_id: int) -> sa.Row:
    row = tx.conn.execute(_LOCK_ORDER, {"order_id": order_id}).one_or_none()
    if row is None or row.portfolio_id != portfolio_id:
        raise NotFound(f"no order #{order_id} in portfolio #{portfolio_id}")
    return row


def ingest_one(tx: Tx, fill: Fill, checked: dict[int, sa.Row] | None = None) -> IngestResult:
    """The fill transaction's body (the caller owns the transaction). ``checked`` memoizes
    the portfolio check across one ``ingest_fills`` batch (nothing else runs in between)."""
    conn = tx.conn
    portfolio = checked.get(fill.portfolio_id) if checked is not None else None
    if portfolio is None:
        portfolio = owned_portfolio_fast(tx, fill.portfolio_id, writable=True)
        if checked is not None:
            checked[portfolio.id] = portfolio
    instrument = resolve_instrument(tx, fill.instrument_id, fill.symbol, fill.exchange)

    order = None
    strategy_id = fill.strategy_id
    if fill.order_id is not None:
        order = _lock_order(tx, fill.order_id, portfolio.id)
        if order.instrument_id != instrument.id or order.side != fill.side:
            raise InvalidInput(
                f"fill ({fill.side} {instrument.symbol}) does not match order #{order.id} "
                f"({order.side} instrument #{order.instrument_id})"
            )
        if strategy_id is not None and strategy_id != order.strategy_id:
            raise InvalidInput(f"fill strategy #{strategy_id} differs from its order's")
        strategy_id = order.strategy_id
    elif strategy_id is not None:
        strategy = owned_strategy(tx, strategy_id)
        if strategy.user_id != portfolio.user_id:
            raise NotFound(f"no strategy #{strategy_id}")

    key = (portfolio.id, instrument.id, strategy_id)
    position = lock_position(tx, key)
    before = state_of(position)
    result = apply_fill(before, fill.side, fill.quantity, fill.price, fill.exec_time)

    trade = conn.execute(
        _INSERT_TRADE[conn.dialect.name],
        {
            "uid": new_uid(),
            "portfolio_id": portfolio.id,
            "instrument_id": instrument.id,
            "strategy_id": strategy_id,
            "order_id": order.id if order is not None else None,
            "side": fill.side,
            "quantity": fill.quantity,
            "price": fill.price,
            "fee": fill.fee,
            "fee_currency": fill.fee_currency,
            "realized_pnl": result.realized,
            "exec_time": fill.exec_time,
            "broker_trade_id": fill.broker_trade_id,
            "meta_json": fill.meta,
        },
    ).one_or_none()
    if trade is None:
        return IngestResult(_replayed(conn, fill, portfolio.id, instrument.id, order), True)
    trade_id = trade.id
    if "owner_timezone" in portfolio._mapping:
        remember_zone(tx, portfolio.id, portfolio.owner_timezone)
    add_to_summary(
        tx,
        portfolio.id,
        [Entry(instrument.id, fill.exec_time, fill.fee_currency, result.realized, fill.fee, 1)],
    )

    if order is not None:
        _apply_to_order(tx, order, fill)

    late = position.last_exec_time is not None and fill.exec_time < position.last_exec_time
    if late:
        # A fill older than the last one applied: replay this position's trades in canonical
        # order (exec_time, id), fixing per-trade realized PnL on the way.
        rederive_position(tx, key, position.id)
        trade = _trade(conn, trade_id)  # its realized PnL may have been re-derived
    else:
        write_position(tx, position.id, result.state, fill.exec_time, trade_id)

    tx.audit(
        "TRADE",
        trade_id,
        "FILL",
        {
            "trade_uid": trade.uid,
            "order_id": trade.order_id,
            "broker_trade_id": fill.broker_trade_id,
            "side": fill.side,
            "symbol": instrument.symbol,
            "quantity": fill.quantity,
            "price": fill.price,
            "realized_pnl": trade.realized_pnl,
            "late": late,
        },
        user_id=portfolio.user_id,
    )
    log.info(
        "fill applied (in transaction) %s %s %s at %s",
        fill.side,
        fill.quantity,
        instrument.symbol,
        fill.price,
        extra={
            # The correlation id follows the order through the logs: its client id (the
            # strategies' and the bot's), else its uid; a fill without an order uses its own.
            "correlation_id": _correlation_id(order, fill),
            "trade_id": trade_id,
            "portfolio_id": portfolio.id,
            "late": late,
        },
    )
    return IngestResult(trade, False)


def _correlation_id(order: sa.Row | None, fill: Fill) -> str:
    if order is not None:
        return order.client_order_id or order.uid
    return fill.broker_trade_id or "manual-fill"


def _replayed(
    conn: sa.Connection, fill: Fill, portfolio_id: int, instrument_id: int, order: sa.Row | None
) -> sa.Row:
    existing = conn.execute(
        sa.select(trades).where(
            trades.c.portfolio_id == portfolio_id,
            trades.c.instrument_id == instrument_id,
            trades.c.broker_trade_id == fill.broker_trade_id,
        )
    ).one()
    wanted = {
        "side": fill.side,
        "quantity": fill.quantity,
        "price": fill.price,
        "fee": fill.fee,
        "fee_currency": fill.fee_currency,
        "exec_time": fill.exec_time,
        "order_id": order.id if order is not None else None,
    }
    different = [f for f in _REPLAY_FIELDS if getattr(existing, f) != wanted[f]]
    if different:
        raise Conflict(
            f"trade {fill.broker_trade_id!r} was already ingested with different "
            f"{', '.join(different)}"
        )
    return existing


def _apply_to_order(tx: Tx, order: sa.Row, fill: Fill) -> None:
    if order.status == "REJECTED":
        raise Conflict(f"order #{order.id} was rejected; it cannot be filled")
    with localcontext(DECIMAL_CONTEXT):
        filled = order.filled_quantity + fill.quantity
        if filled > order.quantity:
            raise Conflict(
                f"fill of {fill.quantity} overfills order #{order.id}: "
                f"{order.filled_quantity} of {order.quantity} already filled"
            )
        previous = order.avg_fill_price or Decimal(0)
        avg = quantize18((previous * order.filled_quantity + fill.quantity * fill.price) / filled)
    if filled == order.quantity:
        status = "FILLED"
    elif order.status in ("CANCELED", "EXPIRED"):
        # A fill that happened before the cancel but arrived after it: record it, keep status.
        status = order.status
    else:
        status = "PARTIALLY_FILLED"
    tx.conn.execute(
        _UPDATE_ORDER,
        {
            "order_id": order.id,
            "filled_quantity": filled,
            "avg_fill_price": avg,
            "status": status,
            "updated_at": tx.now(),
        },
    )


@dataclass
class PnlSummary:
    """Realized PnL per currency (never summed across currencies), fees per fee currency."""

    realized: dict[str, Decimal] = field(default_factory=dict)
    fees: dict[str, Decimal] = field(default_factory=dict)
    trade_count: int = 0
    by_instrument: dict[str, dict[str, Any]] = field(default_factory=dict)
    daily: list[tuple[dt.date, str, Decimal]] = field(default_factory=list)

    def add(
        self,
        symbol: str,
        currency: str,
        realized: Decimal,
        fee: Decimal,
        fee_currency: str | None,
        trades: int,
    ) -> None:
        """Count trades of one instrument (call inside ``localcontext(DECIMAL_CONTEXT)``)."""
        self.trade_count += trades
        self.realized[currency] = self.realized.get(currency, Decimal(0)) + realized
        if fee and fee_currency:
            self.fees[fee_currency] = self.fees.get(fee_currency, Decimal(0)) + fee
        entry = self.by_instrument.setdefault(
            symbol, {"currency": currency, "realized": Decimal(0), "trades": 0}
        )
        entry["realized"] += realized
        entry["trades"] += trades


class TradeService:
    def __init__(self, tx: Tx) -> None:
        self.tx = tx

    def ingest_fill(self, fill: Fill | dict[str, Any]) -> IngestResult:
        """Ingest one execution in the session's transaction (see the module docstring)."""
        return ingest_one(self.tx, parse(Fill, fill))

    def ingest_fills(self, fills: list[Fill | dict[str, Any]]) -> list[IngestResult]:
        """Ingest many fills in one transaction (imports, replays, benchmarks). All or
        nothing: one bad fill rolls the whole batch back when the session ends in error."""
        self.tx.require_user()
        parsed = [parse(Fill, f) for f in fills]
        checked: dict[int, sa.Row] = {}
        return [ingest_one(self.tx, fill, checked) for fill in parsed]

    def get(self, trade_id: int) -> sa.Row:
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
    ) -> list[sa.Row]:
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

    def pnl(
        self,
        portfolio_id: int,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        tz: dt.tzinfo = dt.UTC,
    ) -> PnlSummary:
        """Realized PnL and fees from trades in [since, until), exact. Periods that start and
        end at local midnights of the owner's time zone (every /pnl period) are read from the
        PnL summary (dal/pnl_summary.py); any other range sums the trades themselves."""
        owned_portfolio(self.tx, portfolio_id)
        since, until = aware_arg(since, "since"), aware_arg(until, "until")
        days = _local_days(since, until, tz, owner_zone(self.tx, portfolio_id))
        if days is None:
            return _pnl_from_trades(self.tx.conn, portfolio_id, since, until, tz)
        conn = self.tx.conn
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
                )
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
            summary.add(row.symbol, row.currency, row.realized_pnl, row.fee, row.fee_currency, 1)
            daily[(row.exec_time.astimezone(tz).date(), row.currency)] += row.realized_pnl
    summary.daily = [(day, cur, v) for (day, cur), v in sorted(daily.items())]
    return summary
