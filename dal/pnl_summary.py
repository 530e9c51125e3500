"""The realized-PnL summary: what /pnl reads instead of every trade of the period.

One row per (portfolio, DAY or MONTH, start of that day/month in the owner's time zone,
instrument, fee currency) holding the realized PnL, fees and number of its trades. The fill
transaction adds each new trade to its day row and its month row (one upsert), and its
realized PnL to the ``pnl_daily`` row of its day and quote currency (the chart's daily
series); a late fill that re-derives earlier trades' PnL adds the differences. Reads take whole
months from the MONTH rows and the ragged ends from DAY rows, and sum exactly in SQL
(``decimal_sum``), so ``/pnl ytd`` reads a few hundred summary and daily rows where a busy
portfolio has tens of thousands of trades.

Days are the owner's local days because the bot's periods start at local midnight; changing
the time zone (``UserService.set_timezone``) rebuilds the user's summaries in the same
transaction. ``verify_summary`` compares the rows with the trades exactly; ``rebuild_summary``
rewrites them (repair, the migration that introduced them, bulk loads).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, localcontext
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from dal import schema as t
from dal.compiled import DriverStatement
from dal.decimals import DECIMAL_CONTEXT, quantize18
from dal.position_math import ZERO, canonical_amount, holding_seconds
from dal.scope import Tx
from dal.types import Money, decimal_add, decimal_sum

summary = t.pnl_summary
daily = t.pnl_daily
trades = t.trades
DAY, MONTH = "DAY", "MONTH"
_FIRST_DAY, _LAST_DAY = dt.date(1, 1, 1), dt.date(9999, 12, 31)


class Entry(NamedTuple):
    """A change to one trade's contribution (deltas): its realized PnL, fee and count, whether
    it won or lost (realized > 0 or < 0) and by how much, and what it moved between the base
    and the quote asset (``net_quantity``: + bought, − sold; ``net_proceeds``: the notional
    rounded to 18 places, − paid, + received) — the balances are these summed with the cash
    ledger (dal/balances.py). Made by ``of_trade`` and ``correction``."""

    instrument_id: int
    exec_time: dt.datetime
    fee_currency: str | None
    realized: Decimal
    fee: Decimal
    trades: int
    wins: int
    losses: int
    gross_profit: Decimal
    gross_loss: Decimal  # >= 0
    net_quantity: Decimal
    net_proceeds: Decimal
    closes: int  # 1 when the trade reduced a position
    held: Decimal  # the seconds that position had been open (when it reduced one)

    @classmethod
    def of_trade(
        cls,
        instrument_id: int,
        exec_time: dt.datetime,
        fee_currency: str | None,
        side: str,
        quantity: Decimal,
        price: Decimal,
        realized: Decimal,
        fee: Decimal,
        position_opened_at: dt.datetime | None,
    ) -> Entry:
        """One new trade's contribution (inside ``localcontext(DECIMAL_CONTEXT)`` or not);
        ``position_opened_at`` is when the position it reduced was opened (None: it did not
        reduce one)."""
        notional = trade_notional(quantity, price)
        buy = side == "BUY"
        return cls(
            instrument_id,
            exec_time,
            fee_currency,
            realized,
            fee,
            1,
            1 if realized > 0 else 0,
            1 if realized < 0 else 0,
            realized if realized > 0 else ZERO,
            -realized if realized < 0 else ZERO,
            quantity if buy else -quantity,
            -notional if buy else notional,
            0 if position_opened_at is None else 1,
            holding_seconds(position_opened_at, exec_time),
        )

    @classmethod
    def correction(
        cls,
        instrument_id: int,
        exec_time: dt.datetime,
        fee_currency: str | None,
        old: Decimal,
        new: Decimal,
        old_opened_at: dt.datetime | None,
        new_opened_at: dt.datetime | None,
    ) -> Entry:
        """A re-derivation changed a trade's realized PnL from ``old`` to ``new`` and the
        opening time of the position it reduced from ``old_opened_at`` to ``new_opened_at``."""
        sub = DECIMAL_CONTEXT.subtract
        return cls(
            instrument_id,
            exec_time,
            fee_currency,
            sub(new, old),
            ZERO,
            0,
            (new > 0) - (old > 0),
            (new < 0) - (old < 0),
            sub(max(new, ZERO), max(old, ZERO)),
            sub(max(-new, ZERO), max(-old, ZERO)),
            ZERO,
            ZERO,
            (new_opened_at is not None) - (old_opened_at is not None),
            sub(
                holding_seconds(new_opened_at, exec_time),
                holding_seconds(old_opened_at, exec_time),
            ),
        )


def trade_notional(quantity: Decimal, price: Decimal) -> Decimal:
    """What a trade moves in its quote asset: quantity × price, rounded half-even to 18
    places as every stored amount is (the same rounding the position's cost basis gets)."""
    return canonical_amount(quantize18(DECIMAL_CONTEXT.multiply(quantity, price)))


SummaryKey = tuple[str, dt.date, int, str]  # (period, period_start, instrument_id, fee_currency)
DailyKey = tuple[dt.date, str]  # (local day, quote currency)


@dataclass
class Totals:
    """One summary row's amounts (the columns after its key)."""

    realized: Decimal
    fees: Decimal
    count: int
    wins: int = 0
    losses: int = 0
    gross_profit: Decimal = ZERO
    gross_loss: Decimal = ZERO
    net_quantity: Decimal = ZERO
    net_proceeds: Decimal = ZERO
    closes: int = 0
    held: Decimal = ZERO

    @classmethod
    def of(cls, e: Entry) -> Totals:
        return cls(
            e.realized,
            e.fee,
            e.trades,
            e.wins,
            e.losses,
            e.gross_profit,
            e.gross_loss,
            e.net_quantity,
            e.net_proceeds,
            e.closes,
            e.held,
        )

    def add(self, e: Entry) -> None:
        """In ``localcontext(DECIMAL_CONTEXT)``."""
        self.realized += e.realized
        self.fees += e.fee
        self.count += e.trades
        self.wins += e.wins
        self.losses += e.losses
        self.gross_profit += e.gross_profit
        self.gross_loss += e.gross_loss
        self.net_quantity += e.net_quantity
        self.net_proceeds += e.net_proceeds
        self.closes += e.closes
        self.held += e.held


def local_buckets(exec_time: dt.datetime, zone: str) -> tuple[dt.date, dt.date]:
    """The owner's local day of ``exec_time`` and the first day of its month."""
    day = exec_time.astimezone(ZoneInfo(zone)).date()
    return day, day.replace(day=1)


def owner_zone(tx: Tx, portfolio_id: int) -> str:
    """The time zone of the portfolio's owner (once per transaction). Callers have checked
    the portfolio is in scope, so outside the admin scope the owner is the acting user, whose
    row the session may already hold."""
    zones: dict[int, str] = tx.state.setdefault("owner_zones", {})
    zone = zones.get(portfolio_id)
    if zone is None:
        user = tx.state.get("user")
        if user is not None and not tx.admin_scope:
            zone = str(user.timezone)
        else:
            zone = zone_of_portfolio(tx.conn, portfolio_id)
        zones[portfolio_id] = zone
    return zone


def lock_owner_zones(tx: Tx, portfolio_ids: Iterable[int]) -> None:
    """Read the portfolios' owner zones for a fill ``FOR SHARE`` (PostgreSQL): a /tz change
    or a repair, which lock the owner's row first (``lock_owner``), then waits for the fill,
    and a fill queued behind them reads the new zone. Without it a fill could file its summary
    rows under a zone that changed meanwhile, or commit between a rebuild's read of the
    trades and its rewrite. SQLite serializes write transactions anyway."""
    if tx.conn.dialect.name != "postgresql":
        return
    for portfolio_id, zone in tx.conn.execute(_OWNER_ZONES, {"ids": sorted(portfolio_ids)}):
        remember_zone(tx, portfolio_id, zone)


def lock_owner(conn: sa.Connection, user_id: int) -> None:
    """Before rebuilding a user's summary from the trades: wait for that user's fills in
    flight and hold new ones back (see ``lock_owner_zones``)."""
    conn.execute(_LOCK_OWNER, {"user_id": user_id})


def zone_of_portfolio(conn: sa.Connection, portfolio_id: int) -> str:
    zone: str = conn.execute(_ZONE_OF_PORTFOLIO, {"portfolio_id": portfolio_id}).scalar_one()
    return zone


def remember_zone(tx: Tx, portfolio_id: int, zone: str) -> None:
    tx.state.setdefault("owner_zones", {})[portfolio_id] = zone


def summarize(entries: Iterable[Entry], zone: str) -> dict[SummaryKey, Totals]:
    """Entries added up per summary row (a DAY and a MONTH row each)."""
    merged: dict[SummaryKey, Totals] = {}
    with localcontext(DECIMAL_CONTEXT):
        for e in entries:
            day, month = local_buckets(e.exec_time, zone)
            fee_currency = e.fee_currency or ""
            for key in (
                (DAY, day, e.instrument_id, fee_currency),
                (MONTH, month, e.instrument_id, fee_currency),
            ):
                totals = merged.get(key)
                if totals is None:
                    merged[key] = Totals.of(e)
                else:
                    totals.add(e)
    return merged


def summarize_daily(
    entries: Iterable[Entry], zone: str, currencies: Mapping[int, str]
) -> dict[DailyKey, Decimal]:
    """Entries' realized PnL added up per local day and quote currency (``currencies``:
    instrument id → its currency)."""
    merged: dict[DailyKey, Decimal] = {}
    with localcontext(DECIMAL_CONTEXT):
        for e in entries:
            key = (e.exec_time.astimezone(ZoneInfo(zone)).date(), currencies[e.instrument_id])
            merged[key] = merged[key] + e.realized if key in merged else e.realized
    return merged


def add_to_summary(
    tx: Tx, portfolio_id: int, entries: Iterable[Entry], currencies: Mapping[int, str]
) -> None:
    """Add trades (or corrections of their PnL) to the summary and the daily series, in the
    caller's transaction."""
    entries = list(entries)
    if not entries:
        return
    zone = owner_zone(tx, portfolio_id)
    dialect = tx.conn.dialect.name
    _UPSERT[dialect, "pnl_summary"].executemany(
        tx.conn, summary_rows(portfolio_id, summarize(entries, zone))
    )
    daily_rows = daily_summary_rows(portfolio_id, summarize_daily(entries, zone, currencies))
    upsert_daily = _UPSERT[dialect, "pnl_daily"]
    if len(daily_rows) == 1:
        upsert_daily.execute(tx.conn, daily_rows[0])
    else:
        upsert_daily.executemany(tx.conn, daily_rows)


def summary_rows(portfolio_id: int, totals: dict[SummaryKey, Totals]) -> list[dict[str, object]]:
    """Summary totals as pnl_summary rows (parameters of an insert or upsert), in key order:
    concurrent fills then lock the rows they share in the same order (no deadlock on
    PostgreSQL between two batches touching the same days in opposite order)."""
    return [
        {
            "portfolio_id": portfolio_id,
            "period": period,
            "period_start": start,
            "instrument_id": instrument_id,
            "fee_currency": fee_currency,
            "realized_pnl": row.realized,
            "fees": row.fees,
            "trade_count": row.count,
            "win_count": row.wins,
            "loss_count": row.losses,
            "gross_profit": row.gross_profit,
            "gross_loss": row.gross_loss,
            "net_quantity": row.net_quantity,
            "net_proceeds": row.net_proceeds,
            "closing_count": row.closes,
            "holding_seconds": row.held,
        }
        for (period, start, instrument_id, fee_currency), row in sorted(totals.items())
    ]


def daily_summary_rows(
    portfolio_id: int, totals: dict[DailyKey, Decimal]
) -> list[dict[str, object]]:
    """Daily totals as pnl_daily rows (parameters of an insert or upsert), in key order (see
    ``summary_rows``)."""
    return [
        {"portfolio_id": portfolio_id, "day": day, "currency": currency, "realized_pnl": value}
        for (day, currency), value in sorted(totals.items())
    ]


def adding_to_existing_rows(insert: sa.Insert) -> sa.Executable:
    """``insert`` (a dialect's INSERT into pnl_summary or pnl_daily, of values or from a
    select) made to add its amounts and counts to rows that already exist: what every write to
    the summary and the daily series is."""
    table = insert.table
    assert isinstance(table, sa.Table)
    return insert.on_conflict_do_update(  # type: ignore[attr-defined,no-any-return]  # both dialects' Insert have it; the common base does not
        index_elements=list(table.primary_key.columns),
        set_={
            column.name: decimal_add(column, insert.excluded[column.name])  # type: ignore[attr-defined]  # dialect Insert (see above)
            if isinstance(column.type, Money)
            else column + insert.excluded[column.name]  # type: ignore[attr-defined]  # dialect Insert (see above)
            for column in table.c
            if not column.primary_key
        },
    )


_UPSERT = {
    (name, table.name): DriverStatement(
        adding_to_existing_rows(dialect_insert(table)),
        column_keys=[c.name for c in table.c],
        dialect=name,
    )
    for name, dialect_insert in (("sqlite", sqlite.insert), ("postgresql", postgresql.insert))
    for table in (summary, daily)
}
_ZONE_OF_PORTFOLIO = (
    sa.select(t.users.c.timezone)
    .join(t.portfolios, t.portfolios.c.user_id == t.users.c.id)
    .where(t.portfolios.c.id == sa.bindparam("portfolio_id"))
)


_OWNER_ZONES = (
    sa.select(t.portfolios.c.id, t.users.c.timezone)
    .join(t.users, t.users.c.id == t.portfolios.c.user_id)
    .where(t.portfolios.c.id.in_(sa.bindparam("ids", expanding=True)))
    .with_for_update(of=t.users, read=True)
)
_LOCK_OWNER = (
    sa.select(t.users.c.id)
    .where(t.users.c.id == sa.bindparam("user_id"))
    .with_for_update(key_share=True)
)


# --- from the trades: verify and rebuild -------------------------------------------------------
def summarize_trades(trade_rows: Iterable[sa.Row[Any]], zone: str) -> dict[SummaryKey, Totals]:
    """The summary that trade rows (instrument_id, exec_time, fee_currency, realized_pnl,
    fee) add up to."""
    return summarize(
        (
            Entry.of_trade(
                r.instrument_id,
                r.exec_time,
                r.fee_currency,
                r.side,
                r.quantity,
                r.price,
                r.realized_pnl,
                r.fee,
                getattr(r, "position_opened_at", None),
            )
            for r in trade_rows
        ),
        zone,
    )


_SUMMARY_INPUTS = sa.select(
    trades.c.instrument_id,
    trades.c.exec_time,
    trades.c.fee_currency,
    trades.c.side,
    trades.c.quantity,
    trades.c.price,
    trades.c.realized_pnl,
    trades.c.fee,
).where(trades.c.portfolio_id == sa.bindparam("portfolio_id"))
_SUMMARY_INPUTS_WITH_HOLDING = _SUMMARY_INPUTS.add_columns(trades.c.position_opened_at)


def summary_inputs(
    conn: sa.Connection, portfolio_id: int, holding: bool = True
) -> list[sa.Row[Any]]:
    """The columns of a portfolio's trades that its summary and daily series add up
    (``holding=False``: without the positions' opening times, which the migrations before
    0011 have no column for and the daily series does not need)."""
    query = _SUMMARY_INPUTS_WITH_HOLDING if holding else _SUMMARY_INPUTS
    return list(conn.execute(query, {"portfolio_id": portfolio_id}))


def instrument_currencies(conn: sa.Connection) -> dict[int, str]:
    """Instrument id → quote currency (a small table, read whole)."""
    return dict(conn.execute(sa.select(t.instruments.c.id, t.instruments.c.currency)).all())


def expected_daily(
    conn: sa.Connection, trade_rows: Iterable[sa.Row[Any]], zone: str
) -> dict[DailyKey, Decimal]:
    """The daily series that trade rows (instrument_id, exec_time, realized_pnl) add up to."""
    return summarize_daily(
        (
            Entry(
                r.instrument_id,
                r.exec_time,
                None,
                r.realized_pnl,
                ZERO,
                1,
                0,
                0,
                ZERO,
                ZERO,
                ZERO,
                ZERO,
                0,
                ZERO,
            )
            for r in trade_rows
        ),
        zone,
        instrument_currencies(conn),
    )


def stored_daily(conn: sa.Connection, portfolio_id: int) -> dict[DailyKey, Decimal]:
    rows = conn.execute(sa.select(daily).where(daily.c.portfolio_id == portfolio_id))
    return {(r.day, r.currency): r.realized_pnl for r in rows}


def stored_summary(conn: sa.Connection, portfolio_id: int) -> dict[SummaryKey, Totals]:
    rows = conn.execute(sa.select(summary).where(summary.c.portfolio_id == portfolio_id))
    return {
        (r.period, r.period_start, r.instrument_id, r.fee_currency): Totals(
            r.realized_pnl,
            r.fees,
            r.trade_count,
            r.win_count,
            r.loss_count,
            r.gross_profit,
            r.gross_loss,
            r.net_quantity,
            r.net_proceeds,
            r.closing_count,
            r.holding_seconds,
        )
        for r in rows
    }


@dataclass(frozen=True)
class SummaryDifference:
    portfolio_id: int
    key: SummaryKey
    stored: Totals | None
    expected: Totals | None

    def __str__(self) -> str:
        period, start, instrument_id, fee_currency = self.key
        when = start.isoformat() if period == DAY else start.strftime("%Y-%m")
        fee = f" fee currency {fee_currency}" if fee_currency else ""
        return (
            f"portfolio #{self.portfolio_id} instrument #{instrument_id}{fee}: PnL summary of "
            f"{when} is {_show(self.stored)}, trades say {_show(self.expected)}"
        )


@dataclass(frozen=True)
class DailyDifference:
    portfolio_id: int
    key: DailyKey
    stored: Decimal | None
    expected: Decimal | None

    def __str__(self) -> str:
        day, currency = self.key
        stored = "missing" if self.stored is None else f"{self.stored}"
        expected = "nothing" if self.expected is None else f"{self.expected}"
        return (
            f"portfolio #{self.portfolio_id}: daily realized PnL of {day.isoformat()} in "
            f"{currency} is {stored}, trades say {expected}"
        )


def _show(totals: Totals | None) -> str:
    if totals is None:
        return "missing"
    return (
        f"realized {totals.realized}, fees {totals.fees}, {totals.count} trade(s) "
        f"({totals.wins} won {totals.gross_profit}, {totals.losses} lost {totals.gross_loss}), "
        f"net quantity {totals.net_quantity}, net proceeds {totals.net_proceeds}, "
        f"{totals.closes} closing {totals.held} s held"
    )


def verify_summary(
    conn: sa.Connection, portfolio_id: int, trade_rows: Sequence[sa.Row[Any]]
) -> list[SummaryDifference | DailyDifference]:
    """Every summary and daily row that differs from the portfolio's trades (all of them, as
    read by the caller; empty = consistent)."""
    zone = zone_of_portfolio(conn, portfolio_id)
    expected = summarize_trades(trade_rows, zone)
    stored = stored_summary(conn, portfolio_id)
    expected_days = expected_daily(conn, trade_rows, zone)
    stored_days = stored_daily(conn, portfolio_id)
    return [
        *(
            SummaryDifference(portfolio_id, key, stored.get(key), expected.get(key))
            for key in sorted(set(expected) | set(stored))
            if stored.get(key) != expected.get(key)
        ),
        *(
            DailyDifference(portfolio_id, key, stored_days.get(key), expected_days.get(key))
            for key in sorted(set(expected_days) | set(stored_days))
            if stored_days.get(key) != expected_days.get(key)
        ),
    ]


def rebuild_summary(
    conn: sa.Connection,
    portfolio_id: int,
    zone: str | None = None,
    *,
    daily_too: bool = True,
    columns: Collection[str] | None = None,
) -> int:
    """Rewrite a portfolio's summary (and daily series) from its trades, read once; returns
    the number of rows written. ``daily_too=False`` and ``columns`` (the summary's columns
    at the time) are for the migrations that predate pnl_daily and later columns."""
    zone = zone or zone_of_portfolio(conn, portfolio_id)
    rows = summary_inputs(conn, portfolio_id, columns is None or "closing_count" in columns)
    new_rows = summary_rows(portfolio_id, summarize_trades(rows, zone))
    if columns is not None:
        new_rows = [{k: v for k, v in row.items() if k in columns} for row in new_rows]
    written = _rewrite(conn, summary, portfolio_id, new_rows)
    if daily_too:
        written += _rewrite_daily(conn, portfolio_id, rows, zone)
    return written


def rebuild_daily(conn: sa.Connection, portfolio_id: int, zone: str | None = None) -> int:
    """Rewrite a portfolio's daily series from its trades; returns the number of rows."""
    zone = zone or zone_of_portfolio(conn, portfolio_id)
    return _rewrite_daily(conn, portfolio_id, summary_inputs(conn, portfolio_id, False), zone)


def _rewrite_daily(
    conn: sa.Connection, portfolio_id: int, rows: list[sa.Row[Any]], zone: str
) -> int:
    days = daily_summary_rows(portfolio_id, expected_daily(conn, rows, zone))
    return _rewrite(conn, daily, portfolio_id, days)


def _rewrite(
    conn: sa.Connection, table: sa.Table, portfolio_id: int, rows: list[dict[str, object]]
) -> int:
    """Replace a portfolio's rows of ``table`` with ``rows``; returns how many."""
    conn.execute(table.delete().where(table.c.portfolio_id == portfolio_id))
    if rows:
        conn.execute(table.insert(), rows)
    return len(rows)


# --- reading -----------------------------------------------------------------------------------
class Ranges(NamedTuple):
    """[month_from, month_to) from MONTH rows, [day_from, day_to) ∪ [day2_from, day2_to) from
    DAY rows: a local-date range as whole months plus its ragged ends."""

    month_from: dt.date
    month_to: dt.date
    day_from: dt.date
    day_to: dt.date
    day2_from: dt.date
    day2_to: dt.date


def split_range(first: dt.date | None, end: dt.date | None) -> Ranges:
    """Cover the local days [first, end) (None = unbounded) with whole months and days."""
    first_day, end_day = first or _FIRST_DAY, end or _LAST_DAY
    month_from = first_day if first_day.day == 1 else _next_month(first_day)
    month_to = end_day.replace(day=1)
    if first is None:
        month_from = _FIRST_DAY
    if end is None:
        month_to = _LAST_DAY.replace(day=1)
    if month_from >= month_to:  # no whole month inside: days only
        return Ranges(month_from, month_from, first_day, end_day, end_day, end_day)
    return Ranges(month_from, month_to, first_day, month_from, month_to, end_day)


def _next_month(day: dt.date) -> dt.date:
    return (day.replace(day=28) + dt.timedelta(days=4)).replace(day=1)


_IN_RANGES = sa.and_(
    summary.c.portfolio_id == sa.bindparam("portfolio_id"),
    sa.or_(
        sa.and_(
            summary.c.period == MONTH,
            summary.c.period_start >= sa.bindparam("month_from", type_=sa.Date()),
            summary.c.period_start < sa.bindparam("month_to", type_=sa.Date()),
        ),
        sa.and_(
            summary.c.period == DAY,
            summary.c.period_start >= sa.bindparam("day_from", type_=sa.Date()),
            summary.c.period_start < sa.bindparam("day_to", type_=sa.Date()),
        ),
        sa.and_(
            summary.c.period == DAY,
            summary.c.period_start >= sa.bindparam("day2_from", type_=sa.Date()),
            summary.c.period_start < sa.bindparam("day2_to", type_=sa.Date()),
        ),
    ),
)
_BY_INSTRUMENT = (
    sa.select(
        t.instruments.c.symbol,
        t.instruments.c.currency,
        summary.c.fee_currency,
        decimal_sum(summary.c.realized_pnl).label("realized_pnl"),
        decimal_sum(summary.c.fees).label("fees"),
        sa.func.sum(summary.c.trade_count).label("trade_count"),
        sa.func.sum(summary.c.win_count).label("win_count"),
        sa.func.sum(summary.c.loss_count).label("loss_count"),
        decimal_sum(summary.c.gross_profit).label("gross_profit"),
        decimal_sum(summary.c.gross_loss).label("gross_loss"),
        sa.func.sum(summary.c.closing_count).label("closing_count"),
        decimal_sum(summary.c.holding_seconds).label("holding_seconds"),
    )
    .join(t.instruments, t.instruments.c.id == summary.c.instrument_id)
    .where(_IN_RANGES)
    .group_by(t.instruments.c.symbol, t.instruments.c.currency, summary.c.fee_currency)
)


_DAILY = (
    sa.select(daily.c.day, daily.c.currency, daily.c.realized_pnl)
    .where(
        daily.c.portfolio_id == sa.bindparam("portfolio_id"),
        daily.c.day >= sa.bindparam("day_from", type_=sa.Date()),
        daily.c.day < sa.bindparam("day_to", type_=sa.Date()),
    )
    .order_by(daily.c.day, daily.c.currency)
)


def totals_by_instrument(
    conn: sa.Connection, portfolio_id: int, first: dt.date | None, end: dt.date | None
) -> list[sa.Row[Any]]:
    """(symbol, currency, fee_currency, realized_pnl, fees, trade_count) over local days
    [first, end)."""
    ranges = split_range(first, end)
    return list(conn.execute(_BY_INSTRUMENT, {"portfolio_id": portfolio_id, **ranges._asdict()}))


def daily_totals(
    conn: sa.Connection, portfolio_id: int, first: dt.date | None, end: dt.date | None
) -> list[tuple[dt.date, str, Decimal]]:
    """Realized PnL per local day and currency over [first, end), by day."""
    params = {
        "portfolio_id": portfolio_id,
        "day_from": first or _FIRST_DAY,
        "day_to": end or _LAST_DAY,
    }
    return [(row[0], row[1], row[2]) for row in conn.execute(_DAILY, params)]
