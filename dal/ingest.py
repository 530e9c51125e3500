"""Fill ingestion: trades → orders → positions → PnL summary → audit, in the caller's
transaction, idempotent on the broker's trade id.

One code path serves one fill (``ingest_fill``) and a batch (``ingest_fills``), and its
statements are set-based, so a batch of 100 fills costs about as many statements as one fill
(docs/architecture.md, "Fills"). For fills of known orders on one position the plan is: check the
portfolio, lock the orders, lock the position, insert the trades (``ON CONFLICT DO NOTHING``
on the idempotency key, ``RETURNING`` what was inserted), add them to the PnL summary and the
daily series, update the orders, update the position, insert the audit rows — 9 statements,
however many fills.

Position math runs in Python on the locked rows before the insert, assuming every fill is new
and in time order. Where that assumption fails for a position — a fill older than one already
applied (a late fill), a replayed fill mixed with new ones, or ids not in the order of the
fills — the position is re-derived from its trades instead (``rederive_position``), which also
corrects the trades' realized PnL and the summary. A batch with nothing new writes nothing.

A single fill of an order takes two shortcuts when it can (and the general path when it
cannot): its portfolio, order and position are read and locked by one joined statement
(``_read_at_once``), and on PostgreSQL its five writes travel as one statement
(``_write_one_fill_at_once``): 4 round trips per fill with BEGIN and COMMIT.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from decimal import Decimal, localcontext
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from dal import checkpoints
from dal import schema as t
from dal.audit import audit_row_of
from dal.compiled import DriverStatement, row_type
from dal.decimals import DECIMAL_CONTEXT, NOTIONAL_CONTEXT, average_price
from dal.errors import Conflict, InvalidInput, NotFound
from dal.instruments import resolve_instrument
from dal.models import Fill, valid_id
from dal.orders import owned_order_by_client_id
from dal.ownership import (
    OF_APPROVED_OWNER,
    PortfolioRow,
    one_statement_check,
    owned_portfolio,
    owner_params,
)
from dal.pnl_summary import (
    Entry,
    add_to_summary,
    adding_to_existing_rows,
    daily_summary_rows,
    lock_owner_zones,
    owner_zone,
    remember_zone,
    summarize,
    summarize_daily,
    summary_rows,
)
from dal.position_math import FillResult, PositionState, apply_fill
from dal.positions import (
    PositionKey,
    lock_position,
    position_lock_order,
    position_values,
    rederive_position,
    state_of,
    write_position,
)
from dal.scope import Tx
from dal.strategies import owned_strategy
from dal.types import new_uid

trades = t.trades
orders = t.orders
log = logging.getLogger("tradebook.ingest")

_TRADE_CONFLICT_TARGET = [trades.c.portfolio_id, trades.c.instrument_id, trades.c.broker_trade_id]
# What a fill's trade row is inserted with (the rest are the table's defaults).
_TRADE_COLUMNS = [
    "uid", "portfolio_id", "instrument_id", "strategy_id", "order_id", "side", "quantity",
    "price", "fee", "fee_currency", "realized_pnl", "exec_time", "broker_trade_id",
    "position_opened_at", "meta_json",
]  # fmt: skip
# Fields a replay must repeat exactly; anything else under the same broker trade id conflicts.
_REPLAY_FIELDS = ("side", "quantity", "price", "fee", "fee_currency", "exec_time", "order_id")


@dataclass(frozen=True)
class IngestResult:
    trade: sa.Row[Any]
    replayed: bool  # True when this fill had been ingested before (nothing changed)


# Statements of the hot path, built once (see dal/positions.py).
_INSERT_TRADES = {
    name: dialect_insert(trades)
    .on_conflict_do_nothing(index_elements=_TRADE_CONFLICT_TARGET)
    .returning(*trades.c)
    for name, dialect_insert in (("sqlite", sqlite.insert), ("postgresql", postgresql.insert))
}
_INSERT_ONE_TRADE = {
    name: DriverStatement(statement, column_keys=_TRADE_COLUMNS, dialect=name)
    for name, statement in _INSERT_TRADES.items()
}
_TRADES_BY_ID = sa.select(trades).where(trades.c.id.in_(sa.bindparam("ids", expanding=True)))
_LOCK_ORDER = sa.select(orders).where(orders.c.id == sa.bindparam("order_id")).with_for_update()
# Sorted, so concurrent transactions lock orders in the same order (no deadlock on PostgreSQL).
_LOCK_ORDERS = (
    sa.select(orders)
    .where(orders.c.id.in_(sa.bindparam("ids", expanding=True)))
    .order_by(orders.c.id)
    .with_for_update()
)
_ORDER_FILL_STATE = ("filled_quantity", "avg_fill_price", "fill_notional", "status", "updated_at")


def _broker_id_if_none(parameter: str) -> dict[str, Any]:
    """An order update's value of ``broker_order_id``: the fill's (the bound ``parameter``) if
    the order has none (_plan refuses a fill naming another one)."""
    given = sa.bindparam(parameter, type_=orders.c.broker_order_id.type)
    return {"broker_order_id": sa.func.coalesce(orders.c.broker_order_id, given)}


_UPDATE_ORDER = DriverStatement(
    orders.update()
    .where(orders.c.id == sa.bindparam("order_id"))
    .values(_broker_id_if_none("broker_order_id")),
    column_keys=["order_id", *_ORDER_FILL_STATE],
)


# A fill on its way in, one stage at a time: what it refers to (planned), its position math
# (priced), then its stored trade (written). Each stage is a new value, never assigned to
# after it is made (not frozen: a frozen dataclass costs several times more to build, per fill).
@dataclass(slots=True)
class _Planned:
    fill: Fill
    portfolio: sa.Row[Any]
    instrument: sa.Row[Any]
    order: sa.Row[Any] | None
    strategy_id: int | None
    uid: str  # the new trade's uid: also this fill's identity within the batch
    key: PositionKey


@dataclass(slots=True)
class _Priced(_Planned):
    result: FillResult  # applied to the position as if every fill of the batch were new

    @classmethod
    def of(cls, p: _Planned, result: FillResult) -> _Priced:
        return cls(p.fill, p.portfolio, p.instrument, p.order, p.strategy_id, p.uid, p.key, result)


@dataclass(slots=True)
class _Written(_Priced):
    trade: sa.Row[Any]  # as stored now
    replayed: bool  # the broker trade id was stored before: this fill changed nothing

    @classmethod
    def of_priced(cls, p: _Priced, trade: sa.Row[Any], replayed: bool) -> _Written:
        return cls(
            p.fill, p.portfolio, p.instrument, p.order, p.strategy_id, p.uid, p.key, p.result,
            trade, replayed,
        )  # fmt: skip


@dataclass
class _OrderFill:
    """An order's fill state as this batch advances it."""

    filled: Decimal
    notional: Decimal  # Σ quantity × price of the fills so far, exact
    status: str
    broker_order_id: str | None = None  # the first the batch's fills name


