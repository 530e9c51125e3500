"""Fill ingestion: the real DAL against raw drivers that run the DAL's own statement plan.

Like for like: before any case runs, one DAL transaction of each kind (one fill; a batch of
100) is run with SQLAlchemy's ``before_cursor_execute`` event listening, which captures the
SQL text the DAL sends, how it sends it (one execute, executemany, or one statement of many
VALUES rows) and the order of its parameters. The raw implementations execute exactly that
SQL, in that order, with parameters computed by hand-written code (the same position math,
``dal.position_math.apply_fill``, and the same canonical forms); a check then runs one raw
transaction of each kind and fails the bench unless it sent the same statements as the DAL.

* SQLite: stdlib ``sqlite3``, synchronously in the event loop's thread (the DAL runs there
  too), on a connection with the DAL's pragmas and decimal functions. One fill per
  transaction: the DAL's single-fill plan (one joined read, then the writes); a batch: the
  DAL's set-based plan.
* PostgreSQL: ``asyncpg``, one connection per writer: one fill is a joined read ``FOR UPDATE``
  and one statement of data-modifying CTEs; a batch is the set-based plan.

What the raw drivers leave out is what only the DAL does: parsing and validating the input,
the checks of a late or replayed fill, SQLAlchemy's execution layer and the log line per
fill. The DAL runs with the production logging configuration (INFO; ``dal`` with the human
format, ``dal-json`` with JSON lines), written to a file.

Rounds alternate the implementations (A B C A B C …); a case's figures are medians over the
rounds, with their spread, and a ratio is the median of the rounds' ratios. Every run writes
to fresh portfolios and ends with the same exact check for every implementation
(``common.check_portfolios``): positions, per-trade realized PnL and the PnL summary against
a replay of the trades, order fills against the trades, the number of trades. A failed check
or a plan that differs from the DAL's fails the bench.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
import itertools
import os
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from decimal import Decimal, localcontext
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from bench.common import (
    BenchDb,
    CheckFailed,
    ProductionLogging,
    check_portfolios,
    make_instrument,
    make_portfolio,
    make_users,
    median,
)
from dal import schema as t
from dal.clock import utc_now
from dal.database import Database
from dal.decimals import DECIMAL_CONTEXT, NOTIONAL_CONTEXT, amount_text, average_price
from dal.decimals import notional_text as notional_text_
from dal.engine import BUSY_TIMEOUT_MS, JOURNAL_SIZE_LIMIT_BYTES, create_sync_sqlite_engine
from dal.execution import BACKSTOP_AUTOCHECKPOINT_PAGES, _Checkpointer
from dal.models import Fill
from dal.pnl_summary import trade_notional
from dal.position_math import ZERO, FillResult, PositionState, apply_fill, holding_seconds
from dal.scope import Actor
from dal.types import (
    canonical_json,
    format_utc,
    new_uid,
    parse_utc,
    register_sqlite_decimal_functions,
)

BASE_TIME = dt.datetime(2026, 1, 5, 9, 0, tzinfo=dt.UTC)
BIG = Decimal("1000000000")
ROUNDS = 5
_runs = itertools.count(1)


@dataclass
class Target:
    """One writer's place to write: a portfolio, an instrument and a BUY and a SELL order.
    Its position exists (``make_targets`` ingests an opening fill), so every timed fill takes
    the DAL's common path."""

    actor: Actor
    portfolio_id: int
    instrument_id: int
    buy_order: int
    sell_order: int
    symbol: str = "BENCHUSDT"
    currency: str = "USDT"


def make_fills(
    target: Target, n: int, tag: str, moving_time: bool = True, first: int = 0
) -> list[dict]:
    """Fills ``first`` to ``first + n - 1`` of a writer's sequence: two buys then one sell, so
    the position grows and realizes PnL on the way; all after the opening fill, on the same
    day."""
    fills = []
    start = BASE_TIME + dt.timedelta(seconds=1)
    for i in range(first, first + n):
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
                "exec_time": start + dt.timedelta(milliseconds=i if moving_time else 0),
                "broker_trade_id": f"{tag}-{i}",
            }
        )
    return fills


async def make_targets(
    db: Database, actors: list[Actor], instrument_id: int, tag: str, shared: bool = False
) -> list[Target]:
    """One fresh portfolio per actor (or one shared by all when ``shared``), with a BUY and a
    SELL order and an opening fill (one trade) through the DAL."""
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
            await s.trades.ingest_fill(
                {
                    "portfolio_id": pid,
                    "instrument_id": instrument_id,
                    "order_id": orders[0],
                    "side": "BUY",
                    "quantity": Decimal(1),
                    "price": Decimal(100),
                    "fee": Decimal("0.01"),
                    "fee_currency": "USDT",
                    "exec_time": BASE_TIME,
                    "broker_trade_id": f"{tag}-{i}-open",
                }
            )
        targets.append(Target(actor, pid, instrument_id, orders[0], orders[1]))
    return targets


