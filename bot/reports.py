"""Reports shared by the commands and by scheduled delivery: each returns a Reply."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from aiogram import Bot
from aiogram.types import BufferedInputFile, InlineKeyboardMarkup
from aiogram.utils.keyboard import InlineKeyboardBuilder

from bot.callbacks import CancelOrder, OrdersPage
from bot.charts import cumulative_pnl_per_trade_png, cumulative_pnl_png, render_png
from bot.text import join_blocks, local_time, num, pre_pages, q, signed
from dal.database import ScopedDal
from dal.periods import Period
from dal.vocabulary import ENDED_STATUSES, OPEN_STATUSES, ORDER_STATUSES

ORDERS_PAGE = 15
# /pnl plots each trade for periods up to a week with at most this many trades, else each day.
PER_TRADE_SPAN = dt.timedelta(days=7)
PER_TRADE_MAX = 500
BREACHES_SHOWN = 5


@dataclass
class Reply:
    texts: list[str]
    markup: InlineKeyboardMarkup | None = None  # attached to the last text
    photo: tuple[bytes, str, str] | None = None  # (png, filename, caption)
    extra: dict[str, Any] = field(default_factory=dict)


async def send_reply(bot: Bot, chat_id: int, reply: Reply) -> None:
    for i, text in enumerate(reply.texts):
        last = i == len(reply.texts) - 1
        await bot.send_message(chat_id, text, reply_markup=reply.markup if last else None)
    if reply.photo is not None:
        png, filename, caption = reply.photo
        await bot.send_photo(chat_id, BufferedInputFile(png, filename=filename), caption=caption)


async def positions_report(dal: ScopedDal, portfolio: Any) -> Reply:
    rows = await dal.positions.snapshot(portfolio.id)
    title = f"<b>Positions — {q(portfolio.name)}</b>"
    if not rows:
        return Reply([f"{title}\nNo open positions."])
    lines = []
    for row in rows:
        who = f"{row.strategy_name} {row.strategy_version}" if row.strategy_name else "manual"
        # One entry per position, so a page break never separates its lines.
        close = ""
        if row.quantity:
            close = f"\n  close: /close {row.symbol}" + (
                f" {row.strategy_name}" if row.strategy_name else ""
            )
        lines.append(
            f"{row.symbol} [{who}]\n"
            f"  qty {num(row.quantity)}  avg {num(row.avg_price)}\n"
            f"  realized {signed(row.realized_pnl)} {row.currency}{close}"
        )
    return Reply(pre_pages(title, lines))


async def pnl_report(
    dal: ScopedDal, portfolio: Any, period: Period, zone: str, chart: bool = True
) -> Reply:
    from zoneinfo import ZoneInfo

    summary = await dal.trades.pnl(portfolio.id, period.since, period.until, ZoneInfo(zone))
    title = f"<b>PnL — {q(portfolio.name)}, {q(period.label)}</b>"
    if not summary.trade_count:
        return Reply([f"{title}\nNo trades in this period."])
    lines = ["Realized PnL"]
    lines += [f"  {signed(v)} {cur}" for cur, v in sorted(summary.realized.items())]
    lines.append("Fees")
    if summary.fees:
        lines += [f"  {num(v)} {cur}" for cur, v in sorted(summary.fees.items())]
    else:
        lines.append("  none")
    lines.append(f"Trades: {summary.trade_count}")
    lines.append("By instrument")
    for symbol, entry in sorted(summary.by_instrument.items()):
        lines.append(f"  {symbol}: {signed(entry.realized)} {entry.currency} ({entry.trades})")
    photo = None
    if chart and summary.daily:
        name = f"{portfolio.name}: {period.label}"
        short = period.since is not None and period.until - period.since <= PER_TRADE_SPAN
        if short and summary.trade_count <= PER_TRADE_MAX:
            rows = await dal.trades.list(portfolio.id, period.since, period.until, PER_TRADE_MAX)
            points = [(r.exec_time.astimezone(ZoneInfo(zone)), r.currency, r.realized_pnl)
                      for r in reversed(rows)]  # fmt: skip
            png = await render_png(cumulative_pnl_per_trade_png, points, name)
            caption = f"Cumulative realized PnL per trade, {period.label}"
        else:
            png = await render_png(cumulative_pnl_png, summary.daily, name)
            caption = f"Cumulative realized PnL per day, {period.label}"
        photo = (png, "pnl.png", caption)
    return Reply(pre_pages(title, lines), photo=photo)


def ended_reason(order: Any) -> str | None:
    """Why an order ended (rejected, canceled, expired), as stored with it; None while it is
    open or when no reason was given."""
    if order.status not in ENDED_STATUSES:
        return None
    return (order.meta_json or {}).get("reason") or None


def _order_line(row: Any, zone: str) -> str:
    price = f" @{num(row.price)}" if row.price is not None else ""
    stop = f" stop {num(row.stop_price)}" if row.stop_price is not None else ""
    line = (
        f"#{row.id} {row.side} {num(row.quantity)} {row.symbol} {row.type}{price}{stop}\n"
        f"  {row.status} {num(row.filled_quantity)}/{num(row.quantity)}"
        f"  {local_time(row.placed_at, zone)}"
    )
    reason = ended_reason(row)
    return f"{line}\n  {reason}" if reason else line


async def orders_report(
    dal: ScopedDal, portfolio: Any, status: str | None, offset: int, zone: str
) -> Reply:
    statuses: str | list[str] | None = None if status in (None, "OPEN") else status
    if status == "ALL":
        statuses = list(ORDER_STATUSES)
    rows = await dal.orders.list(portfolio.id, statuses, ORDERS_PAGE + 1, offset)
    more = len(rows) > ORDERS_PAGE
    rows = rows[:ORDERS_PAGE]
    what = {None: "open orders", "OPEN": "open orders", "ALL": "orders"}.get(
        status, f"{status} orders"
    )
    title = f"<b>{q(what.capitalize())} — {q(portfolio.name)}</b>"
    if not rows:
        return Reply([f"{title}\nNone." if offset == 0 else f"{title}\nNo more."])
    lines = [_order_line(row, zone) for row in rows]
    first, last = offset + 1, offset + len(rows)
    texts = pre_pages(f"{title} {first}–{last}", lines)
    builder = InlineKeyboardBuilder()
    key = status or "OPEN"
    # One "Cancel #id" button per open order on this page, then the page buttons.
    cancelable = [row.id for row in rows if row.status in OPEN_STATUSES]
    for order_id in cancelable:
        builder.button(text=f"Cancel #{order_id}", callback_data=CancelOrder(order_id=order_id))
    paging = 0
    if offset > 0:
        paging += 1
        builder.button(
            text="◀ Newer",
            callback_data=OrdersPage(
                portfolio_id=portfolio.id, status=key, offset=max(0, offset - ORDERS_PAGE)
            ),
        )
    if more:
        paging += 1
        builder.button(
            text="Older ▶",
            callback_data=OrdersPage(
                portfolio_id=portfolio.id, status=key, offset=offset + ORDERS_PAGE
            ),
        )
    builder.adjust(*([3] * ((len(cancelable) + 2) // 3)), max(paging, 1))
    markup = builder.as_markup() if (cancelable or paging) else None
    return Reply(texts, markup=markup)


def _limit_text(key: str, value: Decimal) -> str:
    if key in ("max_order_notional",):
        return num(value)
    if key == "max_leverage":
        return f"{num(value)}×"
    return f"{num(value * 100)}%"


async def risk_report(dal: ScopedDal, portfolio: Any, zone: str) -> Reply:
    title = f"<b>Risk — {q(portfolio.name)}</b>"
    policies = await dal.risk.applicable_policies(portfolio.id)
    limits = await dal.risk.load_policies(portfolio.id)
    strategy_policies = [p for p in await dal.risk.list_policies() if p.scope_type == "STRATEGY"]
    blocks = [title]
    if not policies and not strategy_policies:
        blocks.append("No risk policies. Orders are not limited.")
    else:
        names = {p.id: p.name for p in policies}
        lines = ["In effect for manual orders (portfolio over user):"]
        for key, limit in sorted(limits.items()):
            lines.append(
                f"  {key} {_limit_text(key, limit.value)} {limit.mode}"
                f" — {limit.scope.lower()} policy {names.get(limit.policy_id, limit.policy_id)}"
            )
        if not limits:
            lines.append("  none")
        if strategy_policies:
            lines.append("Strategy policies (win for that strategy's orders):")
            for p in strategy_policies:
                config = ", ".join(f"{k}={v}" for k, v in sorted(p.config_json.items()))
                lines.append(f"  {p.name} (strategy #{p.scope_id}): {config}")
        blocks.append("<pre>" + q("\n".join(lines)) + "</pre>")
    breaches = await dal.risk.breaches(portfolio.id, BREACHES_SHOWN)
    if breaches:
        lines = ["Latest breaches:"]
        for b in breaches:
            message = (b.observed_json or {}).get("breach", {}).get("message", "")
            lines.append(f"  {local_time(b.created_at, zone)} {b.action} {b.policy_name}")
            if message:
                lines.append(f"    {message}")
        blocks.append("<pre>" + q("\n".join(lines)) + "</pre>")
    else:
        blocks.append("No breaches recorded.")
    return Reply(join_blocks(blocks))


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