def ingest(tx: Tx, fills: list[Fill]) -> list[IngestResult]:
    """Ingest parsed fills in the caller's transaction; one result per fill, in order."""
    known = _read_at_once(tx, fills[0]) if len(fills) == 1 else None
    if known is not None and fills[0].order_id is None:  # found by its client order id
        fills = [fills[0].model_copy(update={"order_id": known.order.id, "client_order_id": None})]
    elif any(f.client_order_id is not None for f in fills):
        fills = _by_order_id(tx, fills)
    planned = _plan(tx, fills, known)
    keys = sorted({p.key for p in planned}, key=position_lock_order)
    positions = {
        key: known.position if known is not None else lock_position(tx, key) for key in keys
    }
    priced = _progress(planned, positions)
    if len(priced) == 1 and tx.conn.dialect.name == "postgresql":
        result = _write_one_fill_at_once(tx, priced[0], positions[keys[0]])
        if result is not None:
            return [result]
    written = _insert_trades(tx, priced)
    new = [w for w in written if not w.replayed]
    if not new:
        return [IngestResult(w.trade, True) for w in written]

    _advance_orders(tx, new)
    rederived, late, corrections = _write_positions(tx, written, positions)
    # Summary and daily rows last, portfolio by portfolio in id order: the global lock order.
    currencies = {p.instrument.id: p.instrument.currency for p in new}
    entries = _summary_entries(new)
    for portfolio_id, fixes in corrections.items():
        entries[portfolio_id].extend(fixes)
    for portfolio_id in sorted(entries):
        add_to_summary(tx, portfolio_id, entries[portfolio_id], currencies)
    if rederived:
        # Their realized PnL may have changed: hand back (and audit) the rows as stored now.
        ids = [w.trade.id for w in new if w.uid in rederived]
        fixed = {row.id: row for row in tx.conn.execute(_TRADES_BY_ID, {"ids": ids})}
        written = [
            replace(w, trade=fixed[w.trade.id]) if w.uid in rederived else w for w in written
        ]
        new = [w for w in written if not w.replayed]
    _audit_and_log(tx, new, late)
    return [IngestResult(w.trade, w.replayed) for w in written]


