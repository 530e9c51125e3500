"""Position checkpoints: written as a position's fills cross UTC days, used by late fills to
replay only the trades after the last one before them, checked by verify, rewritten by
repair — always equal to a replay from the first trade."""

from __future__ import annotations

import datetime as dt
import itertools
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import AsyncEngine

from dal import positions as positions_module
from dal import schema as t
from dal.checkpoints import utc_day
from dal.database import Database
from dal.models import Fill
from dal.position_math import PositionState, replay
from dal.positions import CheckpointDifference
from dal.scope import Actor
from tests.conftest import captured_statements
from tests.factories import T0, fill, make_instrument, make_portfolio, make_user

HOUR = dt.timedelta(hours=1)
DAY = dt.timedelta(days=1)


async def _trades(engine: AsyncEngine, pid: int) -> list[sa.Row[Any]]:
    async with engine.connect() as conn:
        return list(
            await conn.execute(
                sa.select(t.trades)
                .where(t.trades.c.portfolio_id == pid)
                .order_by(t.trades.c.exec_time, t.trades.c.id)
            )
        )


async def _checkpoints(engine: AsyncEngine, pid: int) -> list[sa.Row[Any]]:
    async with engine.connect() as conn:
        return list(
            await conn.execute(
                sa.select(t.position_checkpoints)
                .join(t.positions, t.positions.c.id == t.position_checkpoints.c.position_id)
                .where(t.positions.c.portfolio_id == pid)
                .order_by(
                    t.position_checkpoints.c.as_of_exec_time,
                    t.position_checkpoints.c.as_of_trade_id,
                )
            )
        )


async def assert_checkpoints_are_the_replay(engine: AsyncEngine, pid: int) -> int:
    """Every checkpoint of the portfolio's (one) position equals an independent replay of its
    trades from the first (position_math.replay) at its point; returns how many there are."""
    rows = await _trades(engine, pid)
    results = replay([(r.side, r.quantity, r.price, r.exec_time) for r in rows])
    after = {r.id: (r.exec_time, res.state) for r, res in zip(rows, results, strict=True)}
    stored = await _checkpoints(engine, pid)
    for cp in stored:
        at, state = after[cp.as_of_trade_id]
        assert cp.as_of_exec_time == at
        assert PositionState(cp.quantity, cp.cost_basis, cp.realized_pnl, cp.opened_at) == state
    # ingestion writes one wherever consecutive trades (in canonical order) cross a UTC day
    # (a late fill may leave one more, still right, at the end of the day it landed in)
    crossings = {
        a.id for a, b in itertools.pairwise(rows) if utc_day(b.exec_time) > utc_day(a.exec_time)
    }
    assert crossings <= {cp.as_of_trade_id for cp in stored}
    return len(stored)


# --- random sequences --------------------------------------------------------------------------
# One step of a scenario: ("new", minutes forward, side, qty, price) — an in-order fill (0
# minutes: the same exec_time as the last one, a tie); ("late", minutes back, side, qty,
# price) — older than the newest fill (back to before the first with a big number; 0: the
# same time as the newest, which sorts after it by id); ("tie", k) — a new fill at the exact
# exec_time of the k-th trade so far; ("replay", k) — the k-th fill sent again.
sides = st.sampled_from(["BUY", "SELL"])
qtys = st.integers(1, 12).map(lambda n: Decimal(n) / 4)
prices = st.integers(9_000, 11_000).map(lambda n: Decimal(n) / 100)
forward = st.sampled_from([0, 1, 7, 60, 600, 1440, 1441, 2 * 1440 + 5, 4 * 1440])
back = st.sampled_from([0, 1, 30, 600, 1440, 1440 + 30, 3 * 1440, 100 * 1440])
step = st.one_of(
    st.tuples(st.just("new"), forward, sides, qtys, prices),
    st.tuples(st.just("late"), back, sides, qtys, prices),
    st.tuples(st.just("tie"), st.integers(0, 1000), sides, qtys, prices),
    st.tuples(st.just("replay"), st.integers(0, 1000)),
)
# Steps grouped into transactions: one fill (ingest_fill) or a batch (ingest_fills).
scenario = st.lists(st.lists(step, min_size=1, max_size=4), min_size=1, max_size=14)


