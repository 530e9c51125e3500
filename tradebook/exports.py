"""CSV exports for accounting: trades, orders and daily realized PnL of a portfolio.

Decimals are written exactly (canonical text, never floats); every time is given in UTC
(ISO-8601) and in the user's time zone, with the zone named in its own column. Used by the
bot's /export and by `tradebook export`."""

from __future__ import annotations

import csv
import datetime as dt
import io
from typing import Any
from zoneinfo import ZoneInfo

from dal.database import ScopedDal
from dal.decimals import canonical_decimal
from dal.types import format_utc

KINDS = ("trades", "orders", "pnl", "balances", "equity")


async def _all_orders(dal: ScopedDal, portfolio_id: int, statuses: list[str]) -> list[Any]:
    """Every order of the portfolio, newest first, page by page (no silent cut-off)."""
    rows: list[Any] = []
    while True:
        page = await dal.orders.list(portfolio_id, statuses, limit=1000, offset=len(rows))
        rows.extend(page)
        if len(page) < 1000:
            return rows


def _d(value: Any) -> str:
    return "" if value is None else canonical_decimal(value)


def _times(value: dt.datetime | None, zone: str) -> list[str]:
    if value is None:
        return ["", ""]
    return [format_utc(value), value.astimezone(ZoneInfo(zone)).isoformat(timespec="seconds")]


async def export_csv(
    dal: ScopedDal,
    kind: str,
    portfolio: Any,
    since: dt.datetime | None,
    until: dt.datetime | None,
    zone: str,
) -> str:
    """The CSV text of one export (``kind`` in KINDS) for [since, until); balances are as of
    now, at the last stored marks."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    if kind == "trades":
        writer.writerow(
            [
                "trade_id",
                "exec_time_utc",
                "exec_time_local",
                "timezone",
                "portfolio",
                "symbol",
                "side",
                "quantity",
                "price",
                "fee",
                "fee_currency",
                "realized_pnl",
                "currency",
                "order_id",
                "strategy_id",
                "broker_trade_id",
            ]
        )
        rows = await dal.trades.list(portfolio.id, since, until, limit=None)
        for t in reversed(rows):
            writer.writerow(
                [
                    t.id,
                    *_times(t.exec_time, zone),
                    zone,
                    portfolio.name,
                    t.symbol,
                    t.side,
                    _d(t.quantity),
                    _d(t.price),
                    _d(t.fee),
                    t.fee_currency or "",
                    _d(t.realized_pnl),
                    t.currency,
                    t.order_id or "",
                    t.strategy_id or "",
                    t.broker_trade_id or "",
                ]
            )
    elif kind == "orders":
        writer.writerow(
            [
                "order_id",
                "placed_at_utc",
                "placed_at_local",
                "timezone",
                "portfolio",
                "symbol",
                "side",
                "type",
                "status",
                "time_in_force",
                "quantity",
                "price",
                "stop_price",
                "filled_quantity",
                "avg_fill_price",
                "client_order_id",
                "broker_order_id",
                "strategy_id",
            ]
        )
        from dal.vocabulary import ORDER_STATUSES

        rows = await _all_orders(dal, portfolio.id, list(ORDER_STATUSES))
        for o in reversed(rows):
            if (since and o.placed_at < since) or (until and o.placed_at >= until):
                continue
            writer.writerow(
                [
                    o.id,
                    *_times(o.placed_at, zone),
                    zone,
                    portfolio.name,
                    o.symbol,
                    o.side,
                    o.type,
                    o.status,
                    o.time_in_force or "",
                    _d(o.quantity),
                    _d(o.price),
                    _d(o.stop_price),
                    _d(o.filled_quantity),
                    _d(o.avg_fill_price),
                    o.client_order_id or "",
                    o.broker_order_id or "",
                    o.strategy_id or "",
                ]
            )
    elif kind == "pnl":
        writer.writerow(["day", "timezone", "portfolio", "currency", "realized_pnl"])
        summary = await dal.trades.pnl(portfolio.id, since, until, ZoneInfo(zone))
        for day, currency, realized in summary.daily:
            writer.writerow([day.isoformat(), zone, portfolio.name, currency, _d(realized)])
    elif kind == "balances":
        value = await dal.valuation.value(portfolio.id)
        writer.writerow(["portfolio", "asset", "free", "reserved", "total", "value", "currency"])
        for b in value.balances:
            worth = value.values.get(b.asset)
            writer.writerow(
                [portfolio.name, b.asset, _d(b.free), _d(b.reserved), _d(b.total),
                 "" if worth is None else _d(worth), value.currency]
            )  # fmt: skip
    elif kind == "equity":
        writer.writerow(["day", "timezone", "portfolio", "currency", "equity", "net_deposits"])
        first = since.astimezone(ZoneInfo(zone)).date() if since is not None else None
        last = until.astimezone(ZoneInfo(zone)).date() if until is not None else None
        for row in await dal.equity.history(portfolio.id, first):
            if last is None or row.day < last:
                writer.writerow(
                    [row.day.isoformat(), zone, portfolio.name, row.currency,
                     _d(row.equity), _d(row.net_deposits)]
                )  # fmt: skip
    else:
        raise ValueError(f"export one of {', '.join(KINDS)}")
    return out.getvalue()
