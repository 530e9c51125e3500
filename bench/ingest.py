"""Fill ingestion: the real ``ingest_fill`` against the same statements written by hand.

Every case runs side by side in one invocation (the implementations alternate within each of
the 3 runs) and every run ends with the exact check of positions and order fills against the
trades (``common.check_portfolios``); a failed check fails the bench.

Per fill, the hand-written baselines do exactly what ``ingest_fill`` does: lock the order,
lock (or create) the position, insert the trade (``ON CONFLICT DO NOTHING RETURNING id``),
update the order, update the position, insert the audit row — in one transaction with
``BEGIN IMMEDIATE`` (SQLite) or ``SELECT … FOR UPDATE`` (PostgreSQL) — using the same
position math. They skip what only the DAL does: parsing and validating the input, the
acting user's approval check and the portfolio ownership check.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from decimal import Decimal, localcontext
from typing import Any

from bench.common import (
    BenchDb,
    CheckFailed,
    check_portfolios,
    make_instrument,
    make_portfolio,
    make_users,
    median,
)
from dal.clock import utc_now
from dal.database import Database
from dal.decimals import DECIMAL_CONTEXT, canonical_decimal, quantize18
from dal.models import Fill
from dal.position_math import PositionState, apply_fill
from dal.scope import Actor
from dal.types import (
    canonical_json,
    format_utc,
    new_uid,
    parse_utc,
    register_sqlite_decimal_functions,
    sqlite_decimal_add,
)

BASE_TIME = dt.datetime(2026, 1, 5, 9, 0, tzinfo=dt.UTC)
BIG = Decimal("1000000000")
_runs = itertools.count(1)


@dataclass
class Target:
    """One writer's place to write: a portfolio, an instrument and a BUY and a SELL order."""

    actor: Actor
    portfolio_id: int
    instrument_id: int
    buy_order: int
    sell_order: int


def make_fills(target: Target, n: int, tag: str, moving_time: bool = True) -> list[dict]:
    """Two buys then one sell, so the position grows and realizes PnL on the way."""
    fills = []
    for i in range(n):
        side = "SELL" if i % 3 == 2 else "BUY"
        fills.append(
            {
                "portfolio_id": target.portfolio_id,
                "instrument_id": target.instrument_id,
                "order_id": target.sell_order if side == "SELL" else target.buy_order,
                "side": side,
                "quantity": Decimal(1),
                "price": Decimal(100) + Decimal(i % 97) / 100,
                "fee": Decimal("0.01"),
                "fee_currency": "USDT",
                "exec_time": BASE_TIME + dt.timedelta(milliseconds=i if moving_time else 0),
                "broker_trade_id": f"{tag}-{i}",
            }
        )
    return fills


async def make_targets(
    db: Database, actors: list[Actor], instrument_id: int, tag: str, shared: bool = False
) -> list[Target]:
    """One fresh portfolio per actor (or one shared by all when ``shared``), with orders."""
    targets: list[Target] = []
    for i, actor in enumerate(actors):
        if shared and targets:
            targets.append(targets[0])
            continue
        pid = await make_portfolio(db, actor, f"{tag}-{i}")
        async with db.session(actor) as s:
            orders = []
            for side in ("BUY", "SELL"):
                row = await s.orders.place(
                    {
                        "portfolio_id": pid,
                        "instrument_id": instrument_id,
                        "side": side,
                        "type": "LIMIT",
                        "quantity": BIG,
                        "price": Decimal(100),
                        "client_order_id": f"{tag}-{i}-{side}",
                    }
                )
                orders.append(row.id)
        targets.append(Target(actor, pid, instrument_id, orders[0], orders[1]))
    return targets


# --- the hand-written baselines ---------------------------------------------------------------
def _order_step(order: dict, fill: dict) -> tuple[Decimal, Decimal, str]:
    with localcontext(DECIMAL_CONTEXT):
        filled = order["filled"] + fill["quantity"]
        if filled > order["quantity"]:
            raise RuntimeError("overfill")
        prev = order["avg"] or Decimal(0)
        avg = quantize18((prev * order["filled"] + fill["quantity"] * fill["price"]) / filled)
    status = "FILLED" if filled == order["quantity"] else "PARTIALLY_FILLED"
    return filled, avg, status