@dataclass(frozen=True)
class _Known:
    """What ``_read_at_once`` read and locked for one fill of an order."""

    portfolio: Any
    order: Any
    position: Any


_ORDER_ROW = row_type([c.name for c in orders.c])
_POSITION_ROW = row_type([c.name for c in t.positions.c])


def _read_statement(order: sa.ColumnElement[bool] | None = None) -> sa.Select[Any]:
    portfolios, users, positions = t.portfolios, t.users, t.positions
    return (
        sa.select(*portfolios.c, users.c.timezone, *orders.c, *positions.c)
        .select_from(
            # users joins through OF_APPROVED_OWNER's conditions
            portfolios.join(orders, orders.c.portfolio_id == portfolios.c.id).join(
                positions,
                sa.and_(
                    positions.c.portfolio_id == orders.c.portfolio_id,
                    positions.c.instrument_id == orders.c.instrument_id,
                    # The unique index's expression, literally (a bound 0 would not match it).
                    sa.func.coalesce(positions.c.strategy_id, sa.literal_column("0"))
                    == sa.func.coalesce(orders.c.strategy_id, sa.literal_column("0")),
                ),
            )
        )
        .where(
            *OF_APPROVED_OWNER,
            portfolios.c.archived_at.is_(None),
            orders.c.id == sa.bindparam("order_id") if order is None else order,
        )
        .with_for_update(of=[orders, positions])
    )


# The owner's row FOR SHARE as well (PostgreSQL), so its zone is current: lock_owner_zones.
_READ_AT_ONCE = DriverStatement(
    _read_statement().suffix_with("FOR SHARE OF users", dialect="postgresql")
)
# The same for a fill that names its order by client order id (a broker's fill).
_READ_AT_ONCE_BY_CLIENT_ID = DriverStatement(
    _read_statement(orders.c.client_order_id == sa.bindparam("client_order_id")).suffix_with(
        "FOR SHARE OF users", dialect="postgresql"
    )
)
_ROW_SPLIT = (len(t.portfolios.c) + 1, len(t.portfolios.c) + 1 + len(orders.c))


def _read_at_once(tx: Tx, fill: Fill) -> _Known | None:
    """The common single fill — of an order (by id or client order id), on a position that
    exists, by an approved user whose session has read nothing yet — checks its portfolio and
    locks its order and position in one statement instead of three. None (read nothing)
    sends it the general way, which also raises the precise error when something is
    missing."""
    if not one_statement_check(tx, fill.portfolio_id):
        return None
    by: dict[str, Any]
    if fill.client_order_id is not None:
        statement, by = _READ_AT_ONCE_BY_CLIENT_ID, {"client_order_id": fill.client_order_id}
    elif fill.order_id is not None and valid_id(fill.order_id):
        statement, by = _READ_AT_ONCE, {"order_id": fill.order_id}
    else:
        return None
    rows = statement.execute(tx.conn, {**owner_params(tx, fill.portfolio_id), **by})
    if not rows:
        return None
    row = rows[0]
    a, b = _ROW_SPLIT
    return _Known(PortfolioRow(*row[:a]), _ORDER_ROW(*row[a:b]), _POSITION_ROW(*row[b:]))


