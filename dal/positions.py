"""Materialized positions: locked read-modify-write per fill, recompute, verify, repair.

Every position change goes through ``position_math.apply_fill``; ``recompute`` replays the
trades through the same arithmetic (``step_in_context``, which ``apply_fill`` wraps) in
canonical order (exec_time, id), so ``verify`` can demand exact equality.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, localcontext
from operator import itemgetter
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from dal import checkpoints
from dal import schema as t
from dal.checkpoints import Checkpoint, starts_new_day
from dal.compiled import DriverStatement
from dal.decimals import DECIMAL_CONTEXT
from dal.ownership import owned_portfolio
from dal.pnl_summary import (
    DailyDifference,
    Entry,
    SummaryDifference,
    lock_owner,
    rebuild_summary,
    verify_summary,
)
from dal.position_math import (
    PositionState,
    apply_fill,
    canonical_amount,
    canonical_state,
    reduced_opened_at,
    step_in_context,
)
from dal.scope import Tx, long_running, read_only
from dal.types import Money, new_uid, trimmed_on_postgresql

positions = t.positions
trades = t.trades

PositionKey = tuple[int, int, int | None]  # (portfolio_id, instrument_id, strategy_id)


def _key_clause(key: PositionKey) -> sa.ColumnElement[bool]:
    portfolio_id, instrument_id, strategy_id = key
    strategy_match = (
        positions.c.strategy_id.is_(None)
        if strategy_id is None
        else positions.c.strategy_id == strategy_id
    )
    return sa.and_(
        positions.c.portfolio_id == portfolio_id,
        positions.c.instrument_id == instrument_id,
        strategy_match,
    )


# The conflict target repeats the unique index's expression; on SQLite the literal 0 must be
# rendered inline (a bound parameter makes SQLite refuse the target).
_POSITION_CONFLICT_TARGET = [
    positions.c.portfolio_id,
    positions.c.instrument_id,
    sa.func.coalesce(positions.c.strategy_id, sa.literal_column("0")),
]
# Hot-path statements are built once: building a statement per call costs more than running it.
_CREATE_POSITION = {
    name: dialect_insert(positions).on_conflict_do_nothing(index_elements=_POSITION_CONFLICT_TARGET)
    for name, dialect_insert in (("sqlite", sqlite.insert), ("postgresql", postgresql.insert))
}
_LOCK_BY_KEY = sa.select(positions).where(
    positions.c.portfolio_id == sa.bindparam("portfolio_id"),
    positions.c.instrument_id == sa.bindparam("instrument_id"),
)
_LOCK_MANUAL = _LOCK_BY_KEY.where(positions.c.strategy_id.is_(None)).with_for_update()
_LOCK_STRATEGY = _LOCK_BY_KEY.where(
    positions.c.strategy_id == sa.bindparam("strategy_id")
).with_for_update()
_UPDATE_POSITION = DriverStatement(
    positions.update().where(positions.c.id == sa.bindparam("position_id")),
    column_keys=[
        "position_id", "last_trade_id", "quantity", "cost_basis", "avg_price", "realized_pnl",
        "opened_at", "last_exec_time", "updated_at",
    ],
)  # fmt: skip


def position_lock_order(key: PositionKey) -> tuple[int, int, int]:
    """Positions are locked in this order (the unique index's: a manual position is 0)."""
    return (key[0], key[1], key[2] or 0)


def lock_position(tx: Tx, key: PositionKey) -> sa.Row[Any]:
    """The position row for ``key``, created flat if missing, locked for this transaction
    (``SELECT … FOR UPDATE`` on PostgreSQL; SQLite's BEGIN IMMEDIATE already serializes).
    Creating it with ON CONFLICT DO NOTHING first closes the race on a row that does not
    exist yet, which FOR UPDATE alone cannot lock."""
    conn = tx.conn
    portfolio_id, instrument_id, strategy_id = key
    params = {"portfolio_id": portfolio_id, "instrument_id": instrument_id}
    if strategy_id is None:
        query = _LOCK_MANUAL
    else:
        query, params["strategy_id"] = _LOCK_STRATEGY, strategy_id
    row = conn.execute(query, params).one_or_none()
    if row is not None:
        return row
    conn.execute(
        _CREATE_POSITION[conn.dialect.name],
        {
            "uid": new_uid(),
            "portfolio_id": portfolio_id,
            "instrument_id": instrument_id,
            "strategy_id": strategy_id,
            "quantity": Decimal(0),
            "updated_at": tx.now(),
        },
    )
    return conn.execute(query, params).one()


def state_of(row: sa.Row[Any]) -> PositionState:
    return PositionState(row.quantity, row.cost_basis, row.realized_pnl, row.opened_at)


def position_values(
    state: PositionState, last_exec_time: dt.datetime | None, now: dt.datetime
) -> dict[str, Any]:
    """What a position row stores of ``state`` (besides ``last_trade_id``)."""
    return {
        "quantity": state.quantity,
        "cost_basis": state.cost_basis,
        "avg_price": state.avg_price,
        "realized_pnl": state.realized_pnl,
        "opened_at": state.opened_at,
        "last_exec_time": last_exec_time,
        "updated_at": now,
    }


def write_position(
    tx: Tx,
    position_id: int,
    state: PositionState,
    last_exec_time: dt.datetime | None,
    last_trade_id: int | None,
) -> None:
    _UPDATE_POSITION.execute(
        tx.conn,
        {
            "position_id": position_id,
            "last_trade_id": last_trade_id,
            **position_values(state, last_exec_time, tx.now()),
        },
    )


# What a replay reads of each trade, and what checking a trade's stored PnL (and the PnL
# summary) adds. recompute reads only the first: each Money column costs a Decimal
# conversion per row.
_REPLAYED = (
    trades.c.id,
    trades.c.portfolio_id,
    trades.c.instrument_id,
    trades.c.strategy_id,
    trades.c.side,
    trades.c.quantity,
    trades.c.price,
    trades.c.exec_time,
)
_CHECKED = (
    *_REPLAYED,
    trades.c.realized_pnl,
    trades.c.fee,
    trades.c.fee_currency,
    trades.c.position_opened_at,
)


def _trades_in_canonical_order(
    conn: sa.Connection,
    portfolio_id: int,
    key: PositionKey | None = None,
    columns: tuple[sa.Column[Any], ...] = _CHECKED,
) -> Sequence[sa.Row[Any]]:
    dialect = conn.dialect.name
    query = (
        sa.select(
            *(
                trimmed_on_postgresql(c, dialect) if isinstance(c.type, Money) else c
                for c in columns
            )
        )
        .where(trades.c.portfolio_id == portfolio_id)
        .order_by(trades.c.exec_time, trades.c.id)
    )
    if key is not None:
        _, instrument_id, strategy_id = key
        query = query.where(
            trades.c.instrument_id == instrument_id,
            trades.c.strategy_id.is_(None)
            if strategy_id is None
            else trades.c.strategy_id == strategy_id,
        )
    return conn.execute(query).all()


def _replay_after_statement(dialect: str, manual: bool) -> sa.Select[Any]:
    """A position's trades after the point (exec_time, trade_id) in canonical order: the
    exec_time range first, so both engines read it from the (portfolio_id, exec_time) index."""
    after = sa.bindparam("exec_time", type_=trades.c.exec_time.type)
    return (
        sa.select(
            *(
                trimmed_on_postgresql(c, dialect) if isinstance(c.type, Money) else c
                for c in _CHECKED
            )
        )
        .where(
            trades.c.portfolio_id == sa.bindparam("portfolio_id"),
            trades.c.exec_time >= after,
            sa.or_(trades.c.exec_time > after, trades.c.id > sa.bindparam("trade_id")),
            trades.c.instrument_id == sa.bindparam("instrument_id"),
            trades.c.strategy_id.is_(None)
            if manual
            else trades.c.strategy_id == sa.bindparam("strategy_id"),
        )
        .order_by(trades.c.exec_time, trades.c.id)
    )


_REPLAY_AFTER = {
    (dialect, manual): _replay_after_statement(dialect, manual)
    for dialect in ("sqlite", "postgresql")
    for manual in (True, False)
}


def _trades_after(
    conn: sa.Connection, key: PositionKey, after: Checkpoint
) -> Sequence[sa.Row[Any]]:
    portfolio_id, instrument_id, strategy_id = key
    params: dict[str, Any] = {
        "portfolio_id": portfolio_id,
        "instrument_id": instrument_id,
        "exec_time": after.exec_time,
        "trade_id": after.trade_id,
    }
    if strategy_id is not None:
        params["strategy_id"] = strategy_id
    return conn.execute(_REPLAY_AFTER[conn.dialect.name, strategy_id is None], params).all()


@dataclass
class Derived:
    """A position as its trades say it should be."""

    state: PositionState
    last_exec_time: dt.datetime | None
    last_trade_id: int | None
    trade_realized: dict[int, Decimal]  # trade id → realized PnL of that fill
    # trade id → when the position that fill reduced was opened (fills that reduced one)
    trade_opened_at: dict[int, dt.datetime] = field(default_factory=dict)
    # With ``derive(…, new_days=True)``: the state before each trade that begins a later UTC
    # day than the trade before it (the checkpoints ingestion writes), in canonical order.
    checkpoints: list[Checkpoint] = field(default_factory=list)
    # With ``derive(…, points=…)``: trade id → the state after it (and its exec_time).
    at_points: dict[int, Checkpoint] = field(default_factory=dict)


def derive(
    rows: Sequence[sa.Row[Any]],
    start: dict[PositionKey, Checkpoint] | None = None,
    *,
    new_days: bool = False,
    points: Collection[int] = (),
) -> dict[PositionKey, Derived]:
    """Replay trades (already in canonical order) per position key through apply_fill's
    arithmetic, from flat or, for a key in ``start``, from that checkpoint (the rows are then
    the trades after it). ``new_days`` also collects the day checkpoints the replay passes
    (``Derived.checkpoints``: not the starting one); ``points`` (trade ids) the state after
    each of those trades (``Derived.at_points``)."""
    out: dict[PositionKey, Derived] = {}
    start_ids: dict[PositionKey, int] = {}
    for key, checkpoint in (start or {}).items():
        out[key] = Derived(checkpoint.state, checkpoint.exec_time, checkpoint.trade_id, {})
        start_ids[key] = checkpoint.trade_id
    if not rows:
        return out
    # By position, not by name: a Row's attribute lookup costs more than the arithmetic
    # around it when a portfolio-year of trades is replayed.
    fields = rows[0]._fields
    replayed = itemgetter(*(fields.index(c.name) for c in _REPLAYED))
    with localcontext(DECIMAL_CONTEXT):  # once for all fills (apply_fill enters it per fill)
        for row in rows:
            trade_id, portfolio_id, instrument_id, strategy_id, side, quantity, price, at = (
                replayed(row)
            )
            key = (portfolio_id, instrument_id, strategy_id)
            current = out.get(key)
            if current is None:
                current = out[key] = Derived(PositionState(), None, None, {})
            if (
                new_days
                and current.last_trade_id is not None
                and starts_new_day(current.last_exec_time, at)
                and (key not in start_ids or start_ids[key] != current.last_trade_id)
            ):
                assert current.last_exec_time is not None  # set with last_trade_id
                current.checkpoints.append(
                    Checkpoint(
                        current.last_exec_time,
                        current.last_trade_id,
                        canonical_state(current.state),
                    )
                )
            opened_at = reduced_opened_at(current.state, side)
            if opened_at is not None:
                current.trade_opened_at[trade_id] = opened_at
            current.state, realized = step_in_context(current.state, side, quantity, price, at)
            current.last_exec_time = at
            current.last_trade_id = trade_id
            current.trade_realized[trade_id] = canonical_amount(realized)
            if points and trade_id in points:
                current.at_points[trade_id] = Checkpoint(
                    at, trade_id, canonical_state(current.state)
                )
        for derived in out.values():
            derived.state = canonical_state(derived.state)
    return out


def reduced_positions_opened_at(conn: sa.Connection, portfolio_id: int) -> dict[int, dt.datetime]:
    """Trade id → when the position it reduced was opened, for every reducing trade of the
    portfolio, from a replay (migration 0011 fills ``trades.position_opened_at`` with it)."""
    derived = derive(_trades_in_canonical_order(conn, portfolio_id, None, _REPLAYED))
    return {k: v for d in derived.values() for k, v in d.trade_opened_at.items()}


_FIX_TRADE = (
    trades.update()
    .where(trades.c.id == sa.bindparam("trade_id"))
    .values(
        realized_pnl=sa.bindparam("realized_pnl", type_=trades.c.realized_pnl.type),
        position_opened_at=sa.bindparam(
            "position_opened_at", type_=trades.c.position_opened_at.type
        ),
    )
)


def rederive_position(
    tx: Tx, key: PositionKey, position_id: int, since: tuple[dt.datetime, int] | None = None
) -> list[Entry]:
    """Re-derive one position from its trades (after a late fill) and fix per-trade PnL.
    ``since`` is the earliest point (exec_time, trade id) in canonical order that may have
    changed (the earliest new trade): the replay resumes from the position's latest checkpoint
    before it, or from its first trade when it has none (or for None: a repair). The
    checkpoints from ``since`` on are written again from the replay. Returns the corrections
    the PnL summary needs (the same differences): the caller adds them, in the lock order of
    its transaction."""
    conn = tx.conn
    resume = None if since is None else checkpoints.latest_before(conn, position_id, *since)
    if resume is None:
        rows = _trades_in_canonical_order(conn, key[0], key)
        derived = derive(rows, new_days=True).get(key)
    else:
        rows = _trades_after(conn, key, resume)
        derived = derive(rows, {key: resume}, new_days=True)[key]
    if derived is None:
        derived = Derived(PositionState(), None, None, {})
    corrections: list[Entry] = []
    fixes: list[dict[str, Any]] = []
    for row in rows:
        realized = derived.trade_realized[row.id]
        opened_at = derived.trade_opened_at.get(row.id)
        if row.realized_pnl != realized or row.position_opened_at != opened_at:
            fixes.append(
                {"trade_id": row.id, "realized_pnl": realized, "position_opened_at": opened_at}
            )
            corrections.append(
                Entry.correction(
                    row.instrument_id,
                    row.exec_time,
                    row.fee_currency,
                    row.realized_pnl,
                    realized,
                    row.position_opened_at,
                    opened_at,
                )
            )
    if fixes:
        conn.execute(_FIX_TRADE, fixes if len(fixes) > 1 else fixes[0])
    # Dropped from the resumed point on (what the replay passed is written again below).
    checkpoints.drop_from(conn, position_id, None if resume is None else since)
    checkpoints.write(conn, position_id, derived.checkpoints)
    write_position(tx, position_id, derived.state, derived.last_exec_time, derived.last_trade_id)
    return corrections


@dataclass(frozen=True)
class Difference:
    portfolio_id: int
    instrument_id: int
    strategy_id: int | None
    field: str
    stored: Any
    expected: Any

    def __str__(self) -> str:
        # "trade:ID" is a trade's realized PnL, "trade:ID:COLUMN" another of its columns.
        parts = self.field.split(":")
        what = self.field
        if len(parts) > 1:
            what = f"trade #{parts[1]} {parts[2] if len(parts) > 2 else 'realized_pnl'}"
        return (
            f"portfolio #{self.portfolio_id} instrument #{self.instrument_id} strategy "
            f"{self.strategy_id or '-'}: {what} is {self.stored}, trades say {self.expected}"
        )


@dataclass(frozen=True)
class CheckpointDifference:
    """A position checkpoint that differs from the replay of the trades at its point."""

    portfolio_id: int
    instrument_id: int
    strategy_id: int | None
    as_of_exec_time: dt.datetime
    as_of_trade_id: int
    field: str  # a state column, or "as_of" (no trade of the position at that point)
    stored: Any
    expected: Any

    def __str__(self) -> str:
        where = (
            f"portfolio #{self.portfolio_id} instrument #{self.instrument_id} strategy "
            f"{self.strategy_id or '-'}: checkpoint as of trade #{self.as_of_trade_id} "
            f"({self.as_of_exec_time.isoformat()})"
        )
        if self.field == "as_of":
            return f"{where}: no such trade of this position at that time ({self.expected})"
        return f"{where}: {self.field} is {self.stored}, trades say {self.expected}"


_COMPARED = ("quantity", "cost_basis", "avg_price", "realized_pnl", "opened_at")
_CHECKPOINT_COMPARED = ("quantity", "cost_basis", "realized_pnl", "opened_at")


# What verify finds: a position, checkpoint, summary or daily row that differs from the trades.
Mismatch = Difference | CheckpointDifference | SummaryDifference | DailyDifference


def _verify_checkpoints(
    stored: Sequence[sa.Row[Any]], expected: dict[PositionKey, Derived]
) -> list[CheckpointDifference]:
    differences: list[CheckpointDifference] = []
    for row in stored:
        key = (row.portfolio_id, row.instrument_id, row.strategy_id)
        point = (row.as_of_exec_time, row.as_of_trade_id)
        derived = expected.get(key)
        replayed = derived.at_points.get(row.as_of_trade_id) if derived is not None else None
        if replayed is None or replayed.exec_time != row.as_of_exec_time:
            found = "none" if replayed is None else f"it was at {replayed.exec_time.isoformat()}"
            differences.append(CheckpointDifference(*key, *point, "as_of", None, found))
            continue
        for name in _CHECKPOINT_COMPARED:
            have, want = getattr(row, name), getattr(replayed.state, name)
            if have != want:
                differences.append(CheckpointDifference(*key, *point, name, have, want))
    return differences


def verify_portfolio(conn: sa.Connection, portfolio_id: int) -> list[Mismatch]:
    """Stored positions, their checkpoints, per-trade realized PnL and the PnL summary against
    the trades (replayed from the first)."""
    rows = _trades_in_canonical_order(conn, portfolio_id)
    stored_checkpoints = checkpoints.stored(conn, portfolio_id)
    expected = derive(rows, points={r.as_of_trade_id for r in stored_checkpoints})
    differences: list[Mismatch] = []
    stored_realized = {row.id: row.realized_pnl for row in rows}
    stored_opened = {row.id: row.position_opened_at for row in rows}
    for key, derived in expected.items():
        for trade_id, realized in derived.trade_realized.items():
            if stored_realized[trade_id] != realized:
                differences.append(
                    Difference(*key, f"trade:{trade_id}", stored_realized[trade_id], realized)
                )
            opened_at = derived.trade_opened_at.get(trade_id)
            if stored_opened[trade_id] != opened_at:
                differences.append(
                    Difference(
                        *key, f"trade:{trade_id}:position_opened_at", stored_opened[trade_id],
                        opened_at,
                    )
                )  # fmt: skip
    materialized = {
        (r.portfolio_id, r.instrument_id, r.strategy_id): r
        for r in conn.execute(sa.select(positions).where(positions.c.portfolio_id == portfolio_id))
    }
    for key in sorted(set(expected) | set(materialized), key=lambda k: (k[1], k[2] or 0)):
        want = expected[key].state if key in expected else PositionState()
        have = materialized.get(key)
        for name in _COMPARED:
            want_value = getattr(want, name)
            have_value = getattr(have, name) if have is not None else getattr(PositionState(), name)
            if have is None and not want.quantity and not want.realized_pnl:
                continue  # a flat position with no row and no PnL is the same thing
            if have_value != want_value:
                differences.append(Difference(*key, name, have_value, want_value))
    differences.extend(_verify_checkpoints(stored_checkpoints, expected))
    return [*differences, *verify_summary(conn, portfolio_id, rows)]


class PositionService:
    def __init__(self, tx: Tx) -> None:
        self.tx = tx

    apply_fill = staticmethod(apply_fill)

    @read_only
    def snapshot(self, portfolio_id: int, include_flat: bool = False) -> list[sa.Row[Any]]:
        """Positions of a portfolio with symbol, currency and strategy, by symbol."""
        owned_portfolio(self.tx, portfolio_id)
        query = (
            sa.select(
                positions,
                t.instruments.c.symbol,
                t.instruments.c.exchange,
                t.instruments.c.currency,
                t.strategies.c.name.label("strategy_name"),
                t.strategies.c.version.label("strategy_version"),
            )
            .join(t.instruments, t.instruments.c.id == positions.c.instrument_id)
            .outerjoin(t.strategies, t.strategies.c.id == positions.c.strategy_id)
            .where(positions.c.portfolio_id == portfolio_id)
            .order_by(t.instruments.c.symbol, positions.c.strategy_id)
        )
        rows = list(self.tx.conn.execute(query))
        if not include_flat:
            rows = [r for r in rows if r.quantity]
        return rows

    @long_running
    def recompute(self, portfolio_id: int) -> dict[PositionKey, PositionState]:
        """Positions derived from the portfolio's trades, from the first (nothing is written,
        no checkpoint is read)."""
        owned_portfolio(self.tx, portfolio_id)
        derived = derive(_trades_in_canonical_order(self.tx.conn, portfolio_id, None, _REPLAYED))
        return {key: d.state for key, d in derived.items()}

    @long_running
    def verify(self, portfolio_id: int | None = None) -> list[Mismatch]:
        """Every difference between the materialized rows and the trades (empty = consistent).
        Without a portfolio: every portfolio in scope (all of them in admin scope)."""
        if portfolio_id is not None:
            owned_portfolio(self.tx, portfolio_id)
            ids = [portfolio_id]
        else:
            ids = list(
                self.tx.conn.execute(
                    sa.select(t.portfolios.c.id)
                    .where(self.tx.owned(t.portfolios.c.user_id))
                    .order_by(t.portfolios.c.id)
                ).scalars()
            )
        differences: list[Mismatch] = []
        for pid in ids:
            differences.extend(verify_portfolio(self.tx.conn, pid))
        return differences

    @long_running
    def repair(self, portfolio_id: int) -> list[Mismatch]:
        """Rewrite a portfolio's positions (with their checkpoints), per-trade PnL and PnL
        summary from its trades; audited."""
        portfolio = owned_portfolio(self.tx, portfolio_id)
        lock_owner(self.tx.conn, portfolio.user_id)  # no fill of theirs between read and rewrite
        differences = verify_portfolio(self.tx.conn, portfolio_id)
        if not differences:
            return []
        keys = {
            (d.portfolio_id, d.instrument_id, d.strategy_id)
            for d in differences
            if isinstance(d, Difference | CheckpointDifference)
        }
        for key in sorted(keys, key=position_lock_order):
            # From the first trade, its checkpoints dropped and written again.
            rederive_position(self.tx, key, lock_position(self.tx, key).id)
        rebuild_summary(self.tx.conn, portfolio_id)  # the summary's corrections included
        self.tx.audit(
            "POSITION",
            None,
            "REPAIR",
            {"portfolio_id": portfolio_id, "differences": [str(d) for d in differences[:50]]},
            user_id=portfolio.user_id,
        )
        return differences