def _fills(
    groups: list[list[tuple[Any, ...]]], pid: int, inst: int
) -> list[list[Fill | dict[str, Any]]]:
    sent: list[dict[str, Any]] = []
    out = []
    newest = T0 + dt.timedelta(hours=20)  # near the end of a UTC day: crossings come soon
    for group in groups:
        batch: list[Fill | dict[str, Any]] = []
        for s in group:
            kind = s[0]
            if kind == "replay" and sent:
                batch.append(dict(sent[s[1] % len(sent)]))
                continue
            if kind == "replay":
                continue
            _, n, side, qty, price = s
            if kind == "new" or not sent:
                newest = newest + dt.timedelta(minutes=n if kind == "new" else 0)
                at = newest
            elif kind == "late":
                at = newest - dt.timedelta(minutes=n)
            else:  # a tie with an earlier fill's exec_time
                at = sent[n % len(sent)]["exec_time"]
            f = fill(pid, inst, side, str(qty), str(price), at=at, trade_id=f"T{len(sent)}")
            f["fee"], f["fee_currency"] = Decimal("0.01"), "USDT"
            sent.append(f)
            batch.append(f)
        if batch:
            out.append(batch)
    return out


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(groups=scenario)
async def test_random_fills_with_late_ones_equal_a_replay_from_zero(
    db: Database, engine: AsyncEngine, groups: list[list[tuple[Any, ...]]]
) -> None:
    actor = await make_user(db)
    pid, inst = await make_portfolio(db, actor), await make_instrument(db)
    dal = db.scoped(actor)
    for batch in _fills(groups, pid, inst):
        if len(batch) == 1:
            await dal.trades.ingest_fill(batch[0])
        else:
            await dal.trades.ingest_fills(batch)
    # positions, per-trade PnL and opening times, summary and daily rows, and every
    # checkpoint, against a replay from the first trade
    assert await dal.positions.verify(pid) == []
    await assert_checkpoints_are_the_replay(engine, pid)


# --- examples ----------------------------------------------------------------------------------
async def _days_of_fills(db: Database, actor: Actor, pid: int, inst: int, days: int) -> None:
    """Four fills a day (buy, buy, sell, buy at rising prices) for ``days`` days, one by one."""
    dal = db.scoped(actor)
    for d in range(days):
        for k, side in enumerate(("BUY", "BUY", "SELL", "BUY")):
            at = T0 + d * DAY + k * HOUR
            price = str(100 + 4 * d + k)
            await dal.trades.ingest_fill(
                fill(pid, inst, side, "1", price, at=at, trade_id=f"{d}-{k}")
            )


async def test_fills_write_one_checkpoint_per_position_and_new_day(
    db: Database, engine: AsyncEngine
) -> None:
    actor = await make_user(db)
    pid, inst = await make_portfolio(db, actor), await make_instrument(db)
    await _days_of_fills(db, actor, pid, inst, 4)
    stored = await _checkpoints(engine, pid)
    rows = await _trades(engine, pid)
    # as of the last trade of each day but the last (single fills, also on PostgreSQL's
    # one-statement path, which leaves a day's first fill to the general path)
    assert [cp.as_of_trade_id for cp in stored] == [rows[4 * d + 3].id for d in range(3)]
    assert await assert_checkpoints_are_the_replay(engine, pid) == 3
    # a batch crossing two days writes both
    await db.scoped(actor).trades.ingest_fills(
        [
            fill(pid, inst, "SELL", "1", "150", at=T0 + 4 * DAY + HOUR * k, trade_id=f"b{k}")
            for k in (0, 24, 25, 48)
        ]
    )
    assert len(await _checkpoints(engine, pid)) == 6
    assert await assert_checkpoints_are_the_replay(engine, pid) == 6
    assert await db.scoped(actor).positions.verify(pid) == []


