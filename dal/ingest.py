"""Fill ingestion: trades → orders → positions → PnL summary → audit, in the caller's
transaction, idempotent on the broker's trade id.

One code path serves one fill (``ingest_fill``) and a batch (``ingest_fills``), and its
statements are set-based, so a batch of 100 fills costs about as many statements as one fill
(README, "DAL design"). For fills of known orders on one position the plan is: check the
portfolio, lock the orders, lock the position, insert the trades (``ON CONFLICT DO NOTHING``
on the idempotency key, ``RETURNING`` what was inserted), add them to the PnL summary, update
the orders, update the position, insert the audit rows — 8 statements, however many fills.

Position math runs in Python on the locked rows before the insert, assuming every fill is new
and in time order. Where that assumption fails for a position — a fill older than one already
applied (a late fill), a replayed fill mixed with new ones, or ids not in the order of the
fills — the position is re-derived from its trades instead (``rederive_position``), which also
corrects the trades' realized PnL and the summary. A batch with nothing new writes nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from decimal import Decimal, localcontext

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from dal import schema as t
from dal.accounts import owned_portfolio_fast
from dal.errors import Conflict, InvalidInput, NotFound
from dal.instruments import resolve_instrument
from dal.models import Fill
from dal.pnl_summary import Entry, add_to_summary, remember_zone
from dal.position_math import FillResult, PositionState, apply_fill
from dal.positions import PositionKey, lock_position, rederive_position, state_of, write_position
from dal.scope import Tx
from dal.strategies import owned_strategy
from dal.types import DECIMAL_CONTEXT, new_uid, quantize18

trades = t.trades
orders = t.orders
log = logging.getLogger("tradebook.ingest")

_TRADE_CONFLICT_TARGET = [trades.c.portfolio_id, trades.c.instrument_id, trades.c.broker_trade_id]
# Fields a replay must repeat exactly; anything else under the same broker trade id conflicts.
_REPLAY_FIELDS = ("side", "quantity", "price", "fee", "fee_currency", "exec_time", "order_id")


@dataclass(frozen=True)
class IngestResult:
    trade: sa.Row
    replayed: bool  # True when this fill had been ingested before (nothing changed)


# Statements of the hot path, built once (see dal/positions.py).
_INSERT_TRADES = {
    name: dialect_insert(trades)
    .on_conflict_do_nothing(index_elements=_TRADE_CONFLICT_TARGET)
    .returning(*trades.c)
    for name, dialect_insert in (("sqlite", sqlite.insert), ("postgresql", postgresql.insert))
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
_UPDATE_ORDER = orders.update().where(orders.c.id == sa.bindparam("order_id"))


@dataclass
class _Planned:
    """One fill on its way in: what it refers to, and what it became."""

    fill: Fill
    portfolio: sa.Row
    instrument: sa.Row
    order: sa.Row | None
    strategy_id: int | None
    uid: str
    key: PositionKey
    result: FillResult | None = None
    trade: sa.Row | None = None
    replayed: bool = False


@dataclass
class _OrderFill:
    """An order's fill state as this batch advances it."""

    filled: Decimal
    avg_price: Decimal | None
    status: str


def ingest(tx: Tx, fills: list[Fill]) -> list[IngestResult]:
    """Ingest parsed fills in the caller's transaction; one result per fill, in order."""
    planned = _plan(tx, fills)
    keys = sorted({p.key for p in planned}, key=_order)
    positions = {key: lock_position(tx, key) for key in keys}
    _progress(planned, positions)
    _insert_trades(tx, planned)
    new = [p for p in planned if not p.replayed]
    if not new:
        return [IngestResult(p.trade, True) for p in planned]  # type: ignore[arg-type]

    for portfolio_id, entries in _summary_entries(new).items():
        add_to_summary(tx, portfolio_id, entries)
    _advance_orders(tx, new)
    rederived, late = _write_positions(tx, planned, positions)
    if rederived:
        # Their realized PnL may have changed: hand back (and audit) the rows as stored now.
        fixed = {
            row.id: row
            for row in tx.conn.execute(_TRADES_BY_ID, {"ids": [p.trade.id for p in rederived]})  # type: ignore[union-attr]
        }
        for p in rederived:
            p.trade = fixed[p.trade.id]  # type: ignore[union-attr]
    _audit_and_log(tx, new, late)
    return [IngestResult(p.trade, p.replayed) for p in planned]  # type: ignore[arg-type]