def _by_order_id(tx: Tx, fills: list[Fill]) -> list[Fill]:
    """The fills with their orders' ids for their client order ids (NotFound for one the
    fill's portfolio does not have)."""
    found: dict[tuple[int, str], int] = {}
    out = []
    for fill in fills:
        if fill.client_order_id is None:
            out.append(fill)
            continue
        key = (fill.portfolio_id, fill.client_order_id)
        if key not in found:
            order = owned_order_by_client_id(tx, *key)
            if order is None:
                raise NotFound(f"no order with client id {fill.client_order_id!r}")
            found[key] = order.id
        out.append(fill.model_copy(update={"order_id": found[key], "client_order_id": None}))
    return out


def _plan(tx: Tx, fills: list[Fill], known: _Known | None = None) -> list[_Planned]:
    """Check every reference in scope (portfolio, instrument, order, strategy); lock orders."""
    portfolios: dict[int, Any] = {}
    if known is not None:
        portfolios[known.portfolio.id] = known.portfolio
        remember_zone(tx, known.portfolio.id, known.portfolio.owner_timezone)
    for fill in fills:
        if fill.portfolio_id not in portfolios:
            portfolios[fill.portfolio_id] = owned_portfolio(tx, fill.portfolio_id, writable=True)
    if known is None:
        lock_owner_zones(tx, portfolios)
    instruments = [
        resolve_instrument(tx, fill.instrument_id, fill.symbol, fill.exchange) for fill in fills
    ]
    if known is not None:
        locked = {known.order.id: known.order}
    else:
        order_ids = sorted({fill.order_id for fill in fills if fill.order_id is not None})
        locked = {row.id: row for row in _lock_orders(tx.conn, order_ids)}
    strategies_checked: set[int] = set()
    planned = []
    for fill, instrument in zip(fills, instruments, strict=True):
        portfolio = portfolios[fill.portfolio_id]
        order = None
        strategy_id = fill.strategy_id
        if fill.order_id is not None:
            order = locked.get(fill.order_id)
            if order is None or order.portfolio_id != portfolio.id:
                raise NotFound(f"no order #{fill.order_id} in portfolio #{portfolio.id}")
            if order.instrument_id != instrument.id or order.side != fill.side:
                raise InvalidInput(
                    f"fill ({fill.side} {instrument.symbol}) does not match order #{order.id} "
                    f"({order.side} instrument #{order.instrument_id})"
                )
            if strategy_id is not None and strategy_id != order.strategy_id:
                raise InvalidInput(f"fill strategy #{strategy_id} differs from its order's")
            if fill.broker_order_id is not None and order.broker_order_id not in (
                None,
                fill.broker_order_id,
            ):
                raise Conflict(f"order #{order.id} already has broker id {order.broker_order_id!r}")
            strategy_id = order.strategy_id
        elif strategy_id is not None and strategy_id not in strategies_checked:
            strategy = owned_strategy(tx, strategy_id)
            if strategy.user_id != portfolio.user_id:
                raise NotFound(f"no strategy #{strategy_id}")
            strategies_checked.add(strategy_id)
        key = (portfolio.id, instrument.id, strategy_id)
        planned.append(_Planned(fill, portfolio, instrument, order, strategy_id, new_uid(), key))
    return planned


def _lock_orders(conn: sa.Connection, order_ids: list[int]) -> list[sa.Row[Any]]:
    if not order_ids:
        return []
    if len(order_ids) == 1:  # the common case, without re-rendering an expanding IN
        return list(conn.execute(_LOCK_ORDER, {"order_id": order_ids[0]}))
    return list(conn.execute(_LOCK_ORDERS, {"ids": order_ids}))


