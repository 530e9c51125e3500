"""Seed load and read latency: 20 users × 3 portfolios × 200 fills/day, bulk-loaded.

The history is generated in Python, positions are derived with the DAL's own
``position_math.apply_fill`` (so ``PositionService.verify`` passes on the result), with the
checkpoints ingestion would have written (one per position and new UTC day,
dal/checkpoints.py), and the rows are bulk-inserted (stdlib ``sqlite3.executemany`` /
asyncpg ``copy_records_to_table``). Users, accounts, portfolios and instruments are created
through the DAL.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import random
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from bench.common import BenchDb, check_portfolios, make_instrument, make_portfolio, percentile
from dal import schema as t
from dal.checkpoints import Checkpoint, starts_new_day
from dal.database import Database
from dal.decimals import canonical_decimal
from dal.engine import create_engine
from dal.periods import parse_period
from dal.pnl_summary import Entry, Totals, summarize, summarize_daily
from dal.position_math import PositionState, apply_fill
from dal.scope import Actor
from dal.types import canonical_json, format_utc, new_uid

SYMBOLS = [f"S{i:02d}USDT" for i in range(10)]
FILLS_PER_ORDER = 4
OPEN_ORDERS = 20
TELEGRAM_BASE = 700000


@dataclass
class Seeded:
    db: Database
    users: list[tuple[int, Actor]]  # (telegram id, actor)
    portfolios: dict[int, list[int]]  # user id → portfolio ids (first = default "Main")
    fills: int
    seconds: float
    per_portfolio: dict[int, int] = field(default_factory=dict)


def _history(
    pid: int, iids: list[int], days: int, per_day: int, end: dt.datetime, rng: random.Random
) -> tuple[list[dict], list[dict], dict, list[tuple]]:
    """Orders and trades of one portfolio, the positions they imply and their checkpoints
    (instrument id, Checkpoint with the trade's index in ``trades`` for its id)."""
    start = end - dt.timedelta(days=days)
    step = dt.timedelta(days=1) / per_day
    prices = {iid: Decimal(100 + 10 * k) for k, iid in enumerate(iids)}
    states: dict[int, PositionState] = {}
    last: dict[int, tuple[dt.datetime, int]] = {}
    checkpoints: list[tuple] = []
    orders: list[dict] = []
    trades: list[dict] = []
    order: dict | None = None
    n = days * per_day
    for i in range(n):
        if i % FILLS_PER_ORDER == 0:
            iid = rng.choice(iids)
            state = states.get(iid, PositionState())
            # Lean towards flattening so positions stay bounded and PnL is realized.
            if state.quantity > 20:
                side = "SELL"
            elif state.quantity < -20:
                side = "BUY"
            else:
                side = rng.choice(("BUY", "SELL"))
            order = {
                "key": len(orders),
                "instrument_id": iid,
                "side": side,
                "filled": Decimal(0),
                "notional": Decimal(0),
                "time": start + step * i,
            }
            orders.append(order)
        assert order is not None
        iid = order["instrument_id"]
        prices[iid] += Decimal(rng.randint(-50, 50)) / 100
        price = max(prices[iid], Decimal(1))
        qty = Decimal(rng.randint(1, 5))
        at = start + step * i
        if iid in last and starts_new_day(last[iid][0], at):  # as ingestion writes them
            checkpoints.append((iid, Checkpoint(*last[iid], states[iid])))
        result = apply_fill(states.get(iid, PositionState()), order["side"], qty, price, at)
        states[iid] = result.state
        order["filled"] += qty
        order["notional"] += qty * price
        trades.append(
            {
                "order_key": order["key"],
                "instrument_id": iid,
                "side": order["side"],
                "quantity": qty,
                "price": price,
                "fee": (qty * price / 1000),
                "realized_pnl": result.realized,
                "position_opened_at": result.reduced_opened_at,
                "exec_time": at,
                "broker_trade_id": f"T{pid}-{i}",
            }
        )
        last[iid] = (at, len(trades) - 1)
    positions = {iid: (states[iid], last[iid]) for iid in states}
    return orders, trades, positions, checkpoints


async def seed(
    bdb: BenchDb,
    users: int,
    portfolios_per_user: int,
    days: int,
    per_day: int,
    end: dt.datetime | None = None,
) -> Seeded:
    end = end or dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
    db = Database(bdb.url)
    started = time.perf_counter()
    iids = [await make_instrument(db, s) for s in SYMBOLS]
    seeded_users: list[tuple[int, Actor]] = []
    portfolios: dict[int, list[int]] = {}
    async with db.session(Actor.system(), admin=True) as s:
        for u in range(users):
            tid = TELEGRAM_BASE + u
            await s.users.register(tid, f"seed{u}", chat_id=tid)
            row = await s.users.approve(tid)
            seeded_users.append((tid, Actor.user(row.id)))
    for _, actor in seeded_users:
        async with db.session(actor) as s:
            main = (await s.portfolios.default()).id
        pids = [main]
        for k in range(1, portfolios_per_user):
            pids.append(await make_portfolio(db, actor, f"P{k}"))
        assert actor.user_id is not None  # Actor.user(...) above
        portfolios[actor.user_id] = pids
    rng = random.Random(15)
    total = 0
    per_portfolio: dict[int, int] = {}
    loader = _SqliteLoader(bdb) if bdb.engine == "sqlite" else _PgLoader(bdb)
    await loader.open()
    try:
        for pids in portfolios.values():
            for pid in pids:
                orders, trades, positions, checkpoints = _history(
                    pid, iids, days, per_day, end, rng
                )
                await loader.load(pid, orders, trades, positions, checkpoints)
                total += len(trades)
                per_portfolio[pid] = len(trades)
    finally:
        await loader.close()
    await _equity_history(db, [pid for pids in portfolios.values() for pid in pids], days, end)
    return Seeded(db, seeded_users, portfolios, total, time.perf_counter() - started, per_portfolio)


async def _equity_history(db: Database, pids: list[int], days: int, end: dt.datetime) -> None:
    """One daily equity snapshot per portfolio and day (a random walk around the deposit),
    the rows the equity job would have written: what /profit reads for the drawdown."""
    rng = random.Random(28)
    rows = []
    for pid in pids:
        equity = Decimal(10000)
        for back in reversed(range(days)):
            equity += Decimal(rng.randint(-30000, 30000)) / 100
            day = (end - dt.timedelta(days=back)).date()
            rows.append(
                {
                    "portfolio_id": pid,
                    "day": day,
                    "currency": "USDT",
                    "equity": equity,
                    "net_deposits": Decimal(10000),
                    "marks_json": {},
                    "balances_json": {"USDT": str(equity)},
                    "unconverted_json": {},
                    "as_of": dt.datetime.combine(day, dt.time(23, 59), dt.UTC),
                }
            )
    engine = create_engine(db.url)
    try:
        async with engine.begin() as conn:
            for start in range(0, len(rows), 5000):
                await conn.execute(t.equity_snapshots.insert(), rows[start : start + 5000])
    finally:
        await engine.dispose()


SUMMARY_COLUMNS = (
    "portfolio_id",
    "period",
    "period_start",
    "instrument_id",
    "fee_currency",
    "realized_pnl",
    "fees",
    "trade_count",
    "win_count",
    "loss_count",
    "gross_profit",
    "gross_loss",
    "net_quantity",
    "net_proceeds",
    "closing_count",
    "holding_seconds",
)


def _amounts(v: Totals) -> tuple:
    """A summary row's amounts in SUMMARY_COLUMNS' order."""
    return (
        v.realized,
        v.fees,
        v.count,
        v.wins,
        v.losses,
        v.gross_profit,
        v.gross_loss,
        v.net_quantity,
        v.net_proceeds,
        v.closes,
        v.held,
    )


def _sqlite_value(value: object) -> object:
    return canonical_decimal(value) if isinstance(value, Decimal) else value


def _entries(trades: list[dict], fee_currency: str | None) -> list[Entry]:
    return [
        Entry.of_trade(
            tr["instrument_id"],
            tr["exec_time"],
            fee_currency,
            tr["side"],
            tr["quantity"],
            tr["price"],
            tr["realized_pnl"],
            tr["fee"],
            tr["position_opened_at"],
        )
        for tr in trades
    ]


def _pnl_summary_rows(trades: list[dict]) -> dict:
    """The PnL summary rows of a portfolio's trades (seed users keep the default UTC zone),
    computed by the DAL's own function so ``verify`` passes on the load."""
    return summarize(_entries(trades, "USDT"), "UTC")


def _pnl_daily_rows(trades: list[dict]) -> dict:
    """The daily series of a portfolio's trades (every seed instrument is quoted in USDT)."""
    entries = _entries(trades, None)
    return summarize_daily(
        entries, "UTC", dict.fromkeys({e.instrument_id for e in entries}, "USDT")
    )


class _SqliteLoader:
    def __init__(self, bdb: BenchDb) -> None:
        self.conn = sqlite3.connect(bdb.raw["path"], isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA foreign_keys=ON")

    async def open(self) -> None:
        pass

    async def load(
        self,
        pid: int,
        orders: list[dict],
        trades: list[dict],
        positions: dict,
        checkpoints: list[tuple],
    ) -> None:
        await asyncio.to_thread(self._load, pid, orders, trades, positions, checkpoints)

    def _load(
        self,
        pid: int,
        orders: list[dict],
        trades: list[dict],
        positions: dict,
        checkpoints: list[tuple],
    ) -> None:
        c = self.conn
        now = format_utc(dt.datetime.now(dt.UTC))
        D = canonical_decimal
        c.execute("BEGIN IMMEDIATE")
        first = c.execute("SELECT COALESCE(MAX(id), 0) FROM orders").fetchone()[0] + 1
        rows = []
        for o in orders:
            avg = D(o["notional"] / o["filled"]) if o["filled"] else None
            rows.append(
                (
                    first + o["key"],
                    new_uid(),
                    pid,
                    o["instrument_id"],
                    o["side"],
                    "LIMIT",
                    "FILLED",
                    D(o["filled"]),
                    D(o["filled"]),
                    avg,
                    format_utc(o["time"]),
                    format_utc(o["time"]),
                )
            )
        c.executemany(
            "INSERT INTO orders (id, uid, portfolio_id, instrument_id, side, type, status, "
            "quantity, filled_quantity, avg_fill_price, placed_at, updated_at, price, meta_json) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, '100', '{}')",
            rows,
        )
        open_rows = [
            (new_uid(), pid, orders[k]["instrument_id"], now, now) for k in range(OPEN_ORDERS)
        ]
        c.executemany(
            "INSERT INTO orders (uid, portfolio_id, instrument_id, side, type, status, quantity, "
            "filled_quantity, price, placed_at, updated_at, meta_json) "
            "VALUES (?, ?, ?, 'BUY', 'LIMIT', 'NEW', '1', '0', '1', ?, ?, '{}')",
            open_rows,
        )
        first_trade = c.execute("SELECT COALESCE(MAX(id), 0) FROM trades").fetchone()[0] + 1
        c.executemany(
            "INSERT INTO trades (id, uid, portfolio_id, instrument_id, order_id, side, quantity, "
            "price, fee, fee_currency, realized_pnl, exec_time, broker_trade_id, "
            "position_opened_at, meta_json) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'USDT', ?, ?, ?, ?, '{}')",
            [
                (
                    first_trade + k,
                    new_uid(),
                    pid,
                    tr["instrument_id"],
                    first + tr["order_key"],
                    tr["side"],
                    D(tr["quantity"]),
                    D(tr["price"]),
                    D(tr["fee"]),
                    D(tr["realized_pnl"]),
                    format_utc(tr["exec_time"]),
                    tr["broker_trade_id"],
                    opened and format_utc(opened),
                )
                for k, tr in enumerate(trades)
                for opened in [tr["position_opened_at"]]
            ],
        )
        c.executemany(
            "INSERT INTO positions (uid, portfolio_id, instrument_id, quantity, cost_basis, "
            "avg_price, realized_pnl, opened_at, last_exec_time, last_trade_id, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    new_uid(),
                    pid,
                    iid,
                    D(st.quantity),
                    D(st.cost_basis),
                    D(st.avg_price),
                    D(st.realized_pnl),
                    None if st.opened_at is None else format_utc(st.opened_at),
                    format_utc(at),
                    first_trade + k,
                    now,
                )
                for iid, (st, (at, k)) in positions.items()
            ],
        )
        position_ids = dict(
            c.execute("SELECT instrument_id, id FROM positions WHERE portfolio_id = ?", (pid,))
        )
        c.executemany(
            "INSERT INTO position_checkpoints (position_id, as_of_exec_time, as_of_trade_id, "
            "quantity, cost_basis, realized_pnl, opened_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    position_ids[iid],
                    format_utc(cp.exec_time),
                    first_trade + cp.trade_id,
                    D(cp.state.quantity),
                    D(cp.state.cost_basis),
                    D(cp.state.realized_pnl),
                    None if cp.state.opened_at is None else format_utc(cp.state.opened_at),
                )
                for iid, cp in checkpoints
            ],
        )
        c.executemany(
            f"INSERT INTO pnl_summary ({', '.join(SUMMARY_COLUMNS)}) "
            f"VALUES ({', '.join('?' * len(SUMMARY_COLUMNS))})",
            [
                (pid, period, start.isoformat(), iid, fee_ccy, *map(_sqlite_value, _amounts(v)))
                for (period, start, iid, fee_ccy), v in _pnl_summary_rows(trades).items()
            ],
        )
        c.executemany(
            "INSERT INTO pnl_daily (portfolio_id, day, currency, realized_pnl) VALUES (?, ?, ?, ?)",
            [
                (pid, day.isoformat(), ccy, D(v))
                for (day, ccy), v in _pnl_daily_rows(trades).items()
            ],
        )
        c.execute(
            "INSERT INTO audit_log (user_id, entity_type, entity_id, action, details_json, "
            "created_at) VALUES (NULL, 'POSITION', NULL, 'REPAIR', ?, ?)",
            (canonical_json({"bench_seed": pid, "trades": len(trades)}), now),
        )
        c.execute("COMMIT")

    async def close(self) -> None:
        self.conn.execute("ANALYZE")
        self.conn.close()