def _order(key: PositionKey) -> tuple[int, int, int]:
    return (key[0], key[1], key[2] or 0)


def _plan(tx: Tx, fills: list[Fill]) -> list[_Planned]:
    """Check every reference in scope (portfolio, instrument, order, strategy); lock orders."""
    portfolios: dict[int, sa.Row] = {}
    for fill in fills:
        if fill.portfolio_id not in portfolios:
            portfolio = owned_portfolio_fast(tx, fill.portfolio_id, writable=True)
            portfolios[fill.portfolio_id] = portfolio
            if "owner_timezone" in portfolio._mapping:
                remember_zone(tx, portfolio.id, portfolio.owner_timezone)
    instruments = [
        resolve_instrument(tx, fill.instrument_id, fill.symbol, fill.exchange) for fill in fills
    ]
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
            strategy_id = order.strategy_id
        elif strategy_id is not None and strategy_id not in strategies_checked:
            strategy = owned_strategy(tx, strategy_id)
            if strategy.user_id != portfolio.user_id:
                raise NotFound(f"no strategy #{strategy_id}")
            strategies_checked.add(strategy_id)
        key = (portfolio.id, instrument.id, strategy_id)
        planned.append(_Planned(fill, portfolio, instrument, order, strategy_id, new_uid(), key))
    return planned


def _lock_orders(conn: sa.Connection, order_ids: list[int]) -> list[sa.Row]:
    if not order_ids:
        return []
    if len(order_ids) == 1:  # the common case, without re-rendering an expanding IN
        return list(conn.execute(_LOCK_ORDER, {"order_id": order_ids[0]}))
    return list(conn.execute(_LOCK_ORDERS, {"ids": order_ids}))


def _progress(planned: list[_Planned], positions: dict[PositionKey, sa.Row]) -> None:
    """Each fill's position math, in batch order per position, assuming all are new."""
    states: dict[PositionKey, PositionState] = {}
    for p in planned:
        key = p.key
        state = states.get(key)
        if state is None:
            state = state_of(positions[key])
        f = p.fill
        p.result = apply_fill(state, f.side, f.quantity, f.price, f.exec_time)
        states[key] = p.result.state


def _insert_trades(tx: Tx, planned: list[_Planned]) -> None:
    """One multi-row insert; a fill it skipped (its broker trade id exists) is a replay."""
    conn = tx.conn
    params = [
        {
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
            "realized_pnl": p.result.realized,  # type: ignore[union-attr]
            "exec_time": p.fill.exec_time,
            "broker_trade_id": p.fill.broker_trade_id,
            "meta_json": p.fill.meta,
        }
        for p in planned
    ]
    statement = _INSERT_TRADES[conn.dialect.name]
    if len(params) == 1:
        inserted = {row.uid: row for row in conn.execute(statement, params[0])}
    else:
        inserted = {row.uid: row for row in conn.execute(statement, params)}
    for p in planned:
        p.trade = inserted.get(p.uid)
        if p.trade is None:
            p.trade = _replayed(conn, p)
            p.replayed = True


def _replayed(conn: sa.Connection, p: _Planned) -> sa.Row:
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


def _summary_entries(new: list[_Planned]) -> dict[int, list[Entry]]:
    entries: dict[int, list[Entry]] = {}
    for p in new:
        f = p.fill
        entries.setdefault(p.portfolio.id, []).append(
            Entry(p.instrument.id, f.exec_time, f.fee_currency, p.result.realized, f.fee, 1)  # type: ignore[union-attr]
        )
    return entries


