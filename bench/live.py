"""Section 6: the Binance gateway against the local fake exchange (tests/fake_binance.py).

* **order → request:** tradebook's own time from the order call (``OrderDesk.place``, what a
  strategy's ``ctx.buy`` calls) to the moment the REST request leaves (ccxt's ``fetch`` is
  entered), for MARKET orders sent at 10 per second;
* **event → commit:** from the user-data event arriving (ccxt hands the parsed message to the
  gateway) to the fill committed (the desk's fill listeners run after the commit);
* **catch-up:** 10,000 trades made while the stream was muted, recovered after a reconnect,
  until the last one is stored.

Targets: p95 ≤ 5 ms for each latency; catch-up ≤ 10 s.
"""

from __future__ import annotations

import asyncio
import os
import time
import urllib.parse
from decimal import Decimal
from pathlib import Path
from typing import Any

from bench.common import fresh_database, make_users, percentile
from dal.database import Database
from dal.scope import Actor
from tests.fake_binance import API_KEY, API_SECRET, FakeBinance
from trading.binance_client import BinanceClient
from trading.binance_gateway import BinanceGateway, binance_gateways
from trading.desk import OrderDesk
from trading.events import FillEvent
from trading.market import Market

ORDERS = 200
RATE_PER_S = 10
CATCH_UP_TRADES = 10_000
LATENCY_TARGET_MS = 5.0
CATCH_UP_TARGET_S = 10.0


async def _quiet(user_id: int, text: str, kind: str = "") -> None:
    return None


class _Clock:
    """Perf-counter stamps the measured points leave."""

    def __init__(self) -> None:
        self.sent: dict[str, float] = {}  # client order id → request leaving
        self.arrived: dict[str, float] = {}  # trade id → event arriving
        self.committed: dict[str, float] = {}  # trade id → fill committed


def _instrument(clock: _Clock) -> None:
    """Stamp ccxt's ``fetch`` (a request leaving) and the stream handler (an event arriving)."""
    fetch, handle = BinanceClient.fetch, BinanceClient.handle_order_update

    async def stamped_fetch(self: Any, url: str, method: str = "GET", *args: Any, **kw: Any) -> Any:
        if method == "POST" and "/order" in url:
            body = args[1] if len(args) > 1 else kw.get("body")
            client_id = dict(urllib.parse.parse_qsl(body or "")).get("newClientOrderId")
            if client_id:
                clock.sent[client_id] = time.perf_counter()
        return await fetch(self, url, method, *args, **kw)

    def stamped_handle(self: Any, client: Any, message: dict[str, Any]) -> Any:
        if message.get("x") == "TRADE":
            clock.arrived.setdefault(str(message.get("t")), time.perf_counter())
        return handle(self, client, message)

    BinanceClient.fetch = stamped_fetch  # the bench's probe (ccxt's own method)
    BinanceClient.handle_order_update = stamped_handle  # type: ignore[method-assign]  # probe


async def _setup(db: Database, fake: FakeBinance) -> tuple[Actor, int, OrderDesk]:
    (user,) = await make_users(db, [777_001])
    async with db.session(user) as s:
        account = await s.accounts.create(
            {"broker": "BINANCE", "name": "bench", "base_currency": "USDT"}
        )
        portfolio = await s.portfolios.create({"name": "binance", "account_id": account.id})
        await s.cash.deposit(portfolio.id, "100000000", "USDT")
    os.environ[f"TRADEBOOK_ACCOUNT_{account.id}_API_KEY"] = API_KEY
    os.environ[f"TRADEBOOK_ACCOUNT_{account.id}_API_SECRET"] = API_SECRET
    async with db.session(Actor.system()) as s:
        instrument = await s.instruments.create(
            {"symbol": "BTCUSDT", "exchange": "BINANCE", "asset_type": "CRYPTO", "currency": "USDT"}
        )
    market = Market()
    market.marks.marks[instrument.id] = Decimal(60000)
    factory = binance_gateways(
        db, _quiet, Path("/nonexistent"), fake.url, reconcile_every_s=3600, reconnect_pause_s=0.05
    )
    desk = OrderDesk(db, market, _quiet, {"BINANCE": factory})
    return user, portfolio.id, desk


async def _wait(condition: Any, timeout: float) -> None:
    deadline = time.perf_counter() + timeout
    while not condition():
        if time.perf_counter() > deadline:
            raise TimeoutError("the bench's exchange scenario did not complete")
        await asyncio.sleep(0.01)


