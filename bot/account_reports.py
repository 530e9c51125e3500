"""Account reports: /balance, /status, /profit, /daily /weekly /monthly and /performance.

Each returns a Reply, so a command and a scheduled report show the same thing. Every number
comes from the one valuation (dal/valuation.py) and the PnL summary; amounts stay exact.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from decimal import Decimal, localcontext
from typing import Any
from zoneinfo import ZoneInfo

from aiogram.types import InlineKeyboardMarkup
from aiogram.utils.keyboard import InlineKeyboardBuilder

from bot.callbacks import EquityChart
from bot.charts import equity_curve_png, max_drawdown, render_png
from bot.reports import Reply
from bot.text import num, pre_pages, q, signed
from dal.database import ScopedDal
from dal.decimals import DECIMAL_CONTEXT
from dal.periods import Period
from dal.trades import PnlSummary

ZERO = Decimal(0)
PERIOD_UNITS = {"daily": "day", "weekly": "week", "monthly": "month"}
DEFAULT_PERIODS = {"daily": 7, "weekly": 4, "monthly": 6}  # /daily without n, and schedules
MAX_PERIODS = 60  # /daily 60 at most: one message-sized table


def _pct(part: Decimal, whole: Decimal) -> str:
    if not whole:
        return "n/a"
    with localcontext(DECIMAL_CONTEXT):
        return f"{signed(part / whole * 100, 2)}%"


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> list[str]:
    """Monospace columns: the first left-aligned, the rest right-aligned."""
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]

    def line(cells: tuple[str, ...]) -> str:
        first = cells[0].ljust(widths[0])
        rest = [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
        return "  ".join([first, *rest]).rstrip()

    return [line(header), *(line(r) for r in rows)]


def held_for(since: dt.datetime | None, now: dt.datetime) -> str:
    """How long a position has been held ("3d 4h", "2h 5m", "12m")."""
    if since is None:
        return "?"
    return duration(Decimal(max(int((now - since).total_seconds()), 0)))


def duration(seconds: Decimal) -> str:
    """Seconds as days and hours, hours and minutes, or minutes ("3d 4h", "2h 5m", "12m";
    under a minute "45s")."""
    if seconds < 60:
        return f"{int(seconds)}s"
    minutes = int(seconds // 60)
    days, rest = divmod(minutes, 24 * 60)
    hours, mins = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    return f"{hours}h {mins}m" if hours else f"{mins}m"


async def balance_report(
    dal: ScopedDal, portfolio: Any, marks: Mapping[int, Decimal] | None = None
) -> Reply:
    value = await dal.valuation.value(portfolio.id, marks)
    title = f"<b>Balance — {q(portfolio.name)}</b>"
    if not value.balances:
        return Reply([f"{title}\nNothing held. /deposit adds cash."])
    rows = [
        (
            b.asset,
            num(b.free),
            num(b.reserved),
            num(b.total),
            num(value.values[b.asset]) if b.asset in value.values else "no price",
        )
        for b in value.balances
    ]
    lines = _table(("asset", "free", "reserved", "total", f"value {value.currency}"), rows)
    lines.append(f"equity {num(value.equity)} {value.currency}")
    lines += [f"not valued: {num(v)} {asset}" for asset, v in sorted(value.unconverted.items())]
    return Reply(pre_pages(title, lines))


async def status_report(
    dal: ScopedDal,
    portfolio: Any,
    now: dt.datetime,
    marks: Mapping[int, Decimal] | None = None,
) -> Reply:
    value = await dal.valuation.value(portfolio.id, marks)
    title = f"<b>Status — {q(portfolio.name)}</b>"
    if not value.positions:
        return Reply([f"{title}\nNo open positions. Equity {num(value.equity)} {value.currency}."])
    with_strategy = any(p.strategy_id for p in value.positions)
    strategies = await dal.strategies.list(include_inactive=True) if with_strategy else []
    names = {s.id: s.name for s in strategies}
    entries = []
    for p in value.positions:
        who = names.get(p.strategy_id, "manual") if p.strategy_id else "manual"
        if p.mark is None or p.unrealized is None:
            pnl = "no mark yet"
        else:
            pct = p.unrealized_pct
            share = f" ({signed(pct, 2)}%)" if pct is not None else ""
            pnl = f"mark {num(p.mark)}  uPnL {signed(p.unrealized)} {p.currency}{share}"
        close = f"/close {p.symbol}" + (f" {names[p.strategy_id]}" if p.strategy_id else "")
        entries.append(
            f"{p.symbol} [{who}] {'long' if p.quantity > 0 else 'short'}\n"
            f"  qty {num(p.quantity)}  avg {num(p.avg_price)}\n"
            f"  {pnl}\n"
            f"  held {held_for(p.opened_at, now)}  close: {close}"
        )
    footer = [f"equity {num(value.equity)} {value.currency}"]
    return Reply(pre_pages(title, entries + footer))


def win_rate(wins: int, losses: int) -> str:
    """Won trades of those that realized a profit or a loss, as a percentage."""
    closed = wins + losses
    if not closed:
        return "n/a"
    with localcontext(DECIMAL_CONTEXT):
        return f"{num(Decimal(wins) / closed * 100, 1)}%"


def _summary_lines(summary: PnlSummary) -> list[str]:
    """Win rate, profit factor, average win and loss, per currency of the instruments."""
    lines = []
    by_currency: dict[str, list[Any]] = {}
    for entry in summary.by_instrument.values():
        by_currency.setdefault(entry.currency, []).append(entry)
    with localcontext(DECIMAL_CONTEXT):
        for currency, entries in sorted(by_currency.items()):
            wins = sum(e.wins for e in entries)
            losses = sum(e.losses for e in entries)
            profit = sum((e.gross_profit for e in entries), ZERO)
            loss = sum((e.gross_loss for e in entries), ZERO)
            rate = win_rate(wins, losses)
            factor = num(profit / loss, 2) if loss else ("∞" if profit else "n/a")
            lines.append(f"{currency}: {wins} won / {losses} lost, win rate {rate}")
            lines.append(f"  profit factor {factor}")
            if wins:
                lines.append(f"  average win {num(profit / wins)} {currency}")
            if losses:
                lines.append(f"  average loss {num(loss / losses)} {currency}")
    return lines


async def profit_report(
    dal: ScopedDal,
    portfolio: Any,
    period: Period,
    zone: str,
    marks: Mapping[int, Decimal] | None = None,
    period_word: str = "all",
) -> Reply:
    profit = await dal.equity.profit(
        portfolio.id, period.since, period.until, ZoneInfo(zone), marks
    )
    summary, value, series = profit.summary, profit.valuation, profit.closes
    title = f"<b>Profit — {q(portfolio.name)}, {q(period.label)}</b>"
    lines = ["realized PnL"]
    lines += [f"  {signed(v)} {cur}" for cur, v in sorted(summary.realized.items())] or ["  none"]
    unrealized = value.unrealized()
    lines.append("unrealized PnL (open positions now)")
    lines += [f"  {signed(v)} {cur}" for cur, v in sorted(unrealized.items())] or ["  none"]
    if summary.fees:
        lines.append("fees")
        lines += [f"  {num(v)} {cur}" for cur, v in sorted(summary.fees.items())]
    net_deposits = value.net_deposits.get(value.currency, ZERO)
    with localcontext(DECIMAL_CONTEXT):
        gain = value.equity - net_deposits
    lines.append(f"equity {num(value.equity)} {value.currency}")
    lines.append(
        f"return on net deposits {signed(gain)} {value.currency} ({_pct(gain, net_deposits)})"
    )
    lines.append(f"trades {summary.trade_count}")
    lines += _summary_lines(summary)
    closes = sum(e.closes for e in summary.by_instrument.values())
    if closes:
        with localcontext(DECIMAL_CONTEXT):
            held = sum((e.held for e in summary.by_instrument.values()), ZERO) / closes
        plural = "s" if closes != 1 else ""
        lines.append(f"average holding time {duration(held)} ({closes} closing trade{plural})")
    if summary.by_instrument:
        ranked = sorted(summary.by_instrument.items(), key=lambda kv: kv[1].realized)
        (worst_symbol, worst), (best_symbol, best) = ranked[0], ranked[-1]
        lines.append(f"best {best_symbol} {signed(best.realized)} {best.currency}")
        lines.append(f"worst {worst_symbol} {signed(worst.realized)} {worst.currency}")
    markup = None
    if len(series) > 1:
        amount, fraction = max_drawdown(series)
        lines.append(
            f"max drawdown {num(amount)} {value.currency} ({num(fraction * 100, 2)}%), "
            f"{len(series)} daily closes"
        )
        markup = equity_chart_button(portfolio.id, period_word)
    else:
        lines.append("max drawdown: needs two daily equity closes")
    return Reply(pre_pages(title, lines), markup=markup)


def equity_chart_button(portfolio_id: int, period_word: str) -> InlineKeyboardMarkup:
    builder = InlineKeyboardBuilder()
    data = EquityChart(portfolio_id=portfolio_id, period=period_word)
    builder.button(text="Equity chart", callback_data=data)
    return builder.as_markup()


async def equity_chart(dal: ScopedDal, portfolio: Any, period: Period, zone: str) -> Reply:
    """The equity curve with its drawdown underneath, from the daily snapshots."""
    since = period.since.astimezone(ZoneInfo(zone)).date() if period.since else None
    history = await dal.equity.curve(portfolio.id, since)
    currency = history[-1].currency if history else ""
    series = [(row.day, row.equity) for row in history if row.currency == currency]
    if len(series) < 2:
        return Reply(["No equity chart yet: it needs two daily equity closes."])
    name = f"{portfolio.name}: equity, {period.label}"
    png = await render_png(equity_curve_png, series, currency, name)
    return Reply([], photo=(png, "equity.png", f"Equity and drawdown, {period.label}"))


def period_starts(unit: str, count: int, today: dt.date) -> list[dt.date]:
    """The first days of the last ``count`` days, weeks (Monday) or months, oldest first."""
    if unit == "day":
        return [today - dt.timedelta(days=i) for i in reversed(range(count))]
    if unit == "week":
        monday = today - dt.timedelta(days=today.weekday())
        return [monday - dt.timedelta(weeks=i) for i in reversed(range(count))]
    starts, first = [], today.replace(day=1)
    for _ in range(count):
        starts.append(first)
        first = (first - dt.timedelta(days=1)).replace(day=1)
    return list(reversed(starts))


def _next_start(unit: str, start: dt.date) -> dt.date:
    if unit == "day":
        return start + dt.timedelta(days=1)
    if unit == "week":
        return start + dt.timedelta(weeks=1)
    return (start.replace(day=28) + dt.timedelta(days=4)).replace(day=1)


async def periodic_report(
    dal: ScopedDal, portfolio: Any, unit: str, count: int, zone: str, now: dt.datetime
) -> Reply:
    """Per day, week or month in the owner's zone: realized PnL, trades, equity at its end."""
    tz = ZoneInfo(zone)
    starts = period_starts(unit, count, now.astimezone(tz).date())
    rows = []
    async with dal.session(readonly=True) as s:  # one snapshot, one connection
        history = {row.day: row for row in await s.equity.curve(portfolio.id, starts[0])}
        for start in starts:
            end = _next_start(unit, start)
            summary = await s.trades.pnl(
                portfolio.id,
                dt.datetime.combine(start, dt.time(), tz),
                dt.datetime.combine(end, dt.time(), tz),
                tz,
                daily=False,
            )
            realized = ", ".join(f"{signed(v)} {c}" for c, v in sorted(summary.realized.items()))
            closes = [row for day, row in sorted(history.items()) if start <= day < end]
            equity = f"{num(closes[-1].equity)} {closes[-1].currency}" if closes else "-"
            rows.append((start.isoformat(), realized or "0", str(summary.trade_count), equity))
    title = f"<b>{q(unit.capitalize())} PnL — {q(portfolio.name)}</b>"
    return Reply(pre_pages(title, _table((unit, "realized", "trades", "equity"), rows)))


async def performance_report(dal: ScopedDal, portfolio: Any, period: Period, zone: str) -> Reply:
    summary = await dal.trades.pnl(
        portfolio.id, period.since, period.until, ZoneInfo(zone), daily=False
    )
    title = f"<b>Performance — {q(portfolio.name)}, {q(period.label)}</b>"
    if not summary.trade_count:
        return Reply([f"{title}\nNo trades in this period."])
    rows = []
    ranked = sorted(summary.by_instrument.items(), key=lambda kv: kv[1].realized, reverse=True)
    for symbol, e in ranked:
        rows.append(
            (
                symbol,
                f"{signed(e.realized)} {e.currency}",
                str(e.trades),
                win_rate(e.wins, e.losses),
            )
        )
    return Reply(pre_pages(title, _table(("instrument", "realized", "trades", "win rate"), rows)))