def _order_after_fill(state: _OrderFill, order: sa.Row, quantity: Decimal, price: Decimal) -> None:
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
        previous = state.avg_price or Decimal(0)
        state.avg_price = quantize18((previous * state.filled + quantity * price) / filled)
        state.filled = filled
    if filled == order.quantity:
        state.status = "FILLED"
    elif order.status not in ("CANCELED", "EXPIRED"):
        state.status = "PARTIALLY_FILLED"
    # else: a fill that happened before the cancel but arrived after it keeps the status.


def _advance_orders(tx: Tx, new: list[_Planned]) -> None:
    states: dict[int, _OrderFill] = {}
    for p in new:
        order = p.order
        if order is None:
            continue
        state = states.get(order.id)
        if state is None:
            state = states[order.id] = _OrderFill(
                order.filled_quantity, order.avg_fill_price, order.status
            )
        _order_after_fill(state, order, p.fill.quantity, p.fill.price)
    now = tx.now()
    params = [
        {
            "order_id": order_id,
            "filled_quantity": state.filled,
            "avg_fill_price": state.avg_price,
            "status": state.status,
            "updated_at": now,
        }
        for order_id, state in states.items()
    ]
    if params:
        tx.conn.execute(_UPDATE_ORDER, params if len(params) > 1 else params[0])


def _write_positions(
    tx: Tx, planned: list[_Planned], positions: dict[PositionKey, sa.Row]
) -> tuple[list[_Planned], set[int]]:
    """Write each position the batch changed. Returns the fills whose position was re-derived
    from its trades instead (late fills, replays mixed with new fills, ids out of order) and
    the ``id()`` of the late fills (older than one their position had already seen)."""
    by_key: dict[PositionKey, list[_Planned]] = {}
    for p in planned:
        by_key.setdefault(p.key, []).append(p)
    rederived: list[_Planned] = []
    late: set[int] = set()
    for key, group in by_key.items():
        new = [p for p in group if not p.replayed]
        if not new:
            continue
        position = positions[key]
        seen = position.last_exec_time
        for p in new:
            if seen is not None and p.fill.exec_time < seen:
                late.add(id(p))
            else:
                seen = p.fill.exec_time
        if not late.intersection(map(id, new)) and _applied_in_order(position, group):
            last = new[-1]
            write_position(
                tx,
                position.id,
                last.result.state,  # type: ignore[union-attr]
                last.fill.exec_time,
                last.trade.id,  # type: ignore[union-attr]
            )
        else:
            # Replay the position's trades in canonical order (exec_time, id), fixing per-trade
            # realized PnL and the summary on the way.
            rederive_position(tx, key, position.id)
            rederived.extend(new)
    return rederived, late


def _applied_in_order(position: sa.Row, group: list[_Planned]) -> bool:
    """True when applying ``group`` (no late fill in it) in batch order is what re-deriving
    would do: no replay among new fills, trade ids ascending in batch order."""
    last_id = position.last_trade_id or 0
    for p in group:
        if p.replayed or p.trade.id <= last_id:  # type: ignore[union-attr]
            return False
        last_id = p.trade.id  # type: ignore[union-attr]
    return True


def _audit_and_log(tx: Tx, new: list[_Planned], late: set[int]) -> None:
    tx.audit_many(
        "TRADE",
        "FILL",
        [
            (
                p.trade.id,  # type: ignore[union-attr]
                {
                    "trade_uid": p.uid,
                    "order_id": p.order.id if p.order is not None else None,
                    "broker_trade_id": p.fill.broker_trade_id,
                    "side": p.fill.side,
                    "symbol": p.instrument.symbol,
                    "quantity": p.fill.quantity,
                    "price": p.fill.price,
                    "realized_pnl": p.trade.realized_pnl,  # type: ignore[union-attr]
                    "late": id(p) in late,
                },
                p.portfolio.user_id,
            )
            for p in new
        ],
    )
    for p in new:
        log.info(
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
                "trade_id": p.trade.id,  # type: ignore[union-attr]
                "portfolio_id": p.portfolio.id,
                "late": id(p) in late,
            },
        )


def _correlation_id(order: sa.Row | None, fill: Fill) -> str:
    if order is not None:
        return order.client_order_id or order.uid
    return fill.broker_trade_id or "manual-fill"


__all__ = ["IngestResult", "ingest"]
