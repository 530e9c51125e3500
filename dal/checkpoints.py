"""Position checkpoints: a position's state as of a point in canonical trade order
(exec_time, trade id), so that a late fill replays only the trades after the last checkpoint
before it instead of the position's whole history (docs/architecture.md, "Fills").

A checkpoint is written when a position's fills cross into a new UTC day: the state as of
the last trade of the day before (what the position row held before the first fill of the
new day), at most one row per position and day. UTC days, not the owner's: a checkpoint is
a point in the trade order and must not move when the owner changes time zone.

A checkpoint as of (time, id) holds for as long as no trade sorts before that point. A late
fill (or any fill that sorts before trades already applied) invalidates the checkpoints from
its own point on: ``rederive_position`` (dal/positions.py) resumes from the latest valid one,
drops the others and writes again those its replay passes. Rows are written only by whoever
holds the position's lock (the fill transaction, a repair), so they need no lock of their
own. ``verify`` checks every row against a replay from zero; ``repair`` rewrites them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import sqlalchemy as sa

from dal import schema as t
from dal.position_math import PositionState
from dal.scope import Tx
from dal.types import UTCDateTime

checkpoints = t.position_checkpoints


class Checkpoint(NamedTuple):
    """A position's state after the trade (exec_time, trade_id) and every trade before it."""

    exec_time: dt.datetime
    trade_id: int
    state: PositionState


def utc_day(at: dt.datetime) -> dt.date:
    return (at if at.tzinfo is dt.UTC else at.astimezone(dt.UTC)).date()


def starts_new_day(last_exec_time: dt.datetime | None, exec_time: dt.datetime) -> bool:
    """True when a fill at ``exec_time``, applied after ``last_exec_time``, is a position's
    first of a later UTC day: a checkpoint of the position before it is due."""
    return last_exec_time is not None and utc_day(exec_time) > utc_day(last_exec_time)


def before_new_days(
    last_exec_time: dt.datetime | None,
    last_trade_id: int | None,
    last_state: PositionState,
    steps: Iterable[tuple[dt.datetime, int, PositionState]],
) -> list[Checkpoint]:
    """The checkpoints due when ``steps`` — (exec_time, trade id, state after it), in
    canonical order — are applied to a position whose last applied trade was
    (``last_exec_time``, ``last_trade_id``) with ``last_state``: the state before each step
    that falls on a later UTC day than the step before it."""
    out: list[Checkpoint] = []
    day = None if last_exec_time is None else utc_day(last_exec_time)
    for exec_time, trade_id, state in steps:
        this_day = utc_day(exec_time)
        if day is not None and this_day > day and last_exec_time is not None:
            assert last_trade_id is not None  # a position with a last fill has its id
            out.append(Checkpoint(last_exec_time, last_trade_id, last_state))
        day, last_exec_time, last_trade_id, last_state = this_day, exec_time, trade_id, state
    return out


# What a checkpoint holds: its point in canonical order and the position's state there.
_POINT_AND_STATE = (
    checkpoints.c.as_of_exec_time,
    checkpoints.c.as_of_trade_id,
    checkpoints.c.quantity,
    checkpoints.c.cost_basis,
    checkpoints.c.realized_pnl,
    checkpoints.c.opened_at,
)
_EXEC_TIME = sa.bindparam("exec_time", type_=UTCDateTime())
_TRADE_ID: sa.BindParameter[int] = sa.bindparam("trade_id", type_=sa.BigInteger())
_POSITION = checkpoints.c.position_id == sa.bindparam("position_id")
# The latest checkpoint strictly before the point (exec_time, trade_id) in canonical order,
# written so both engines probe the primary key's range on (position, exec_time).
_LATEST_BEFORE = (
    sa.select(*_POINT_AND_STATE)
    .where(
        _POSITION,
        checkpoints.c.as_of_exec_time <= _EXEC_TIME,
        sa.or_(
            checkpoints.c.as_of_exec_time < _EXEC_TIME, checkpoints.c.as_of_trade_id < _TRADE_ID
        ),
    )
    .order_by(checkpoints.c.as_of_exec_time.desc(), checkpoints.c.as_of_trade_id.desc())
    .limit(1)
)
# Every checkpoint at or after the point: what a trade sorting there makes wrong.
_DROP_FROM = checkpoints.delete().where(
    _POSITION,
    checkpoints.c.as_of_exec_time >= _EXEC_TIME,
    sa.or_(checkpoints.c.as_of_exec_time > _EXEC_TIME, checkpoints.c.as_of_trade_id >= _TRADE_ID),
)
_DROP_ALL = checkpoints.delete().where(_POSITION)
_INSERT = checkpoints.insert()