def _progress(planned: list[_Planned], positions: dict[PositionKey, sa.Row[Any]]) -> list[_Priced]:
    """Each fill's position math, in batch order per position, assuming all are new."""
    states: dict[PositionKey, PositionState] = {}
    priced = []
    for p in planned:
        key = p.key
        state = states.get(key)
        if state is None:
            state = state_of(positions[key])
        f = p.fill
        result = apply_fill(state, f.side, f.quantity, f.price, f.exec_time)
        states[key] = result.state
        priced.append(_Priced.of(p, result))
    return priced


def _trade_params(p: _Priced) -> dict[str, Any]:
    return {
        "uid": p.uid,
        "portfolio_id": p.portfolio.id,
        "instrument_id": p.instrument.id,
        "strategy_id": p.strategy_id,
        "order_id": p.order.id if p.order is not None else None,
        "side": p.fill.side,
        "quantity": p.fill.quantity,
        "price": p.fill.price,
        "fee": p.fill.fee,
        "fee_currency": p.fill.fee_currency,
        "realized_pnl": p.result.realized,
        "exec_time": p.fill.exec_time,
        "broker_trade_id": p.fill.broker_trade_id,
        "position_opened_at": p.result.reduced_opened_at,
        "meta_json": p.fill.meta,
    }


def _insert_trades(tx: Tx, priced: list[_Priced]) -> list[_Written]:
    """One multi-row insert; a fill it skipped (its broker trade id exists) is a replay."""
    conn = tx.conn
    params = [_trade_params(p) for p in priced]
    rows: Sequence[Any]
    if len(params) == 1:
        rows = _INSERT_ONE_TRADE[conn.dialect.name].execute(conn, params[0])
    else:
        rows = conn.execute(_INSERT_TRADES[conn.dialect.name], params).all()
    inserted = {row.uid: row for row in rows}
    written = []
    for p in priced:
        trade = inserted.get(p.uid)
        replayed = trade is None
        if trade is None:
            trade = _replayed(conn, p)
        written.append(_Written.of_priced(p, trade, replayed))
    return written