async def bench_live(engine: str, quick: bool) -> dict[str, Any]:
    clock = _Clock()
    _instrument(clock)
    fake = FakeBinance(balances={"USDT": Decimal("100000000"), "BTC": Decimal(0)})
    await fake.start()
    result: dict[str, Any] = {"engine": engine}
    try:
        async with fresh_database(engine, "live") as bdb:
            db = Database(bdb.url)
            try:
                user, pid, desk = await _setup(db, fake)
                dal = db.scoped(user)
                gateway = await desk.gateway_for(pid, dal)
                assert isinstance(gateway, BinanceGateway)
                await _wait(lambda: gateway.caught_up > 0, 30)

                async def committed(user_id: int, portfolio_id: int, fill: FillEvent) -> None:
                    clock.committed.setdefault(fill.broker_trade_id, time.perf_counter())

                desk.fill_listeners.append(committed)
                order = {"portfolio_id": pid, "symbol": "BTCUSDT", "side": "BUY"}
                for _ in range(3):  # warm-up: the first request after exchange info waits
                    await desk.place(dal, {**order, "quantity": Decimal("0.001")})
                await _wait(lambda: len(fake.trades) >= 3, 30)
                count = 40 if quick else ORDERS
                called: dict[str, float] = {}
                pace = 1 / RATE_PER_S
                next_at = time.perf_counter()
                for i in range(count):
                    client_id = f"tb-bench{i:06d}"
                    called[client_id] = time.perf_counter()
                    await desk.place(
                        dal, {**order, "quantity": Decimal("0.001"), "client_order_id": client_id}
                    )
                    next_at += pace
                    await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
                await _wait(lambda: len(clock.committed) >= count + 3, 60)
                sends = [(clock.sent[c] - t) * 1000 for c, t in called.items() if c in clock.sent]
                commits = [
                    (clock.committed[t] - clock.arrived[t]) * 1000
                    for t in clock.committed
                    if t in clock.arrived
                ][3:]
                result["order_to_request_ms"] = _stats(sends)
                result["event_to_commit_ms"] = _stats(commits)

                # Catch-up: trades made while the stream is muted, then a reconnect.
                trades = 1000 if quick else CATCH_UP_TRADES
                resting = await desk.place(
                    dal,
                    {
                        **order,
                        "type": "LIMIT",
                        "price": Decimal("50000"),
                        "quantity": Decimal(trades) * Decimal("0.0001"),
                    },
                )
                await _wait(lambda: any(o.type == "LIMIT" for o in fake.orders.values()), 30)
                remote = next(o for o in fake.orders.values() if o.type == "LIMIT")
                await asyncio.sleep(0.2)
                await desk.idle()
                fake.mute_stream = True
                for _ in range(trades):
                    await fake.trade(remote.order_id, Decimal("0.0001"))
                stored_before = len(clock.committed)
                started = time.perf_counter()
                await fake.drop_stream()
                fake.mute_stream = False
                await _wait(lambda: len(clock.committed) >= stored_before + trades, 600)
                result["catch_up_trades"] = trades
                result["catch_up_s"] = round(time.perf_counter() - started, 2)
                row = await dal.orders.get(resting.id)
                result["catch_up_check"] = (
                    "ok" if row.status == "FILLED" and row.filled_quantity == row.quantity else
                    f"order {row.status} {row.filled_quantity}/{row.quantity}"
                )  # fmt: skip
                await desk.stop()
            finally:
                await db.dispose()
    finally:
        await fake.stop()
    return result


def _stats(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50": round(percentile(values, 50), 2),
        "p95": round(percentile(values, 95), 2),
        "max": round(max(values), 2),
    }


async def run_live(engines: list[str], quick: bool, report: dict[str, Any]) -> None:
    print(
        "\n== 6. Binance gateway against the local fake exchange "
        f"({RATE_PER_S} orders/s; catch-up of {CATCH_UP_TRADES:,} trades) =="
    )
    rows = []
    for engine in engines:
        row = await bench_live(engine, quick)
        rows.append(row)
        send, commit = row["order_to_request_ms"], row["event_to_commit_ms"]
        ok_send = send["p95"] <= LATENCY_TARGET_MS
        ok_commit = commit["p95"] <= LATENCY_TARGET_MS
        ok_catch = row["catch_up_s"] <= CATCH_UP_TARGET_S
        print(
            f"{engine:>10}  order → request p50 {send['p50']} / p95 {send['p95']} ms "
            f"({'ok' if ok_send else 'MISS'})  event → commit p50 {commit['p50']} / p95 "
            f"{commit['p95']} ms ({'ok' if ok_commit else 'MISS'})  catch-up "
            f"{row['catch_up_trades']:,} trades {row['catch_up_s']} s "
            f"({'ok' if ok_catch else 'MISS'}; {row['catch_up_check']})"
        )
    report["live"] = rows