def _audit_details(trade_uid: str, fill: dict, realized: Decimal) -> str:
    return canonical_json(
        {
            "trade_uid": trade_uid,
            "order_id": fill["order_id"],
            "broker_trade_id": fill["broker_trade_id"],
            "side": fill["side"],
            "symbol": "BENCH",
            "quantity": fill["quantity"],
            "price": fill["price"],
            "realized_pnl": realized,
            "late": False,
        }
    )


_SQ_ORDER = "SELECT id, quantity, filled_quantity, avg_fill_price, status FROM orders WHERE id = ?"
_SQ_POSITION = (
    "SELECT id, quantity, cost_basis, realized_pnl, opened_at FROM positions "
    "WHERE portfolio_id = ? AND instrument_id = ? AND strategy_id IS NULL"
)
_SQ_NEW_POSITION = (
    "INSERT INTO positions (uid, portfolio_id, instrument_id, strategy_id, quantity, cost_basis,"
    " avg_price, realized_pnl, updated_at) VALUES (?, ?, ?, NULL, '0', '0', '0', '0', ?) "
    "ON CONFLICT (portfolio_id, instrument_id, COALESCE(strategy_id, 0)) DO NOTHING"
)
_SQ_TRADE = (
    "INSERT INTO trades (uid, portfolio_id, instrument_id, strategy_id, order_id, side, quantity,"
    " price, fee, fee_currency, realized_pnl, exec_time, broker_trade_id, meta_json) "
    "VALUES (?, ?, ?, NULL, ?, ?, ?, ?, ?, ?, ?, ?, ?, '{}') "
    "ON CONFLICT (portfolio_id, instrument_id, broker_trade_id) DO NOTHING RETURNING id"
)
_SQ_UPDATE_ORDER = (
    "UPDATE orders SET filled_quantity = ?, avg_fill_price = ?, status = ?, updated_at = ? "
    "WHERE id = ?"
)
_SQ_UPDATE_POSITION = (
    "UPDATE positions SET quantity = ?, cost_basis = ?, avg_price = ?, realized_pnl = ?, "
    "opened_at = ?, last_exec_time = ?, last_trade_id = ?, updated_at = ? WHERE id = ?"
)
_SQ_AUDIT = (
    "INSERT INTO audit_log (user_id, entity_type, entity_id, action, details_json, created_at) "
    "VALUES (?, 'TRADE', ?, 'FILL', ?, ?)"
)


# The PnL summary's day and month rows; SQLite adds decimal TEXT with the DAL's registered
# function, as the DAL does.
_SQ_SUMMARY = (
    "INSERT INTO pnl_summary (portfolio_id, period, period_start, instrument_id, fee_currency, "
    "realized_pnl, fees, trade_count) VALUES (?, 'DAY', ?, ?, ?, ?, ?, 1), "
    "(?, 'MONTH', ?, ?, ?, ?, ?, 1) "
    "ON CONFLICT (portfolio_id, period, period_start, instrument_id, fee_currency) DO UPDATE SET "
    "realized_pnl = tb_decimal_add(pnl_summary.realized_pnl, excluded.realized_pnl), "
    "fees = tb_decimal_add(pnl_summary.fees, excluded.fees), "
    "trade_count = pnl_summary.trade_count + excluded.trade_count"
)


# The fill's day row of the chart's daily series (the bench instrument is quoted in USDT).
_SQ_DAILY = (
    "INSERT INTO pnl_daily (portfolio_id, day, currency, realized_pnl) VALUES (?, ?, 'USDT', ?) "
    "ON CONFLICT (portfolio_id, day, currency) DO UPDATE SET "
    "realized_pnl = tb_decimal_add(pnl_daily.realized_pnl, excluded.realized_pnl)"
)


def _daily_params(fill: dict, realized: Any) -> tuple:
    return (fill["portfolio_id"], fill["exec_time"].astimezone(dt.UTC).date(), realized)


def _summary_params(fill: dict, realized: Any, fee: Any) -> tuple:
    """The day and month rows of a fill (bench users keep the default UTC zone)."""
    day = fill["exec_time"].astimezone(dt.UTC).date()
    key = (fill["portfolio_id"], fill["instrument_id"], fill["fee_currency"] or "")
    return (
        key[0], day, key[1], key[2], realized, fee,
        key[0], day.replace(day=1), key[1], key[2], realized, fee,
    )  # fmt: skip


def _dec(text: str | None) -> Decimal | None:
    return None if text is None else Decimal(text)