class _PgLoader:
    def __init__(self, bdb: BenchDb) -> None:
        self.args = bdb.raw
        self.conn: Any = None

    async def open(self) -> None:
        import asyncpg

        self.conn = await asyncpg.connect(**self.args)

    async def load(
        self,
        pid: int,
        orders: list[dict],
        trades: list[dict],
        positions: dict,
        checkpoints: list[tuple],
    ) -> None:
        c = self.conn
        now = dt.datetime.now(dt.UTC)
        async with c.transaction():
            ids = await c.fetch(
                "SELECT nextval(pg_get_serial_sequence('orders', 'id')) "
                "FROM generate_series(1, $1)",
                len(orders),
            )
            order_ids = [r[0] for r in ids]
            await c.copy_records_to_table(
                "orders",
                columns=[
                    "id",
                    "uid",
                    "portfolio_id",
                    "instrument_id",
                    "side",
                    "type",
                    "status",
                    "quantity",
                    "filled_quantity",
                    "avg_fill_price",
                    "placed_at",
                    "updated_at",
                    "price",
                    "meta_json",
                ],
                records=[
                    (
                        order_ids[o["key"]],
                        new_uid(),
                        pid,
                        o["instrument_id"],
                        o["side"],
                        "LIMIT",
                        "FILLED",
                        o["filled"],
                        o["filled"],
                        (o["notional"] / o["filled"]).quantize(Decimal(1).scaleb(-18)),
                        o["time"],
                        o["time"],
                        Decimal(100),
                        "{}",
                    )
                    for o in orders
                ],
            )
            await c.copy_records_to_table(
                "orders",
                columns=[
                    "uid",
                    "portfolio_id",
                    "instrument_id",
                    "side",
                    "type",
                    "status",
                    "quantity",
                    "filled_quantity",
                    "price",
                    "placed_at",
                    "updated_at",
                    "meta_json",
                ],
                records=[
                    (
                        new_uid(),
                        pid,
                        orders[k]["instrument_id"],
                        "BUY",
                        "LIMIT",
                        "NEW",
                        Decimal(1),
                        Decimal(0),
                        Decimal(1),
                        now,
                        now,
                        "{}",
                    )
                    for k in range(OPEN_ORDERS)
                ],
            )
            tids = await c.fetch(
                "SELECT nextval(pg_get_serial_sequence('trades', 'id')) "
                "FROM generate_series(1, $1)",
                len(trades),
            )
            trade_ids = [r[0] for r in tids]
            await c.copy_records_to_table(
                "trades",
                columns=[
                    "id",
                    "uid",
                    "portfolio_id",
                    "instrument_id",
                    "order_id",
                    "side",
                    "quantity",
                    "price",
                    "fee",
                    "fee_currency",
                    "realized_pnl",
                    "exec_time",
                    "broker_trade_id",
                    "position_opened_at",
                    "meta_json",
                ],
                records=[
                    (
                        trade_ids[k],
                        new_uid(),
                        pid,
                        tr["instrument_id"],
                        order_ids[tr["order_key"]],
                        tr["side"],
                        tr["quantity"],
                        tr["price"],
                        tr["fee"],
                        "USDT",
                        tr["realized_pnl"],
                        tr["exec_time"],
                        tr["broker_trade_id"],
                        tr["position_opened_at"],
                        "{}",
                    )
                    for k, tr in enumerate(trades)
                ],
            )
            await c.copy_records_to_table(
                "positions",
                columns=[
                    "uid",
                    "portfolio_id",
                    "instrument_id",
                    "quantity",
                    "cost_basis",
                    "avg_price",
                    "realized_pnl",
                    "opened_at",
                    "last_exec_time",
                    "last_trade_id",
                    "updated_at",
                ],
                records=[
                    (
                        new_uid(),
                        pid,
                        iid,
                        st.quantity,
                        st.cost_basis,
                        st.avg_price,
                        st.realized_pnl,
                        st.opened_at,
                        at,
                        trade_ids[k],
                        now,
                    )
                    for iid, (st, (at, k)) in positions.items()
                ],
            )
            position_ids = dict(
                await c.fetch(
                    "SELECT instrument_id, id FROM positions WHERE portfolio_id = $1", pid
                )
            )
            await c.copy_records_to_table(
                "position_checkpoints",
                columns=[
                    "position_id",
                    "as_of_exec_time",
                    "as_of_trade_id",
                    "quantity",
                    "cost_basis",
                    "realized_pnl",
                    "opened_at",
                ],
                records=[
                    (
                        position_ids[iid],
                        cp.exec_time,
                        trade_ids[cp.trade_id],
                        cp.state.quantity,
                        cp.state.cost_basis,
                        cp.state.realized_pnl,
                        cp.state.opened_at,
                    )
                    for iid, cp in checkpoints
                ],
            )
            await c.copy_records_to_table(
                "pnl_summary",
                columns=list(SUMMARY_COLUMNS),
                records=[
                    (pid, period, start, iid, fee_ccy, *_amounts(v))
                    for (period, start, iid, fee_ccy), v in _pnl_summary_rows(trades).items()
                ],
            )
            await c.copy_records_to_table(
                "pnl_daily",
                columns=["portfolio_id", "day", "currency", "realized_pnl"],
                records=[(pid, day, ccy, v) for (day, ccy), v in _pnl_daily_rows(trades).items()],
            )

    async def close(self) -> None:
        await self.conn.execute("ANALYZE")
        await self.conn.close()