# --- the DAL's plan, captured -----------------------------------------------------------------
@dataclass(frozen=True)
class Statement:
    """One statement as the DAL sent it: its SQL, how (``one``: an execute; ``many``: an
    executemany; ``values``: one statement of many VALUES rows) and its parameter names in
    order (for ``values``, one row's)."""

    sql: str
    style: str
    names: tuple[str, ...]
    params: Any = None  # what the DAL sent (only to check constants against)

    @property
    def kind(self) -> str:
        return _kind(self.sql)


def _kind(sql: str) -> str:
    s = sql.lstrip()
    for prefix, kind in (
        ("BEGIN", "begin"),
        ("WITH new_trade", "fused"),
        ("INSERT INTO trades", "trades"),
        ("UPDATE orders", "order"),
        ("UPDATE positions", "position"),
        ("INSERT INTO pnl_summary", "summary"),
        ("INSERT INTO pnl_daily", "daily"),
        ("INSERT INTO audit_log", "audit"),
    ):
        if s.startswith(prefix):
            return kind
    if "JOIN positions" in s:
        return "read"
    if "FOR SHARE OF users" in s:
        return "zones"
    if "FROM orders" in s:
        return "orders"
    if "FROM positions" in s:
        return "position_read"
    if "FROM portfolios, users" in s:
        return "portfolio"
    raise CheckFailed(f"the DAL sent a statement the bench does not know: {s[:80]!r}")


# The statements of each plan, in order: what the raw implementations are written for.
EXPECTED_KINDS = {
    ("sqlite", 1): [
        "begin", "read", "trades", "order", "position", "summary", "daily", "audit",
    ],
    ("sqlite", 100): [
        "begin", "portfolio", "orders", "position_read", "trades", "order", "position",
        "summary", "daily", "audit",
    ],
    ("postgresql", 1): ["read", "fused"],
    ("postgresql", 100): [
        "portfolio", "zones", "orders", "position_read", "trades", "order", "position",
        "summary", "daily", "audit",
    ],
}  # fmt: skip


class Plan:
    """The statements of one DAL transaction of one kind, in order."""

    def __init__(self, engine: str, batch: int, statements: list[Statement]) -> None:
        self.engine, self.batch, self.statements = engine, batch, statements
        kinds = [s.kind for s in statements]
        if kinds != EXPECTED_KINDS[engine, batch]:
            raise CheckFailed(
                f"the DAL's {engine} plan for {batch} fill(s) is now {kinds}; bench/ingest.py "
                f"is written for {EXPECTED_KINDS[engine, batch]}"
            )
        self._by_kind = {s.kind: s for s in statements}

    def __getitem__(self, kind: str) -> Statement:
        return self._by_kind[kind]

    def sql(self, kind: str) -> str:
        return self._by_kind[kind].sql

    def expect(self, kind: str, names: tuple[str, ...]) -> str:
        """The SQL of ``kind``, after checking its parameters are ``names`` in this order."""
        found = self._by_kind[kind].names
        if found != names:
            raise CheckFailed(f"the DAL's {kind} statement now takes {found}, not {names}")
        return self._by_kind[kind].sql