class _SqliteSteps:
    """The statements of one fill on a sqlite3-like cursor API, written as a generator of
    (sql, params) so the sync (sqlite3) and async (aiosqlite) drivers share them."""

    @staticmethod
    def fill_steps(fill: dict, user_id: int):
        o = yield (_SQ_ORDER, (fill["order_id"],))
        order = {"quantity": Decimal(o[1]), "filled": Decimal(o[2]), "avg": _dec(o[3])}
        key = (fill["portfolio_id"], fill["instrument_id"])
        p = yield (_SQ_POSITION, key)
        if p is None:
            yield (_SQ_NEW_POSITION, (new_uid(), *key, format_utc(utc_now())), "exec")
            p = yield (_SQ_POSITION, key)
        state = PositionState(
            Decimal(p[1]), Decimal(p[2]), Decimal(p[3]), None if p[4] is None else parse_utc(p[4])
        )
        result = apply_fill(state, fill["side"], fill["quantity"], fill["price"], fill["exec_time"])
        uid = new_uid()
        exec_time = format_utc(fill["exec_time"])
        trade = yield (
            _SQ_TRADE,
            (
                uid,
                fill["portfolio_id"],
                fill["instrument_id"],
                fill["order_id"],
                fill["side"],
                canonical_decimal(fill["quantity"]),
                canonical_decimal(fill["price"]),
                canonical_decimal(fill["fee"]),
                fill["fee_currency"],
                canonical_decimal(result.realized),
                exec_time,
                fill["broker_trade_id"],
            ),
        )
        if trade is None:
            return
        now = format_utc(utc_now())
        filled, avg, status = _order_step(order, fill)
        yield (
            _SQ_UPDATE_ORDER,
            (canonical_decimal(filled), canonical_decimal(avg), status, now, fill["order_id"]),
            "exec",
        )
        s = result.state
        yield (
            _SQ_UPDATE_POSITION,
            (
                canonical_decimal(s.quantity),
                canonical_decimal(s.cost_basis),
                canonical_decimal(s.avg_price),
                canonical_decimal(s.realized_pnl),
                None if s.opened_at is None else format_utc(s.opened_at),
                exec_time,
                trade[0],
                now,
                p[0],
            ),
            "exec",
        )
        params = _summary_params(
            fill, canonical_decimal(result.realized), canonical_decimal(fill["fee"])
        )
        yield (
            _SQ_SUMMARY,
            tuple(v.isoformat() if isinstance(v, dt.date) else v for v in params),
            "exec",
        )
        pid, day, realized = _daily_params(fill, canonical_decimal(result.realized))
        yield (_SQ_DAILY, (pid, day.isoformat(), realized), "exec")
        yield (
            _SQ_AUDIT,
            (user_id, trade[0], _audit_details(uid, fill, result.realized), now),
            "exec",
        )


def _sqlite_pragmas(conn: sqlite3.Connection) -> None:
    for pragma in (
        "journal_mode=WAL",
        "foreign_keys=ON",
        "busy_timeout=30000",
        "synchronous=NORMAL",
    ):
        conn.execute(f"PRAGMA {pragma}")


class RawSqlite3:
    """stdlib sqlite3, synchronous, in the event loop's thread: the ceiling."""

    name = "sqlite3 (sync, ceiling)"

    def __init__(self, path: str) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        _sqlite_pragmas(self.conn)
        register_sqlite_decimal_functions(self.conn)

    async def transaction(self, fills: list[dict], user_id: int) -> None:
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            for fill in fills:
                steps = _SqliteSteps.fill_steps(fill, user_id)
                reply = None
                try:
                    while True:
                        step = steps.send(reply)
                        cur = conn.execute(step[0], step[1])
                        reply = None if len(step) == 3 else cur.fetchone()
                except StopIteration:
                    pass
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    async def close(self) -> None:
        self.conn.close()


class RawAiosqlite:
    """aiosqlite with the same statements: one worker-thread hop per call."""

    name = "raw aiosqlite"

    def __init__(self, path: str) -> None:
        self.path = path
        self.conn: Any = None

    async def open(self) -> RawAiosqlite:
        import aiosqlite

        self.conn = await aiosqlite.connect(self.path, isolation_level=None)
        await self.conn.create_function("tb_decimal_add", 2, sqlite_decimal_add, deterministic=True)
        for pragma in (
            "journal_mode=WAL",
            "foreign_keys=ON",
            "busy_timeout=30000",
            "synchronous=NORMAL",
        ):
            await self.conn.execute(f"PRAGMA {pragma}")
        return self

    async def transaction(self, fills: list[dict], user_id: int) -> None:
        conn = self.conn
        await conn.execute("BEGIN IMMEDIATE")
        try:
            for fill in fills:
                steps = _SqliteSteps.fill_steps(fill, user_id)
                reply = None
                try:
                    while True:
                        step = steps.send(reply)
                        async with conn.execute(step[0], step[1]) as cur:
                            reply = None if len(step) == 3 else await cur.fetchone()
                except StopIteration:
                    pass
            await conn.execute("COMMIT")
        except BaseException:
            await conn.execute("ROLLBACK")
            raise

    async def close(self) -> None:
        await self.conn.close()