# --- latency ----------------------------------------------------------------------------------
async def _samples(fn: Callable[[], Awaitable[Any]], n: int) -> list[float]:
    await fn()  # warm up (statement caches, imports)
    out = []
    for _ in range(n):
        start = time.perf_counter()
        await fn()
        out.append((time.perf_counter() - start) * 1000)
    return out


async def _interleaved(
    fns: dict[str, Callable[[], Awaitable[Any]]], n: int
) -> dict[str, list[float]]:
    """Each function ``n`` times, in rounds A B C A B C …: side by side, so a busy moment of
    the machine falls on all of them alike."""
    for fn in fns.values():
        await fn()  # warm up
    out: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(n):
        for name, fn in fns.items():
            start = time.perf_counter()
            await fn()
            out[name].append((time.perf_counter() - start) * 1000)
    return out


def _summary(samples: list[float]) -> dict[str, float]:
    return {"p50_ms": percentile(samples, 50), "p95_ms": percentile(samples, 95), "n": len(samples)}


async def latencies(seeded: Seeded, n: int = 50, bot: bool = True) -> dict[str, dict[str, float]]:
    db = seeded.db
    tid, actor = seeded.users[0]
    assert actor.user_id is not None  # a seeded user, not the system
    pid = seeded.portfolios[actor.user_id][0]
    dal = db.scoped(actor)
    now = dt.datetime.now(dt.UTC)
    # The periods exactly as the bot computes them (local midnights of the user's zone).
    zone = "UTC"
    last30, ytd = parse_period("30d", zone, now), parse_period("ytd", zone, now)
    out: dict[str, dict[str, float]] = {}
    out["positions snapshot"] = _summary(await _samples(lambda: dal.positions.snapshot(pid), n))
    out["open orders"] = _summary(await _samples(lambda: dal.orders.open_orders(pid), n))
    out["/pnl 30d (TradeService.pnl)"] = _summary(
        await _samples(lambda: dal.trades.pnl(pid, last30.since, last30.until, ZoneInfo(zone)), n)
    )
    out["/pnl ytd (TradeService.pnl)"] = _summary(
        await _samples(lambda: dal.trades.pnl(pid, ytd.since, ytd.until, ZoneInfo(zone)), n)
    )
    if bot:
        from bench.botdriver import BotDriver

        driver = BotDriver(db)
        commands = ["/positions", "/pnl 30d", "/balance", "/status", "/profit ytd"]
        side_by_side = await _interleaved(
            {c: functools.partial(driver.send, tid, c) for c in commands}, n
        )
        for command, samples in side_by_side.items():
            out[f"bot {command}"] = _summary(samples)
    out[f"recompute ({seeded.per_portfolio[pid]} fills)"] = _summary(
        await _samples(lambda: dal.positions.recompute(pid), max(3, n // 10))
    )
    return out


async def check_seed(seeded: Seeded) -> None:
    await check_portfolios(seeded.db, dict(seeded.per_portfolio))