def latest_before(
    conn: sa.Connection, position_id: int, exec_time: dt.datetime, trade_id: int
) -> Checkpoint | None:
    """The position's latest checkpoint that sorts before (exec_time, trade_id), if any."""
    row = conn.execute(
        _LATEST_BEFORE,
        {"position_id": position_id, "exec_time": exec_time, "trade_id": trade_id},
    ).one_or_none()
    if row is None:
        return None
    return Checkpoint(
        row.as_of_exec_time,
        row.as_of_trade_id,
        PositionState(row.quantity, row.cost_basis, row.realized_pnl, row.opened_at),
    )


def drop_from(conn: sa.Connection, position_id: int, since: tuple[dt.datetime, int] | None) -> None:
    """Delete the position's checkpoints at or after ``since`` (all of them for None)."""
    if since is None:
        conn.execute(_DROP_ALL, {"position_id": position_id})
    else:
        conn.execute(
            _DROP_FROM, {"position_id": position_id, "exec_time": since[0], "trade_id": since[1]}
        )


def checkpoint_values(position_id: int, checkpoint: Checkpoint) -> dict[str, Any]:
    state = checkpoint.state
    return {
        "position_id": position_id,
        "as_of_exec_time": checkpoint.exec_time,
        "as_of_trade_id": checkpoint.trade_id,
        "quantity": state.quantity,
        "cost_basis": state.cost_basis,
        "realized_pnl": state.realized_pnl,
        "opened_at": state.opened_at,
    }


def write(conn: sa.Connection, position_id: int, due: Sequence[Checkpoint]) -> None:
    """Insert checkpoints of one position (one statement)."""
    if not due:
        return
    params = [checkpoint_values(position_id, c) for c in due]
    conn.execute(_INSERT, params if len(params) > 1 else params[0])


def after_fills(
    tx: Tx, position: Any, steps: Sequence[tuple[dt.datetime, int, PositionState]]
) -> None:
    """After fills applied in order to ``position`` (the locked row as it was before them):
    write the checkpoints they make due, if any."""
    if not steps or not starts_new_day_within(position.last_exec_time, steps):
        return
    write(
        tx.conn,
        position.id,
        before_new_days(
            position.last_exec_time,
            position.last_trade_id,
            PositionState(
                position.quantity, position.cost_basis, position.realized_pnl, position.opened_at
            ),
            steps,
        ),
    )


def starts_new_day_within(
    last_exec_time: dt.datetime | None, steps: Sequence[tuple[dt.datetime, int, PositionState]]
) -> bool:
    """Whether any of ``steps`` (in canonical order) begins a later UTC day (the steps are
    in time order, so comparing the first and the last day decides it)."""
    if last_exec_time is None:
        first = steps[0][0]
        return utc_day(steps[-1][0]) > utc_day(first)
    return utc_day(steps[-1][0]) > utc_day(last_exec_time)


_STORED = (
    sa.select(
        t.positions.c.portfolio_id,
        t.positions.c.instrument_id,
        t.positions.c.strategy_id,
        *_POINT_AND_STATE,
    )
    .join(t.positions, t.positions.c.id == checkpoints.c.position_id)
    .where(t.positions.c.portfolio_id == sa.bindparam("portfolio_id"))
    .order_by(t.positions.c.id, checkpoints.c.as_of_exec_time, checkpoints.c.as_of_trade_id)
)


def stored(conn: sa.Connection, portfolio_id: int) -> list[sa.Row[Any]]:
    """Every checkpoint of the portfolio's positions, with the position's key."""
    return list(conn.execute(_STORED, {"portfolio_id": portfolio_id}))


__all__ = [
    "Checkpoint",
    "after_fills",
    "before_new_days",
    "drop_from",
    "latest_before",
    "starts_new_day",
    "stored",
    "utc_day",
    "write",
]