_PG_ORDER = (
    "SELECT id, quantity, filled_quantity, avg_fill_price, status FROM orders WHERE id = $1 "
    "FOR UPDATE"
)
_PG_POSITION = (
    "SELECT id, quantity, cost_basis, realized_pnl, opened_at FROM positions "
    "WHERE portfolio_id = $1 AND instrument_id = $2 AND strategy_id IS NULL FOR UPDATE"
)
_PG_NEW_POSITION = (
    "INSERT INTO positions (uid, portfolio_id, instrument_id, strategy_id, quantity, cost_basis,"
    " avg_price, realized_pnl, updated_at) VALUES ($1, $2, $3, NULL, 0, 0, 0, 0, $4) "
    "ON CONFLICT (portfolio_id, instrument_id, COALESCE(strategy_id, 0)) DO NOTHING"
)
_PG_TRADE = (
    "INSERT INTO trades (uid, portfolio_id, instrument_id, strategy_id, order_id, side, quantity,"
    " price, fee, fee_currency, realized_pnl, exec_time, broker_trade_id, meta_json) "
    "VALUES ($1, $2, $3, NULL, $4, $5, $6, $7, $8, $9, $10, $11, $12, '{}') "
    "ON CONFLICT (portfolio_id, instrument_id, broker_trade_id) DO NOTHING RETURNING id"
)
_PG_UPDATE_ORDER = (
    "UPDATE orders SET filled_quantity = $1, avg_fill_price = $2, status = $3, updated_at = $4 "
    "WHERE id = $5"
)
_PG_UPDATE_POSITION = (
    "UPDATE positions SET quantity = $1, cost_basis = $2, avg_price = $3, realized_pnl = $4, "
    "opened_at = $5, last_exec_time = $6, last_trade_id = $7, updated_at = $8 WHERE id = $9"
)
_PG_AUDIT = (
    "INSERT INTO audit_log (user_id, entity_type, entity_id, action, details_json, created_at) "
    "VALUES ($1, 'TRADE', $2, 'FILL', $3, $4)"
)


_PG_SUMMARY = (
    "INSERT INTO pnl_summary (portfolio_id, period, period_start, instrument_id, fee_currency, "
    "realized_pnl, fees, trade_count) VALUES ($1, 'DAY', $2, $3, $4, $5, $6, 1), "
    "($7, 'MONTH', $8, $9, $10, $11, $12, 1) "
    "ON CONFLICT (portfolio_id, period, period_start, instrument_id, fee_currency) DO UPDATE SET "
    "realized_pnl = pnl_summary.realized_pnl + excluded.realized_pnl, "
    "fees = pnl_summary.fees + excluded.fees, "
    "trade_count = pnl_summary.trade_count + excluded.trade_count"
)


_PG_DAILY = (
    "INSERT INTO pnl_daily (portfolio_id, day, currency, realized_pnl) VALUES ($1, $2, 'USDT', $3) "
    "ON CONFLICT (portfolio_id, day, currency) DO UPDATE SET "
    "realized_pnl = pnl_daily.realized_pnl + excluded.realized_pnl"
)