async def test_a_late_fill_replays_only_the_trades_after_the_checkpoint_before_it(
    db: Database, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    actor = await make_user(db)
    pid, inst = await make_portfolio(db, actor), await make_instrument(db)
    await _days_of_fills(db, actor, pid, inst, 10)  # 40 trades, a checkpoint each night
    replayed: list[int] = []
    derive = positions_module.derive

    def counting(rows: Any, *args: Any, **kw: Any) -> Any:
        replayed.append(len(rows))
        return derive(rows, *args, **kw)

    monkeypatch.setattr(positions_module, "derive", counting)
    late = fill(pid, inst, "BUY", "1", "90", at=T0 + 8 * DAY + 90 * dt.timedelta(minutes=1))
    late["broker_trade_id"] = "late"
    with captured_statements(db) as sent:
        result = await db.scoped(actor).trades.ingest_fill(late)
    # From the checkpoint at the end of day 7: day 8's four trades, the late one, day 9's four.
    assert replayed == [9]
    trade_reads = [
        s for s, _ in sent if "FROM trades" in s and "ORDER BY trades.exec_time" in s
    ]  # the replay's read, with a lower bound
    assert len(trade_reads) == 1 and "trades.exec_time >=" in trade_reads[0], trade_reads
    monkeypatch.setattr(positions_module, "derive", derive)
    async with db.session(actor) as s:
        assert await s.positions.verify(pid) == []
        assert (await s.trades.get(result.trade.id)).realized_pnl == 0
    assert await assert_checkpoints_are_the_replay(engine, pid) >= 9


async def test_without_checkpoints_a_late_fill_replays_from_the_first_trade_and_writes_them(
    db: Database, engine: AsyncEngine
) -> None:
    """A database from before migration 0013 has no checkpoints: the first late fill replays
    the whole position, as before, and leaves its checkpoints behind."""
    actor = await make_user(db)
    pid, inst = await make_portfolio(db, actor), await make_instrument(db)
    await _days_of_fills(db, actor, pid, inst, 5)
    async with engine.begin() as conn:
        await conn.execute(t.position_checkpoints.delete())
    await db.scoped(actor).trades.ingest_fill(
        fill(
            pid,
            inst,
            "SELL",
            "2",
            "95",
            at=T0 + 2 * DAY + 30 * dt.timedelta(minutes=1),
            trade_id="late",
        )
    )
    assert await db.scoped(actor).positions.verify(pid) == []
    assert await assert_checkpoints_are_the_replay(engine, pid) == 4


async def test_a_late_fill_before_every_checkpoint_and_several_in_one_batch(
    db: Database, engine: AsyncEngine
) -> None:
    actor = await make_user(db)
    pid, inst = await make_portfolio(db, actor), await make_instrument(db)
    await _days_of_fills(db, actor, pid, inst, 4)
    first = (await _trades(engine, pid))[0]
    dal = db.scoped(actor)
    await dal.trades.ingest_fills(
        [
            fill(pid, inst, "SELL", "3", "99", at=T0 - HOUR, trade_id="before-all"),
            fill(pid, inst, "BUY", "1", "101", at=first.exec_time, trade_id="tie-first"),
            fill(pid, inst, "SELL", "1", "120", at=T0 + 5 * DAY, trade_id="new-day"),
            fill(pid, inst, "BUY", "2", "97", at=T0 + 2 * DAY + 2 * HOUR, trade_id="mid"),
            fill(pid, inst, "SELL", "1", "130", at=T0 + 3 * DAY, trade_id="T3-0-dup"),
        ]
    )
    # replays mixed with new fills re-derive too
    await dal.trades.ingest_fills(
        [
            fill(pid, inst, "SELL", "1", "120", at=T0 + 5 * DAY, trade_id="new-day"),
            fill(pid, inst, "BUY", "1", "111", at=T0 + 5 * DAY + HOUR, trade_id="after"),
        ]
    )
    assert await dal.positions.verify(pid) == []
    assert await assert_checkpoints_are_the_replay(engine, pid) >= 4


async def test_verify_reports_a_wrong_checkpoint_and_repair_rewrites_it(
    db: Database, engine: AsyncEngine
) -> None:
    actor = await make_user(db)
    pid, inst = await make_portfolio(db, actor), await make_instrument(db)
    await _days_of_fills(db, actor, pid, inst, 3)
    (cp, *_) = await _checkpoints(engine, pid)
    async with engine.begin() as conn:
        await conn.execute(
            t.position_checkpoints.update()
            .where(t.position_checkpoints.c.as_of_trade_id == cp.as_of_trade_id)
            .values(cost_basis=Decimal("1"))
        )
        await conn.execute(
            t.position_checkpoints.insert().values(
                position_id=cp.position_id,
                as_of_exec_time=cp.as_of_exec_time + HOUR,
                as_of_trade_id=cp.as_of_trade_id,
                quantity=cp.quantity,
                cost_basis=cp.cost_basis,
                realized_pnl=cp.realized_pnl,
                opened_at=cp.opened_at,
            )
        )
    async with db.session(actor) as s:
        differences = await s.positions.verify(pid)
        assert all(isinstance(d, CheckpointDifference) for d in differences), differences
        assert sorted(d.field for d in differences if isinstance(d, CheckpointDifference)) == [
            "as_of",
            "cost_basis",
        ]
        assert "cost_basis is 1, trades say" in " ".join(map(str, differences))
        assert await s.positions.repair(pid) == differences
        assert await s.positions.verify(pid) == []
    assert await assert_checkpoints_are_the_replay(engine, pid) == 2