@contextmanager
def capturing(db: Database) -> Iterator[list[Statement]]:
    """The statements ``db`` sends meanwhile (``before_cursor_execute``)."""
    engine = db._get_runner().engine
    sync_engine = getattr(engine, "sync_engine", engine)
    seen: list[Statement] = []

    def record(
        _conn: Any, _cursor: Any, statement: str, params: Any, context: Any, many: bool
    ) -> None:
        compiled = getattr(context, "compiled", None)
        names = tuple(compiled.positiontup or ()) if compiled is not None else ()
        style = context.execute_style.name if context is not None else "EXECUTE"
        kind = {"EXECUTE": "one", "EXECUTEMANY": "many", "INSERTMANYVALUES": "values"}[style]
        seen.append(Statement(statement, kind, names, params))

    sa.event.listen(sync_engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        sa.event.remove(sync_engine, "before_cursor_execute", record)


async def capture_plan(db: Database, target: Target, batch: int, tag: str) -> Plan:
    """One DAL transaction of ``batch`` fills on ``target``, captured."""
    fills: list[Any] = make_fills(target, batch, tag)
    trades = db.scoped(target.actor).trades
    with capturing(db) as seen:
        if batch == 1:
            await trades.ingest_fill(fills[0])
        else:
            await trades.ingest_fills(fills)
    return Plan(db.dialect, batch, seen)


# --- the arithmetic of the raw implementations ------------------------------------------------
_PF = {c.name: i for i, c in enumerate(t.portfolios.c)}
_OR = {c.name: i for i, c in enumerate(t.orders.c)}
_PO = {c.name: i for i, c in enumerate(t.positions.c)}
_OWNER_TZ = len(t.portfolios.c)  # the joined read: portfolio, the owner's zone, order, position
_ORDER_AT = _OWNER_TZ + 1
_POSITION_AT = _ORDER_AT + len(t.orders.c)
_ZONES: dict[str, ZoneInfo] = {}
SUMMARY_COLUMNS = (
    "realized_pnl", "fees", "trade_count", "win_count", "loss_count", "gross_profit",
    "gross_loss", "net_quantity", "net_proceeds", "closing_count", "holding_seconds",
)  # fmt: skip
SUMMARY_NAMES = ("portfolio_id", "period", "period_start", "instrument_id", "fee_currency")
TRADE_NAMES = (
    "uid", "portfolio_id", "instrument_id", "strategy_id", "order_id", "side", "quantity",
    "price", "fee", "fee_currency", "realized_pnl", "exec_time", "broker_trade_id",
    "position_opened_at", "meta_json",
)  # fmt: skip
ORDER_NAMES = (
    "status", "filled_quantity", "avg_fill_price", "fill_notional", "broker_order_id",
    "updated_at",
)  # fmt: skip
POSITION_NAMES = (
    "quantity", "cost_basis", "avg_price", "realized_pnl", "opened_at", "last_exec_time",
)  # fmt: skip
AUDIT_NAMES = ("user_id", "entity_type", "entity_id", "action", "details_json", "created_at")


def _zone(name: str) -> ZoneInfo:
    zone = _ZONES.get(name)
    if zone is None:
        zone = _ZONES[name] = ZoneInfo(name)
    return zone


@dataclass(slots=True)
class _OrderState:
    quantity: Decimal
    filled: Decimal
    notional: Decimal
    status: str = ""

    def add(self, quantity: Decimal, price: Decimal) -> None:
        with localcontext(DECIMAL_CONTEXT):
            filled = self.filled + quantity
        if filled > self.quantity:
            raise RuntimeError("overfill")
        self.notional = NOTIONAL_CONTEXT.add(
            self.notional, NOTIONAL_CONTEXT.multiply(quantity, price)
        )
        self.filled = filled
        self.status = "FILLED" if filled == self.quantity else "PARTIALLY_FILLED"


def _summary_amounts(fill: dict, result: FillResult) -> list[Any]:
    """One fill's contribution to its DAY and MONTH rows, in SUMMARY_COLUMNS order."""
    realized, quantity = result.realized, fill["quantity"]
    notional = trade_notional(quantity, fill["price"])
    buy = fill["side"] == "BUY"
    opened = result.reduced_opened_at
    return [
        realized,
        fill["fee"],
        1,
        1 if realized > 0 else 0,
        1 if realized < 0 else 0,
        realized if realized > 0 else ZERO,
        -realized if realized < 0 else ZERO,
        quantity if buy else -quantity,
        -notional if buy else notional,
        0 if opened is None else 1,
        holding_seconds(opened, fill["exec_time"]),
    ]


def _audit_json(uid: str, fill: dict, symbol: str, realized: Decimal) -> str:
    return canonical_json(
        {
            "trade_uid": uid,
            "order_id": fill["order_id"],
            "broker_trade_id": fill["broker_trade_id"],
            "side": fill["side"],
            "symbol": symbol,
            "quantity": fill["quantity"],
            "price": fill["price"],
            "realized_pnl": realized,
            "late": False,
        }
    )


def _priced(fills: list[dict], state: PositionState) -> list[tuple[dict, FillResult, str]]:
    """Each fill's position math in order, and its new trade's uid."""
    out = []
    for fill in fills:
        result = apply_fill(state, fill["side"], fill["quantity"], fill["price"], fill["exec_time"])
        state = result.state
        out.append((fill, result, new_uid()))
    return out


def _summed(priced: list[tuple[dict, FillResult, str]]) -> list[Any]:
    totals: list[Any] = []
    with localcontext(DECIMAL_CONTEXT):
        for fill, result, _ in priced:
            amounts = _summary_amounts(fill, result)
            totals = (
                amounts if not totals else [a + b for a, b in zip(totals, amounts, strict=True)]
            )
    return totals


# --- stdlib sqlite3 ---------------------------------------------------------------------------
def _text(value: Decimal | None) -> str | None:
    return None if value is None else amount_text(value)


def _time(value: dt.datetime | None) -> str | None:
    return None if value is None else format_utc(value)


def _dec(text: str | None) -> Decimal:
    return Decimal(text) if text is not None else ZERO


def _summary_row_sqlite(pid: int, period: str, start: dt.date, fill: dict, amounts: list) -> tuple:
    converted = [
        v if isinstance(v, int) else amount_text(v)  # counts stay integers
        for v in amounts
    ]
    return (pid, period, start.isoformat(), fill["instrument_id"], fill["fee_currency"] or "",
            *converted)  # fmt: skip


class SamePlanSqlite3:
    """stdlib ``sqlite3`` running the DAL's plan, synchronously in the event loop's thread."""

    name = "sqlite3 (the DAL's plan)"

    def __init__(self, path: str, plan: Plan, target_symbol: str = "BENCHUSDT") -> None:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        for pragma in (
            "journal_mode=WAL",
            "foreign_keys=ON",
            f"busy_timeout={BUSY_TIMEOUT_MS}",
            "synchronous=NORMAL",
            # The DAL's writer: checkpoints on a thread of their own after commits, the
            # automatic one only as a backstop (dal/execution.py).
            f"wal_autocheckpoint={BACKSTOP_AUTOCHECKPOINT_PAGES}",
            f"journal_size_limit={JOURNAL_SIZE_LIMIT_BYTES}",
        ):
            conn.execute(f"PRAGMA {pragma}")
        register_sqlite_decimal_functions(conn)
        self.conn = conn
        self._checkpoint_engine = create_sync_sqlite_engine(
            f"sqlite:///{path}",
            poolclass=sa.pool.NullPool,
            connect_args={"check_same_thread": False},
        )
        self.checkpointer = _Checkpointer(self._checkpoint_engine)
        self.plan = plan
        self.symbol = target_symbol
        self.trace: list[tuple[str, str]] | None = None  # (sql, style) when checking the plan
        summary = ("summary", (*SUMMARY_NAMES, *SUMMARY_COLUMNS))
        if plan.batch == 1:
            self.read = plan.expect("read", ("portfolio_id", "owner_id", "order_id"))
        else:
            self.portfolio = plan.expect("portfolio", ("portfolio_id", "owner_id"))
            self.orders = plan.expect("orders", ("ids",))
            self.position_read = plan.expect("position_read", ("portfolio_id", "instrument_id"))
        self.insert = plan.expect("trades", TRADE_NAMES)
        self.order = plan.expect("order", (*ORDER_NAMES, "order_id"))
        self.position = plan.expect(
            "position", (*POSITION_NAMES, "last_trade_id", "updated_at", "position_id")
        )
        self.summary = plan.expect(*summary)
        self.daily = plan.expect("daily", ("portfolio_id", "day", "currency", "realized_pnl"))
        self.audit = plan.expect("audit", AUDIT_NAMES)

    # the driver, traced when checking the plan
    def _x(self, sql: str, params: Any = (), style: str = "one") -> sqlite3.Cursor:
        if self.trace is not None:
            self.trace.append((sql, style))
        if style == "many":
            return self.conn.executemany(sql, params)
        return self.conn.execute(sql, params)

    async def transaction(self, fills: list[dict], user_id: int) -> None:
        self._x("BEGIN IMMEDIATE")
        try:
            if len(fills) == 1:
                self._one(fills[0], user_id)
            else:
                self._batch(fills, user_id)
            self.conn.commit()
        except BaseException:
            self.conn.rollback()
            raise
        self.checkpointer.committed()

    def _one(self, fill: dict, user_id: int) -> None:
        x = self._x
        pid, order_id = fill["portfolio_id"], fill["order_id"]
        row = x(self.read, (pid, user_id, order_id)).fetchone()
        if row is None:
            raise RuntimeError("no such order or position")
        zone = _zone(row[_OWNER_TZ])
        o, p = _ORDER_AT, _POSITION_AT
        order = _OrderState(
            Decimal(row[o + _OR["quantity"]]),
            Decimal(row[o + _OR["filled_quantity"]]),
            Decimal(row[o + _OR["fill_notional"]]),
        )
        opened = row[p + _PO["opened_at"]]
        state = PositionState(
            _dec(row[p + _PO["quantity"]]),
            _dec(row[p + _PO["cost_basis"]]),
            _dec(row[p + _PO["realized_pnl"]]),
            None if opened is None else parse_utc(opened),
        )
        ((_, result, uid),) = _priced([fill], state)
        exec_time = format_utc(fill["exec_time"])
        trade = x(
            self.insert,
            (
                uid, pid, fill["instrument_id"], None, order_id, fill["side"],
                amount_text(fill["quantity"]), amount_text(fill["price"]),
                amount_text(fill["fee"]), fill["fee_currency"], amount_text(result.realized),
                exec_time, fill["broker_trade_id"], _time(result.reduced_opened_at), "{}",
            ),
        ).fetchone()  # fmt: skip
        if trade is None:
            return  # a replay: nothing to write (the bench sends none)
        trade_id = trade[0]
        now = format_utc(utc_now())
        order.add(fill["quantity"], fill["price"])
        x(
            self.order,
            (
                order.status, amount_text(order.filled),
                amount_text(average_price(order.notional, order.filled)),
                notional_text_(order.notional), None, now, order_id,
            ),
        )  # fmt: skip
        s = result.state
        x(
            self.position,
            (
                amount_text(s.quantity), amount_text(s.cost_basis), amount_text(s.avg_price),
                amount_text(s.realized_pnl), _time(s.opened_at), exec_time, trade_id, now,
                row[p + _PO["id"]],
            ),
        )  # fmt: skip
        day = fill["exec_time"].astimezone(zone).date()
        amounts = _summary_amounts(fill, result)
        x(
            self.summary,
            [
                _summary_row_sqlite(pid, "DAY", day, fill, amounts),
                _summary_row_sqlite(pid, "MONTH", day.replace(day=1), fill, amounts),
            ],
            "many",
        )
        x(self.daily, (pid, day.isoformat(), "USDT", amount_text(result.realized)))
        x(
            self.audit,
            (
                user_id, "TRADE", trade_id, "FILL",
                _audit_json(uid, fill, self.symbol, result.realized), now,
            ),
        )  # fmt: skip

    def _batch(self, fills: list[dict], user_id: int) -> None:
        """The set-based plan, for a batch of fills of one position (the bench's batches)."""
        x = self._x
        first = fills[0]
        pid, iid = first["portfolio_id"], first["instrument_id"]
        portfolio = x(self.portfolio, (pid, user_id)).fetchone()
        if portfolio is None:
            raise RuntimeError("no such portfolio")
        zone = _zone(portfolio[_OWNER_TZ])
        order_ids = sorted({f["order_id"] for f in fills})
        orders = {
            r[0]: _OrderState(
                Decimal(r[_OR["quantity"]]),
                Decimal(r[_OR["filled_quantity"]]),
                Decimal(r[_OR["fill_notional"]]),
            )
            for r in x(self.orders, order_ids)
        }
        position = x(self.position_read, (pid, iid)).fetchone()
        opened = position[_PO["opened_at"]]
        state = PositionState(
            _dec(position[_PO["quantity"]]),
            _dec(position[_PO["cost_basis"]]),
            _dec(position[_PO["realized_pnl"]]),
            None if opened is None else parse_utc(opened),
        )
        priced = _priced(fills, state)
        values: list[Any] = []
        for fill, result, uid in priced:
            values += (
                uid, pid, iid, None, fill["order_id"], fill["side"],
                amount_text(fill["quantity"]), amount_text(fill["price"]),
                amount_text(fill["fee"]), fill["fee_currency"], amount_text(result.realized),
                format_utc(fill["exec_time"]), fill["broker_trade_id"],
                _time(result.reduced_opened_at), "{}",
            )  # fmt: skip
        ids = {row[1]: row[0] for row in x(self.insert, values, "values")}
        if len(ids) != len(fills):
            raise RuntimeError("replayed fills in a batch (the bench sends none)")
        now = format_utc(utc_now())
        for fill, _, _ in priced:
            orders[fill["order_id"]].add(fill["quantity"], fill["price"])
        x(
            self.order,
            [
                (
                    o.status, amount_text(o.filled),
                    amount_text(average_price(o.notional, o.filled)), notional_text_(o.notional),
                    None, now, order_id,
                )
                for order_id, o in orders.items()
            ],
            "many",
        )  # fmt: skip
        last_fill, last, last_uid = priced[-1]
        s = last.state
        x(
            self.position,
            (
                amount_text(s.quantity), amount_text(s.cost_basis), amount_text(s.avg_price),
                amount_text(s.realized_pnl), _time(s.opened_at),
                format_utc(last_fill["exec_time"]), ids[last_uid], now, position[_PO["id"]],
            ),
        )  # fmt: skip
        day = first["exec_time"].astimezone(zone).date()  # the bench's batches: one day
        totals = _summed(priced)
        x(
            self.summary,
            [
                _summary_row_sqlite(pid, "DAY", day, first, totals),
                _summary_row_sqlite(pid, "MONTH", day.replace(day=1), first, totals),
            ],
            "many",
        )
        x(self.daily, (pid, day.isoformat(), "USDT", amount_text(totals[0])))
        x(
            self.audit,
            [
                (
                    user_id, "TRADE", ids[uid], "FILL",
                    _audit_json(uid, fill, self.symbol, result.realized), now,
                )
                for fill, result, uid in priced
            ],
            "many",
        )  # fmt: skip

    async def close(self) -> None:
        self.conn.close()
        await self.checkpointer.close()
        self._checkpoint_engine.dispose()


# --- asyncpg ----------------------------------------------------------------------------------
class SamePlanAsyncpg:
    """``asyncpg`` running the SQL the DAL sends, on its own connection."""

    name = "asyncpg (the DAL's SQL)"

    def __init__(self, connect_args: dict[str, Any], plan: Plan, symbol: str = "BENCHUSDT") -> None:
        self.connect_args = connect_args
        self.plan = plan
        self.symbol = symbol
        self.conn: Any = None
        self.trace: list[tuple[str, str]] | None = None
        if plan.batch == 1:
            self.read = plan.expect("read", ("portfolio_id", "owner_id", "order_id"))
            fused = plan["fused"]
            self.fused, self.fused_names = fused.sql, fused.names
            # The audit row's two constants travel as parameters: check which is which.
            sent = dict(zip(fused.names, fused.params, strict=True))
            if (sent.get("param_1"), sent.get("param_2")) != ("TRADE", "FILL"):
                raise CheckFailed("the DAL's fused statement has new constants")
        else:
            self.portfolio = plan.expect("portfolio", ("portfolio_id", "owner_id"))
            self.zones = plan.expect("zones", ("ids",))
            self.orders = plan.expect("orders", ("ids",))
            self.position_read = plan.expect("position_read", ("portfolio_id", "instrument_id"))
            self.insert = plan.expect("trades", TRADE_NAMES)
            self.order = plan.expect("order", (*ORDER_NAMES, "order_id"))
            self.position = plan.expect(
                "position", (*POSITION_NAMES, "last_trade_id", "updated_at", "position_id")
            )
            self.summary = plan.expect("summary", (*SUMMARY_NAMES, *SUMMARY_COLUMNS))
            self.daily = plan.expect("daily", ("portfolio_id", "day", "currency", "realized_pnl"))
            self.audit = plan.expect("audit", AUDIT_NAMES)

    async def open(self) -> SamePlanAsyncpg:
        import asyncpg

        self.conn = await asyncpg.connect(**self.connect_args)
        return self

    def _t(self, sql: str, style: str = "one") -> str:
        if self.trace is not None:
            self.trace.append((sql, style))
        return sql

    async def transaction(self, fills: list[dict], user_id: int) -> None:
        async with self.conn.transaction():
            if len(fills) == 1:
                await self._one(fills[0], user_id)
            else:
                await self._batch(fills, user_id)

    async def _one(self, fill: dict, user_id: int) -> None:
        conn = self.conn
        pid, order_id = fill["portfolio_id"], fill["order_id"]
        row = await conn.fetchrow(self._t(self.read), pid, user_id, order_id)
        if row is None:
            raise RuntimeError("no such order or position")
        zone = _zone(row[_OWNER_TZ])
        o, p = _ORDER_AT, _POSITION_AT
        order = _OrderState(
            row[o + _OR["quantity"]], row[o + _OR["filled_quantity"]], row[o + _OR["fill_notional"]]
        )
        state = PositionState(
            row[p + _PO["quantity"]],
            row[p + _PO["cost_basis"]],
            row[p + _PO["realized_pnl"]],
            row[p + _PO["opened_at"]],
        )
        ((_, result, uid),) = _priced([fill], state)
        now = utc_now()
        order.add(fill["quantity"], fill["price"])
        day = fill["exec_time"].astimezone(zone).date()
        amounts = dict(zip(SUMMARY_COLUMNS, _summary_amounts(fill, result), strict=True))
        s = result.state
        values: dict[str, Any] = {
            "t_uid": uid, "t_portfolio_id": pid, "t_instrument_id": fill["instrument_id"],
            "t_strategy_id": None, "t_order_id": order_id, "t_side": fill["side"],
            "t_quantity": fill["quantity"], "t_price": fill["price"], "t_fee": fill["fee"],
            "t_fee_currency": fill["fee_currency"], "t_realized_pnl": result.realized,
            "t_exec_time": fill["exec_time"], "t_broker_trade_id": fill["broker_trade_id"],
            "t_position_opened_at": result.reduced_opened_at, "t_meta_json": "{}",
            "daily_portfolio_id": pid, "daily_day": day, "daily_currency": "USDT",
            "daily_realized_pnl": result.realized,
            "o_status": order.status, "o_filled_quantity": order.filled,
            "o_avg_fill_price": average_price(order.notional, order.filled),
            "o_fill_notional": order.notional, "o_updated_at": now, "o_order_id": order_id,
            "o_broker_order_id": None,
            "p_quantity": s.quantity, "p_cost_basis": s.cost_basis, "p_avg_price": s.avg_price,
            "p_realized_pnl": s.realized_pnl, "p_opened_at": s.opened_at,
            "p_last_exec_time": fill["exec_time"], "p_updated_at": now,
            "p_position_id": row[p + _PO["id"]],
            "a_user_id": user_id, "param_1": "TRADE", "param_2": "FILL",
            "a_details": _audit_json(uid, fill, self.symbol, result.realized),
            "a_created_at": now,
        }  # fmt: skip
        for prefix, period, start in (
            ("day_", "DAY", day),
            ("month_", "MONTH", day.replace(day=1)),
        ):
            values.update(
                {
                    f"{prefix}portfolio_id": pid,
                    f"{prefix}period": period,
                    f"{prefix}period_start": start,
                    f"{prefix}instrument_id": fill["instrument_id"],
                    f"{prefix}fee_currency": fill["fee_currency"] or "",
                }
            )
            values.update({f"{prefix}{name}": v for name, v in amounts.items()})
        await conn.fetchrow(self._t(self.fused), *[values[n] for n in self.fused_names])

    async def _batch(self, fills: list[dict], user_id: int) -> None:
        conn, t_ = self.conn, self._t
        first = fills[0]
        pid, iid = first["portfolio_id"], first["instrument_id"]
        if await conn.fetchrow(t_(self.portfolio), pid, user_id) is None:
            raise RuntimeError("no such portfolio")
        (zone_row,) = await conn.fetch(t_(self.zones), pid)
        zone = _zone(zone_row[1])
        order_ids = sorted({f["order_id"] for f in fills})
        orders = {
            r[0]: _OrderState(
                r[_OR["quantity"]], r[_OR["filled_quantity"]], r[_OR["fill_notional"]]
            )
            for r in await conn.fetch(t_(self.orders), *order_ids)
        }
        position = await conn.fetchrow(t_(self.position_read), pid, iid)
        state = PositionState(
            position[_PO["quantity"]],
            position[_PO["cost_basis"]],
            position[_PO["realized_pnl"]],
            position[_PO["opened_at"]],
        )
        priced = _priced(fills, state)
        values: list[Any] = []
        for fill, result, uid in priced:
            values += (
                uid, pid, iid, None, fill["order_id"], fill["side"], fill["quantity"],
                fill["price"], fill["fee"], fill["fee_currency"], result.realized,
                fill["exec_time"], fill["broker_trade_id"], result.reduced_opened_at, "{}",
            )  # fmt: skip
        ids = {row[1]: row[0] for row in await conn.fetch(t_(self.insert, "values"), *values)}
        if len(ids) != len(fills):
            raise RuntimeError("replayed fills in a batch (the bench sends none)")
        now = utc_now()
        for fill, _, _ in priced:
            orders[fill["order_id"]].add(fill["quantity"], fill["price"])
        await conn.executemany(
            t_(self.order, "many"),
            [
                (
                    o.status,
                    o.filled,
                    average_price(o.notional, o.filled),
                    o.notional,
                    None,  # no broker order id: the bench's fills carry none
                    now,
                    oid,
                )
                for oid, o in orders.items()
            ],
        )
        last_fill, last, last_uid = priced[-1]
        s = last.state
        await conn.execute(
            t_(self.position),
            s.quantity, s.cost_basis, s.avg_price, s.realized_pnl, s.opened_at,
            last_fill["exec_time"], ids[last_uid], now, position[_PO["id"]],
        )  # fmt: skip
        day = first["exec_time"].astimezone(zone).date()
        totals = _summed(priced)
        key = (iid, first["fee_currency"] or "")
        await conn.executemany(
            t_(self.summary, "many"),
            [
                (pid, "DAY", day, *key, *totals),
                (pid, "MONTH", day.replace(day=1), *key, *totals),
            ],
        )
        await conn.execute(t_(self.daily), pid, day, "USDT", totals[0])
        await conn.executemany(
            t_(self.audit, "many"),
            [
                (
                    user_id, "TRADE", ids[uid], "FILL",
                    _audit_json(uid, fill, self.symbol, result.realized), now,
                )
                for fill, result, uid in priced
            ],
        )  # fmt: skip

    async def close(self) -> None:
        await self.conn.close()


class DalImpl:
    """The real thing, called as the bot calls it: ``db.scoped(actor).trades.ingest_fill`` (or
    ``ingest_fills``), each call its own transaction, logging as in production."""

    name = "tradebook DAL"

    def __init__(self, db: Database, logs: ProductionLogging | None = None, fmt: str = "human"):
        self.db = db
        if logs is not None:
            logs.use(fmt)

    async def transaction(self, fills: list[Fill | dict[str, Any]], user_id: int) -> None:
        trades = self.db.scoped(Actor.user(user_id)).trades
        if len(fills) == 1:
            await trades.ingest_fill(fills[0])
        else:
            await trades.ingest_fills(fills)

    async def close(self) -> None:
        pass


# --- checking that a raw implementation sends the DAL's plan ----------------------------------
async def check_same_plan(impl: Any, plan: Plan, target: Target, tag: str) -> None:
    """One raw transaction of the plan's kind, traced, against the DAL's statements."""
    fills = make_fills(target, plan.batch, tag)
    assert target.actor.user_id is not None
    impl.trace = []
    try:
        await impl.transaction(fills, target.actor.user_id)
        sent = impl.trace
    finally:
        impl.trace = None
    wanted = [(s.sql, s.style) for s in plan.statements]
    if sent != wanted:
        for i, (a, b) in enumerate(zip(sent, wanted, strict=False)):
            if a != b:
                raise CheckFailed(
                    f"{impl.name} did not send the DAL's plan: statement {i + 1} is "
                    f"{a[0][:60]!r} ({a[1]}), the DAL's {b[0][:60]!r} ({b[1]})"
                )
        raise CheckFailed(f"{impl.name} sent {len(sent)} statements, the DAL {len(wanted)}")


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
    target: float | None = None  # the ratio DAL / same-plan raw driver to reach

    def sized(self, fills: int) -> Case:
        return replace(self, fills_per_writer=fills)


@dataclass
class Outcome:
    case: Case
    rates: dict[str, list[float]] = field(default_factory=dict)  # impl → fills/s per round
    errors: dict[str, int] = field(default_factory=dict)
    loads: list[float] = field(default_factory=list)  # 1-minute load average at each round

    def median(self, impl: str) -> float:
        return median(self.rates[impl])

    def ratios(self, impl: str, base: str) -> list[float]:
        return [a / b for a, b in zip(self.rates[impl], self.rates[base], strict=True)]


async def _run_writers(impl: Any, targets: list[Target], case: Case, tag: str) -> tuple[float, int]:
    """All writers at once, each on ``impl`` (or its own from ``impl_for``); returns (seconds,
    errors). Errors are counted, not retried."""
    return await _run_each(lambda _w: impl, targets, case, tag)


async def _run_each(
    impl_for: Callable[[int], Any], targets: list[Target], case: Case, tag: str
) -> tuple[float, int]:
    """Each writer's fills are built before the clock starts, batched as transactions; then a
    full collection, so no implementation pays for the garbage of the one before."""
    errors = 0
    work = [
        [
            make_fills(t, case.batch, f"{tag}-w{w}", not case.shared_position, first=i)
            for i in range(0, case.fills_per_writer, case.batch)
        ]
        for w, t in enumerate(targets)
    ]
    gc.collect()

    async def writer(w: int, target: Target) -> None:
        nonlocal errors
        impl = impl_for(w)
        user_id = target.actor.user_id
        assert user_id is not None  # make_targets' actors are users
        for transaction in work[w]:
            try:
                await impl.transaction(transaction, user_id)
            except Exception as exc:  # counted: the bench reports them
                errors += 1
                if errors == 1:
                    print(f"    first error ({impl.name}): {exc!r}")

    loop = asyncio.get_running_loop()
    start = loop.time()
    await asyncio.gather(*(writer(w, t) for w, t in enumerate(targets)))
    return loop.time() - start, errors


class Engine:
    """What the cases of one engine share: the database, users, instrument, captured plans."""

    def __init__(self, bdb: BenchDb, db: Database, logs: ProductionLogging | None) -> None:
        self.bdb, self.db, self.logs = bdb, db, logs
        self.actors: list[Actor] = []
        self.iid = 0
        self.plans: dict[int, Plan] = {}

    async def prepare(self) -> None:
        self.actors = await make_users(self.db, list(range(900001, 900009)))
        self.iid = await make_instrument(self.db, "BENCHUSDT")
        for batch in (1, 100):
            (target,) = await make_targets(self.db, self.actors[:1], self.iid, f"plan{batch}")
            self.plans[batch] = await capture_plan(self.db, target, batch, f"plan{batch}")
            raw = await self._raw(batch)
            try:
                (target,) = await make_targets(self.db, self.actors[:1], self.iid, f"same{batch}")
                await check_same_plan(raw, self.plans[batch], target, f"same{batch}")
            finally:
                await raw.close()
        print(f"  {self.bdb.engine}: the raw driver sends the DAL's statements (1 fill, 100 fills)")

    async def _raw(self, batch: int) -> Any:
        plan = self.plans[batch]
        if self.bdb.engine == "sqlite":
            return SamePlanSqlite3(self.bdb.raw["path"], plan)
        return await SamePlanAsyncpg(self.bdb.raw, plan).open()

    async def run_round(self, case: Case, impl_name: str) -> tuple[float, int, int]:
        """One run of one implementation: (seconds, errors, fills)."""
        tag = f"r{next(_runs)}"
        targets = await make_targets(
            self.db, self.actors[: case.writers], self.iid, tag, shared=case.shared_position
        )
        if impl_name.startswith("dal"):
            fmt = "json" if impl_name == "dal-json" else "human"
            seconds, errors = await _run_writers(
                DalImpl(self.db, self.logs, fmt), targets, case, tag
            )
        else:
            raws = [await self._raw(case.batch) for _ in range(case.writers)]
            try:
                seconds, errors = await _run_each(lambda w: raws[w], targets, case, tag)
            finally:
                for raw in raws:
                    await raw.close()
        expected: dict[int, int] = {}
        for target in targets:  # the opening fill, and each writer's fills
            expected[target.portfolio_id] = expected.get(target.portfolio_id, 1) + (
                case.fills_per_writer
            )
        await check_portfolios(self.db, expected)  # raises CheckFailed
        return seconds, errors, case.writers * case.fills_per_writer


def cases(engine: str, scale: float) -> list[Case]:
    def n(x: int, batch: int = 1) -> int:
        return max(batch, int(x * scale) // batch * batch)

    if engine == "sqlite":
        return [
            Case(
                engine, "1 fill/tx", 1, 1, n(3000), impls=["dal", "dal-json", "sqlite3"],
                target=0.5,
            ),
            Case(
                engine, "100 fills/tx", 1, 100, n(20000, 100), impls=["dal", "dal-json", "sqlite3"],
                target=0.75,
            ),
            Case(engine, "8 writers, one position", 8, 1, n(300), True, impls=["dal"]),
        ]  # fmt: skip
    return [
        Case(engine, "1 fill/tx", 1, 1, n(1500), impls=["dal", "dal-json", "asyncpg"], target=0.8),
        Case(engine, "100 fills/tx", 1, 100, n(6000, 100), impls=["dal", "dal-json", "asyncpg"]),
        Case(
            engine, "8 writers, own positions", 8, 1, n(300), impls=["dal", "asyncpg"],
            target=0.85,
        ),
        Case(
            engine, "8 writers, one position", 8, 1, n(200), True, impls=["dal", "asyncpg"],
            target=0.9,
        ),
    ]  # fmt: skip


async def bench_engine(
    bdb: BenchDb, scale: float, rounds: int = ROUNDS, logs: ProductionLogging | None = None
) -> list[Outcome]:
    db = Database(bdb.url)
    try:
        engine = Engine(bdb, db, logs)
        await engine.prepare()
        out = []
        for case in cases(bdb.engine, scale):
            outcome = Outcome(case)
            for r in range(rounds):
                load = os.getloadavg()[0]
                outcome.loads.append(load)
                for impl in case.impls:
                    seconds, errors, fills = await engine.run_round(case, impl)
                    rate = fills / seconds
                    outcome.rates.setdefault(impl, []).append(rate)
                    outcome.errors[impl] = outcome.errors.get(impl, 0) + errors
                    if errors:
                        raise CheckFailed(f"{case.engine} {case.name} {impl}: {errors} errors")
                    print(
                        f"  {case.engine:10} {case.name:26} {impl:8} round {r + 1}: "
                        f"{rate:8.0f} fills/s  (check ok; load {load:.2f})"
                    )
            out.append(outcome)
        return out
    finally:
        await db.dispose()