class RawAsyncpg:
    """asyncpg with the same statements (prepared by asyncpg's statement cache)."""

    name = "raw asyncpg"

    def __init__(self, connect_args: dict[str, Any]) -> None:
        self.connect_args = connect_args
        self.conn: Any = None

    async def open(self) -> RawAsyncpg:
        import asyncpg

        self.conn = await asyncpg.connect(**self.connect_args)
        return self

    async def transaction(self, fills: list[dict], user_id: int) -> None:
        conn = self.conn
        async with conn.transaction():
            for fill in fills:
                o = await conn.fetchrow(_PG_ORDER, fill["order_id"])
                order = {"quantity": o[1], "filled": o[2], "avg": o[3]}
                key = (fill["portfolio_id"], fill["instrument_id"])
                p = await conn.fetchrow(_PG_POSITION, *key)
                if p is None:
                    await conn.execute(_PG_NEW_POSITION, new_uid(), *key, utc_now())
                    p = await conn.fetchrow(_PG_POSITION, *key)
                state = PositionState(p[1], p[2], p[3], p[4])
                result = apply_fill(
                    state, fill["side"], fill["quantity"], fill["price"], fill["exec_time"]
                )
                uid = new_uid()
                trade_id = await conn.fetchval(
                    _PG_TRADE,
                    uid,
                    fill["portfolio_id"],
                    fill["instrument_id"],
                    fill["order_id"],
                    fill["side"],
                    fill["quantity"],
                    fill["price"],
                    fill["fee"],
                    fill["fee_currency"],
                    result.realized,
                    fill["exec_time"],
                    fill["broker_trade_id"],
                )
                if trade_id is None:
                    continue
                now = utc_now()
                filled, avg, status = _order_step(order, fill)
                await conn.execute(_PG_UPDATE_ORDER, filled, avg, status, now, fill["order_id"])
                s = result.state
                await conn.execute(
                    _PG_UPDATE_POSITION,
                    s.quantity,
                    s.cost_basis,
                    s.avg_price,
                    s.realized_pnl,
                    s.opened_at,
                    fill["exec_time"],
                    trade_id,
                    now,
                    p[0],
                )
                await conn.execute(
                    _PG_SUMMARY, *_summary_params(fill, result.realized, fill["fee"])
                )
                await conn.execute(_PG_DAILY, *_daily_params(fill, result.realized))
                await conn.execute(
                    _PG_AUDIT, user_id, trade_id, _audit_details(uid, fill, result.realized), now
                )

    async def close(self) -> None:
        await self.conn.close()


class DalImpl:
    """The real thing, called as the bot calls it: ``db.scoped(actor).trades.ingest_fill`` (or
    ``ingest_fills``), each call its own transaction."""

    name = "tradebook DAL"

    def __init__(self, db: Database) -> None:
        self.db = db

    async def transaction(self, fills: list[Fill | dict[str, Any]], user_id: int) -> None:
        trades = self.db.scoped(Actor.user(user_id)).trades
        if len(fills) == 1:
            await trades.ingest_fill(fills[0])
        else:
            await trades.ingest_fills(fills)

    async def close(self) -> None:
        pass


# --- cases ------------------------------------------------------------------------------------
@dataclass
class Case:
    engine: str
    name: str  # e.g. "1 fill/tx"
    writers: int
    batch: int
    fills_per_writer: int
    shared_position: bool = False
    impls: list[str] = field(default_factory=list)
    # A baseline far slower than the DAL runs fewer fills (a rate is per fill), so the
    # default run stays within its 10 minutes on a slow moment of this VM.
    fills_by_impl: dict[str, int] = field(default_factory=dict)

    def for_impl(self, impl: str) -> Case:
        return replace(self, fills_per_writer=self.fills_by_impl.get(impl, self.fills_per_writer))


@dataclass
class Outcome:
    case: Case
    rates: dict[str, list[float]] = field(default_factory=dict)  # impl → fills/s per run
    errors: dict[str, int] = field(default_factory=dict)  # impl → errors ("database is locked")

    def median(self, impl: str) -> float:
        return median(self.rates[impl])


async def _run_writers(impl: Any, targets: list[Target], case: Case, tag: str) -> tuple[float, int]:
    """All writers at once; returns (seconds, errors). Errors are counted, not retried."""
    errors = 0

    async def writer(w: int, target: Target) -> None:
        nonlocal errors
        fills = make_fills(
            target, case.fills_per_writer, f"{tag}-w{w}", moving_time=not case.shared_position
        )
        user_id = target.actor.user_id
        for i in range(0, len(fills), case.batch):
            try:
                await impl.transaction(fills[i : i + case.batch], user_id)
            except Exception as exc:  # counted: the bench reports them
                errors += 1
                if errors == 1:
                    print(f"    first error ({impl.name}): {exc!r}")

    loop = asyncio.get_running_loop()
    start = loop.time()
    await asyncio.gather(*(writer(w, t) for w, t in enumerate(targets)))
    return loop.time() - start, errors