def _replayed(conn: sa.Connection, p: _Planned) -> sa.Row[Any]:
    fill = p.fill
    existing = conn.execute(
        sa.select(trades).where(
            trades.c.portfolio_id == p.portfolio.id,
            trades.c.instrument_id == p.instrument.id,
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
        "order_id": p.order.id if p.order is not None else None,
    }
    different = [f for f in _REPLAY_FIELDS if getattr(existing, f) != wanted[f]]
    if different:
        raise Conflict(
            f"trade {fill.broker_trade_id!r} was already ingested with different "
            f"{', '.join(different)}"
        )
    return existing


def _entry(p: _Priced | _Written, realized: Decimal) -> Entry:
    f = p.fill
    return Entry.of_trade(
        p.instrument.id,
        f.exec_time,
        f.fee_currency,
        f.side,
        f.quantity,
        f.price,
        realized,
        f.fee,
        p.result.reduced_opened_at,
    )


def _summary_entries(new: list[_Written]) -> dict[int, list[Entry]]:
    entries: dict[int, list[Entry]] = {}
    for p in new:
        entries.setdefault(p.portfolio.id, []).append(_entry(p, p.result.realized))
    return entries


def _order_after_fill(
    state: _OrderFill, order: sa.Row[Any], quantity: Decimal, price: Decimal
) -> None:
    """Advance an order's fill state by one fill, refusing what the order cannot take."""
    if order.status == "REJECTED":
        raise Conflict(f"order #{order.id} was rejected; it cannot be filled")
    with localcontext(DECIMAL_CONTEXT):
        filled = state.filled + quantity
        if filled > order.quantity:
            raise Conflict(
                f"fill of {quantity} overfills order #{order.id}: "
                f"{state.filled} of {order.quantity} already filled"
            )
    state.notional = NOTIONAL_CONTEXT.add(
        state.notional, NOTIONAL_CONTEXT.multiply(quantity, price)
    )
    state.filled = filled
    if filled == order.quantity:
        state.status = "FILLED"
    elif order.status not in ("CANCELED", "EXPIRED"):
        state.status = "PARTIALLY_FILLED"
    # else: a fill that happened before the cancel but arrived after it keeps the status.


def _order_updates(tx: Tx, new: Sequence[_Planned]) -> list[dict[str, Any]]:
    """The orders' new fill state after the new fills (Conflict if one cannot take them)."""
    states: dict[int, _OrderFill] = {}
    for p in new:
        order = p.order
        if order is None:
            continue
        state = states.get(order.id)
        if state is None:
            state = states[order.id] = _OrderFill(
                order.filled_quantity, order.fill_notional, order.status
            )
        _order_after_fill(state, order, p.fill.quantity, p.fill.price)
        state.broker_order_id = state.broker_order_id or p.fill.broker_order_id
    now = tx.now()
    return [
        {
            "order_id": order_id,
            "filled_quantity": state.filled,
            # Derived from all the order's fills at once: the same whatever their order.
            "avg_fill_price": average_price(state.notional, state.filled),
            "fill_notional": state.notional,
            "status": state.status,
            "updated_at": now,
            "broker_order_id": state.broker_order_id,
        }
        for order_id, state in states.items()
    ]


def _advance_orders(tx: Tx, new: list[_Written]) -> None:
    params = _order_updates(tx, new)
    if len(params) == 1:
        _UPDATE_ORDER.execute(tx.conn, params[0])
    elif params:
        _UPDATE_ORDER.executemany(tx.conn, params)


def _write_positions(
    tx: Tx, written: list[_Written], positions: dict[PositionKey, sa.Row[Any]]
) -> tuple[set[str], set[str], dict[int, list[Entry]]]:
    """Write each position the batch changed. Returns the fills (uids) whose position was
    re-derived from its trades instead (late fills, replays mixed with new fills, ids out of
    order), the late fills (older than one their position had already seen) and, per
    portfolio, the summary corrections the re-derivations found (the caller adds them)."""
    by_key: dict[PositionKey, list[_Written]] = {}
    for w in written:
        by_key.setdefault(w.key, []).append(w)
    rederived: set[str] = set()
    late: set[str] = set()
    corrections: dict[int, list[Entry]] = {}
    for key, group in by_key.items():
        new = [p for p in group if not p.replayed]
        if not new:
            continue
        position = positions[key]
        seen = position.last_exec_time
        for w in new:
            if seen is not None and w.fill.exec_time < seen:
                late.add(w.uid)
            else:
                seen = w.fill.exec_time
        if not late.intersection(w.uid for w in new) and _applied_in_order(position, group):
            last = new[-1]
            write_position(tx, position.id, last.result.state, last.fill.exec_time, last.trade.id)
            checkpoints.after_fills(
                tx, position, [(w.fill.exec_time, w.trade.id, w.result.state) for w in new]
            )
        else:
            # Replay the position's trades in canonical order (exec_time, id) from its last
            # checkpoint before the earliest new trade, fixing per-trade realized PnL and the
            # summary on the way.
            since = min((w.fill.exec_time, w.trade.id) for w in new)
            corrections.setdefault(key[0], []).extend(
                rederive_position(tx, key, position.id, since)
            )
            rederived.update(w.uid for w in new)
    return rederived, late, corrections


def _applied_in_order(position: sa.Row[Any], group: list[_Written]) -> bool:
    """True when applying ``group`` (no late fill in it) in batch order is what re-deriving
    would do: no replay among new fills, trade ids ascending in batch order."""
    last_id = position.last_trade_id or 0
    for w in group:
        if w.replayed or w.trade.id <= last_id:
            return False
        last_id = w.trade.id
    return True


def _audit_details(p: _Planned, realized: Decimal, late: bool) -> dict[str, Any]:
    return {
        "trade_uid": p.uid,
        "order_id": p.order.id if p.order is not None else None,
        "broker_trade_id": p.fill.broker_trade_id,
        "side": p.fill.side,
        "symbol": p.instrument.symbol,
        "quantity": p.fill.quantity,
        "price": p.fill.price,
        "realized_pnl": realized,
        "late": late,
    }


def _audit_and_log(tx: Tx, new: list[_Written], late: set[str]) -> None:
    tx.audit_many(
        "TRADE",
        "FILL",
        [
            (
                w.trade.id,
                _audit_details(w, w.trade.realized_pnl, w.uid in late),
                w.portfolio.user_id,
            )
            for w in new
        ],
    )
    if len(new) == 1:
        _log_fill(new[0], new[0].trade.id, new[0].uid in late)
        return
    # A batch (an import, a catch-up) is one line; the audit rows keep every fill, and the
    # line of each fill is there at DEBUG.
    correlation_ids = sorted({_correlation_id(w.order, w.fill) for w in new})
    log.info(
        "fills applied (in transaction): %d, %d late",
        len(new),
        len(late),
        extra={
            "correlation_ids": correlation_ids[:BATCH_LOG_IDS],
            "orders": len(correlation_ids),
            "trade_ids": f"{min(w.trade.id for w in new)}..{max(w.trade.id for w in new)}",
            "portfolio_ids": sorted({w.portfolio.id for w in new}),
        },
    )
    if log.isEnabledFor(logging.DEBUG):
        for w in new:
            _log_fill(w, w.trade.id, w.uid in late, logging.DEBUG)


# How many of a batch's correlation ids its log line names.
BATCH_LOG_IDS = 10


def _log_fill(p: _Planned, trade_id: int, late: bool, level: int = logging.INFO) -> None:
    log.log(
        level,
        "fill applied (in transaction) %s %s %s at %s",
        p.fill.side,
        p.fill.quantity,
        p.instrument.symbol,
        p.fill.price,
        extra={
            # The correlation id follows the order through the logs: its client id (the
            # strategies' and the bot's), else its uid; a fill without an order uses its
            # own broker trade id.
            "correlation_id": _correlation_id(p.order, p.fill),
            "trade_id": trade_id,
            "portfolio_id": p.portfolio.id,
            "late": late,
        },
    )


# --- PostgreSQL: the writes of one fill in one statement ------------------------------------
# On PostgreSQL every statement is a network round trip. Data-modifying CTEs let the writes
# of a fill (trade, summary day and month rows, daily row, order, position, audit) travel as
# one statement: the trade insert runs first in the WITH list and every other write is
# conditional on it having inserted a row, so a replay (ON CONFLICT DO NOTHING) writes
# nothing at all, exactly like the general path.
_POSITION_VALUES = list(position_values(PositionState(), None, dt.datetime.now(dt.UTC)))


def _prefixed(prefix: str, params: dict[str, Any]) -> dict[str, Any]:
    return {f"{prefix}{name}": value for name, value in params.items()}


def _fused_statement(with_order: bool) -> sa.Select[Any]:
    summary, daily = t.pnl_summary, t.pnl_daily
    new_trade = (
        postgresql.insert(trades)
        .values({c.name: sa.bindparam(f"t_{c.name}") for c in trades.c if c.name != "id"})
        .on_conflict_do_nothing(index_elements=_TRADE_CONFLICT_TARGET)
        .returning(*trades.c)
        .cte("new_trade")
    )
    inserted = sa.exists(sa.select(new_trade.c.id))

    def upsert_of_params(table: sa.Table, prefix: str, name: str, after: Any) -> Any:
        """The adding upsert of one row given as parameters ``{prefix}{column}``, written only
        when ``after`` holds."""
        columns = [c.name for c in table.c]
        row = sa.select(*(sa.bindparam(f"{prefix}{c}", type_=table.c[c].type) for c in columns))
        insert = postgresql.insert(table).from_select(columns, row.where(after))
        upsert = adding_to_existing_rows(insert).returning(table.c.portfolio_id)  # type: ignore[attr-defined]  # the PostgreSQL Insert it builds has .returning
        return upsert.cte(name)

    # PostgreSQL runs independent data-modifying CTEs in an order of its own choosing (today
    # the reverse of the WITH list). Each summary upsert waits for the previous one's row, so
    # the rows are locked in the global order (docs/architecture.md, "Lock order"): the DAY
    # row, the MONTH row, then the daily row, as the general path locks them.
    day = upsert_of_params(summary, "day_", "summary_day", inserted)
    month = upsert_of_params(summary, "month_", "summary_month", _wrote(day))
    writes = [day, month, upsert_of_params(daily, "daily_", "daily_row", _wrote(month))]
    if with_order:
        writes.append(
            orders.update()
            .where(orders.c.id == sa.bindparam("o_order_id"), inserted)
            .values(
                {
                    **{name: sa.bindparam(f"o_{name}") for name in _ORDER_FILL_STATE},
                    **_broker_id_if_none("o_broker_order_id"),
                }
            )
            .cte("order_update")
        )
    positions = t.positions
    writes.append(
        positions.update()
        .where(positions.c.id == sa.bindparam("p_position_id"), inserted)
        .values(
            {
                **{name: sa.bindparam(f"p_{name}") for name in _POSITION_VALUES},
                "last_trade_id": sa.select(new_trade.c.id).scalar_subquery(),
            }
        )
        .cte("position_update")
    )
    writes.append(audit_row_of("TRADE", new_trade.c.id, sa.literal("FILL")).cte("audit_row"))
    return sa.select(new_trade).add_cte(*writes)


def _wrote(cte: Any) -> sa.Exists:
    return sa.exists(sa.select(cte.c.portfolio_id))


_FUSED = {
    with_order: DriverStatement(_fused_statement(with_order), dialect="postgresql")
    for with_order in (False, True)
}


def _write_one_fill_at_once(tx: Tx, p: _Priced, position: sa.Row[Any]) -> IngestResult | None:
    """One fill's writes as one statement; None when the general path must do it (a late fill
    re-derives its position; the first fill of a UTC day writes a checkpoint; an order that
    refuses the fill may be a replay's)."""
    f = p.fill
    if position.last_exec_time is not None and f.exec_time < position.last_exec_time:
        return None
    if checkpoints.starts_new_day(position.last_exec_time, f.exec_time):
        return None  # a position's first fill of a day also writes a checkpoint
    try:
        order_updates = _order_updates(tx, [p])
    except Conflict:
        return None
    result = p.result
    now = tx.now()
    entry = _entry(p, result.realized)
    params = _prefixed("t_", _trade_params(p))
    zone = owner_zone(tx, p.portfolio.id)
    totals = summarize([entry], zone)  # its DAY row, then its MONTH row
    for prefix, row in zip(("day_", "month_"), summary_rows(p.portfolio.id, totals), strict=True):
        params.update(_prefixed(prefix, row))
    (day_total,) = daily_summary_rows(
        p.portfolio.id, summarize_daily([entry], zone, {p.instrument.id: p.instrument.currency})
    )
    params.update(_prefixed("daily_", day_total))
    if order_updates:
        params.update(_prefixed("o_", order_updates[0]))
    params.update(_prefixed("p_", position_values(result.state, f.exec_time, now)))
    params.update(
        {
            "p_position_id": position.id,
            "a_user_id": p.portfolio.user_id,
            "a_details": _audit_details(p, result.realized, False),
            "a_created_at": now,
        }
    )
    rows = _FUSED[bool(order_updates)].execute(tx.conn, params)
    if not rows:
        return IngestResult(_replayed(tx.conn, p), True)
    (trade,) = rows
    _log_fill(p, trade.id, False)
    return IngestResult(trade, False)


def _correlation_id(order: sa.Row[Any] | None, fill: Fill) -> str:
    if order is not None:
        return str(order.client_order_id or order.uid)
    return fill.broker_trade_id or "manual-fill"


__all__ = ["IngestResult", "ingest"]
