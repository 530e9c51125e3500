"""freqtrade's persistence pattern on the peer bench's fills; run by ``.venv-peers/bin/python``.

    freqtrade_worker.py FILLS.json DB_URL [--sqlite stock|wal] [--log FILE]

Imports only freqtrade, the standard library and (through SQLAlchemy, for PostgreSQL)
psycopg2. Every fill is one order as the exchange returns it through ccxt once it is filled (a
dict of floats, ``status: closed``), taken in as freqtrade takes in a filled order, with its
own code (``freqtrade.persistence``):

* ``Order.parse_from_ccxt_object(order, pair, side)``;
* an entry without an open Trade opens one, built as ``FreqtradeBot.execute_entry`` builds it
  (its ``Trade(...)`` and ``adjust_stop_loss``) and added to the session;
* ``trade.orders.append(order)`` and ``trade.update_trade(order)``: the open rate, the amount,
  ``recalc_trade_from_orders`` (the average entry price, the realized profit of each exit) or,
  when an exit takes the whole amount, ``close``; it ends with ``Trade.commit()``: one commit
  per fill.

freqtrade's own ``update_trade_state`` commits up to three times per filled order (the order's
update, ``update_trade``, after the fill) and ``execute_entry`` once more when it places one;
this worker commits once, the least freqtrade does for a fill. Fees are zero (the bench's fills
have none). Its INFO lines go to ``--log`` in freqtrade's format.

Only the loop over the fills is timed (the orders are built as dicts before it, after a full
garbage collection). It prints one JSON object: ``fills``, ``seconds``, ``fills_per_s``, the
realized profit (the sum of ``realized_profit`` over the trades, as freqtrade stores it, and
the sum of ``close_profit_abs`` over the closed trades, as ``Trade.get_total_closed_profit``
reads it), each as the shortest ``repr`` of the float, the counts of trades and orders, and the
versions of freqtrade, SQLAlchemy and SQLite.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import logging
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

PAIR = "BTC/USDT"
TICK_SIZE = 4  # ccxt's precision mode of Binance: amounts and prices as steps
AMOUNT_STEP = 0.00001  # Binance's BTC/USDT
PRICE_TICK = 0.01
LOGFORMAT = "%(asctime)s - %(name)s - %(levelname)s - %(message)s"  # freqtrade.loggers


def ccxt_order(fill: dict[str, Any]) -> dict[str, Any]:
    """A filled order as ccxt hands it to freqtrade: numbers as floats."""
    amount, price = float(fill["amount"]), float(fill["price"])
    ts = int(fill["timestamp"])
    iso = dt.datetime.fromtimestamp(ts / 1000, dt.UTC).isoformat(timespec="milliseconds")
    return {
        "id": fill["id"],
        "clientOrderId": f"x-{fill['id']}",
        "timestamp": ts,
        "datetime": iso.replace("+00:00", "Z"),
        "lastTradeTimestamp": ts,
        "symbol": PAIR,
        "type": "limit",
        "timeInForce": "GTC",
        "side": fill["side"],
        "price": price,
        "average": price,
        "amount": amount,
        "filled": amount,
        "remaining": 0.0,
        "cost": amount * price,
        "status": "closed",
        "fee": {"cost": 0.0, "currency": "USDT"},
        "fees": [{"cost": 0.0, "currency": "USDT"}],
        "trades": [],
        "info": {},
    }


def sqlite_settings(url: str, mode: str) -> None:
    """``wal``: the database file in WAL mode and ``synchronous=NORMAL`` on every connection
    (tradebook's settings); ``stock``: as freqtrade leaves SQLite (a rollback journal,
    ``synchronous=FULL``)."""
    if mode == "stock":
        return
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    path = url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode=WAL")  # a property of the file: it stays

    @event.listens_for(Engine, "connect")
    def _synchronous(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.execute("PRAGMA synchronous=NORMAL")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("fills")
    parser.add_argument("db_url")
    parser.add_argument("--sqlite", choices=("stock", "wal"), default="wal")
    parser.add_argument("--log", default="")
    parser.add_argument(
        "--statements", action="store_true", help="count the SQL statements sent (not timed)"
    )
    args = parser.parse_args(argv)
    if args.log:
        logging.basicConfig(filename=args.log, level=logging.INFO, format=LOGFORMAT)

    import sqlalchemy
    from freqtrade import __version__  # type: ignore[import-not-found]
    from freqtrade.enums import TradingMode  # type: ignore[import-not-found]
    from freqtrade.persistence import (  # type: ignore[import-not-found]
        Order,
        Trade,
        init_db,
    )

    if args.db_url.startswith("sqlite"):
        sqlite_settings(args.db_url, args.sqlite)
    init_db(args.db_url)
    orders = [ccxt_order(f) for f in json.loads(Path(args.fills).read_text())]

    def new_trade(order: dict[str, Any]) -> Any:
        # As FreqtradeBot.execute_entry opens a trade (spot, long, no fee, no stop loss
        # beyond the strategy's).
        trade = Trade(
            pair=PAIR,
            base_currency="BTC",
            stake_currency="USDT",
            stake_amount=order["cost"],
            amount=0,
            is_open=True,
            amount_requested=order["amount"],
            fee_open=0.0,
            fee_close=0.0,
            open_rate=order["price"],
            open_rate_requested=order["price"],
            open_date=dt.datetime.fromtimestamp(order["timestamp"] / 1000, dt.UTC),
            exchange="binance",
            strategy="PeerBench",
            enter_tag=None,
            timeframe=5,
            leverage=1.0,
            is_short=False,
            trading_mode=TradingMode.SPOT,
            funding_fees=0.0,
            amount_precision=AMOUNT_STEP,
            price_precision=PRICE_TICK,
            precision_mode=TICK_SIZE,
            precision_mode_price=TICK_SIZE,
            contract_size=1.0,
        )
        trade.adjust_stop_loss(trade.open_rate, -0.99, initial=True)
        Trade.session.add(trade)
        return trade

    sent: list[str] = []
    if args.statements:
        from sqlalchemy import event
        from sqlalchemy.engine import Engine

        @event.listens_for(Engine, "before_cursor_execute")
        def _count(_c: Any, _cur: Any, statement: str, *_rest: Any) -> None:
            sent.append(statement.split(None, 1)[0].upper())

    trade: Any = None
    gc.collect()
    start = time.perf_counter()
    for order in orders:
        side = order["side"]
        order_obj = Order.parse_from_ccxt_object(order, PAIR, side)
        if trade is None:
            if side != "buy":
                raise RuntimeError("an exit without an open trade")
            trade = new_trade(order)
        trade.orders.append(order_obj)
        trade.update_trade(order_obj)  # commits
        if not trade.is_open:
            trade = None
    seconds = time.perf_counter() - start

    query = Trade.get_trades_query(include_orders=False).order_by(Trade.id)
    trades = Trade.session.scalars(query).all()
    realized = sum(t.realized_profit or 0.0 for t in trades)
    closed = Trade.get_total_closed_profit()
    order_count = sum(len(t.orders) for t in trades)
    print(
        json.dumps(
            {
                "fills": len(orders),
                "seconds": seconds,
                "fills_per_s": len(orders) / seconds,
                "realized_profit": repr(float(realized)),
                "total_closed_profit": repr(float(closed)),
                "trades": len(trades),
                "open_trades": sum(1 for t in trades if t.is_open),
                "orders": order_count,
                "statements": {k: sent.count(k) for k in sorted(set(sent))},
                "freqtrade": __version__,
                "sqlalchemy": sqlalchemy.__version__,
                "sqlite": sqlite3.sqlite_version,
            }
        )
    )
    Trade.session.remove()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