async def run_case(
    bdb: BenchDb, db: Database, case: Case, actors: list[Actor], iid: int, runs: int = 3
) -> Outcome:
    outcome = Outcome(case)
    impls: dict[str, Callable[[], Any]] = {
        "dal": lambda: DalImpl(db),
        "sqlite3": lambda: RawSqlite3(bdb.raw["path"]),
        "aiosqlite": lambda: RawAiosqlite(bdb.raw["path"]).open(),
        "asyncpg": lambda: RawAsyncpg(bdb.raw).open(),
    }
    for run in range(runs):
        for impl_name in case.impls:
            sized = case.for_impl(impl_name)  # this implementation's number of fills
            tag = f"r{next(_runs)}"
            targets = await make_targets(
                db, actors[: sized.writers], iid, tag, shared=sized.shared_position
            )
            if impl_name == "asyncpg" and sized.writers > 1:
                conns = [await RawAsyncpg(bdb.raw).open() for _ in range(sized.writers)]
                seconds, errors = await _run_pooled(conns, targets, sized, tag)
            else:
                made = impls[impl_name]()
                impl = await made if asyncio.iscoroutine(made) else made
                try:
                    seconds, errors = await _run_writers(impl, targets, sized, tag)
                finally:
                    await impl.close()
            total = sized.writers * sized.fills_per_writer
            per_portfolio: dict[int, int] = {}
            for target in targets:
                per_portfolio[target.portfolio_id] = (
                    per_portfolio.get(target.portfolio_id, 0) + sized.fills_per_writer
                )
            await check_portfolios(db, per_portfolio)  # raises CheckFailed
            outcome.rates.setdefault(impl_name, []).append(total / seconds)
            outcome.errors[impl_name] = outcome.errors.get(impl_name, 0) + errors
            if errors:
                raise CheckFailed(f"{sized.engine} {sized.name} {impl_name}: {errors} errors")
            print(
                f"  {sized.engine:10} {sized.name:28} {impl_name:9} run {run + 1}: "
                f"{total / seconds:8.0f} fills/s  (check ok)"
            )
    return outcome


async def _run_pooled(
    conns: list[RawAsyncpg], targets: list[Target], case: Case, tag: str
) -> tuple[float, int]:
    """asyncpg with one connection per writer (the DAL pools its own)."""

    errors = 0

    async def writer(w: int, target: Target) -> None:
        nonlocal errors
        fills = make_fills(
            target, case.fills_per_writer, f"{tag}-w{w}", moving_time=not case.shared_position
        )
        user_id = target.actor.user_id
        assert user_id is not None  # make_targets' actors are users
        for i in range(0, len(fills), case.batch):
            try:
                await conns[w].transaction(fills[i : i + case.batch], user_id)
            except Exception as exc:
                errors += 1
                if errors == 1:
                    print(f"    first error (raw asyncpg): {exc!r}")

    loop = asyncio.get_running_loop()
    start = loop.time()
    try:
        await asyncio.gather(*(writer(w, t) for w, t in enumerate(targets)))
    finally:
        for conn in conns:
            await conn.close()
    return loop.time() - start, errors


def cases(engine: str, scale: float) -> list[Case]:
    def n(x: int) -> int:
        return max(30, int(x * scale))

    if engine == "sqlite":
        return [
            Case(engine, "1 fill/tx", 1, 1, n(3000), impls=["dal", "aiosqlite", "sqlite3"]),
            Case(
                engine,
                "100 fills/tx",
                1,
                100,
                n(20000),
                impls=["dal", "aiosqlite", "sqlite3"],
                fills_by_impl={"aiosqlite": n(5000)},  # ≈ 20× slower per fill: its per-fill plan
            ),
            Case(engine, "8 writers, one position", 8, 1, n(300), True, impls=["dal"]),
        ]
    return [
        Case(engine, "1 fill/tx", 1, 1, n(1500), impls=["dal", "asyncpg"]),
        Case(engine, "100 fills/tx", 1, 100, n(6000), impls=["dal", "asyncpg"]),
        Case(engine, "8 writers, own positions", 8, 1, n(300), impls=["dal", "asyncpg"]),
        Case(engine, "8 writers, one position", 8, 1, n(200), True, impls=["dal", "asyncpg"]),
    ]


async def bench_engine(bdb: BenchDb, scale: float, runs: int = 3) -> list[Outcome]:
    db = Database(bdb.url)
    try:
        actors = await make_users(db, list(range(900001, 900009)))
        iid = await make_instrument(db, "BENCHUSDT")
        out = []
        for case in cases(bdb.engine, scale):
            out.append(await run_case(bdb, db, case, actors, iid, runs))
        return out
    finally:
        await db.dispose()
