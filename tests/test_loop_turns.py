"""Ingestion lets the event loop turn: a strategy sending fills back to back must not freeze
the bot (docs/performance.md, "The event loop while fills pour in"). Nothing here is timed:
the tests count how often another task got to run."""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa

from dal.database import Database
from dal.trades import LOOP_BATCH_FILLS
from tests.factories import T0, default_portfolio, fill, make_instrument, make_user

pytestmark = pytest.mark.parametrize("engine_name", ["sqlite", "postgresql"], indirect=True)


@dataclass
class _Ticker:
    """A task that counts the loop's turns: ``ticks`` grows only when it gets to run."""

    ticks: int = 0

    async def run(self) -> None:
        while True:
            self.ticks += 1
            await asyncio.sleep(0)


@asynccontextmanager
async def _ticking() -> AsyncIterator[_Ticker]:
    ticker = _Ticker()
    task = asyncio.create_task(ticker.run())
    await asyncio.sleep(0)  # started
    try:
        yield ticker
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def _trader(db: Database) -> tuple[Any, int, int]:
    actor = await make_user(db)
    return actor, await default_portfolio(db, actor), await make_instrument(db)


def _fills(pid: int, iid: int, n: int, tag: str) -> list[Any]:
    return [fill(pid, iid, "BUY", "1", "100", trade_id=f"{tag}{i}", at=T0) for i in range(n)]


async def test_back_to_back_single_fills_let_other_tasks_run_between_them(
    db: Database,
) -> None:
    """The loop turns before every transaction that follows work on its thread: the ticker
    runs between the ends of any two ingest calls."""
    actor, pid, iid = await _trader(db)
    trades = db.scoped(actor).trades
    seen = []  # the ticks after each call
    async with _ticking() as ticker:
        for f in _fills(pid, iid, 30, "a"):
            await trades.ingest_fill(f)
            seen.append(ticker.ticks)
    assert all(later > earlier for earlier, later in itertools.pairwise(seen))
    (position,) = await db.scoped(actor).positions.snapshot(pid)
    assert position.quantity == Decimal(30)


async def test_a_session_of_many_calls_lets_other_tasks_run_between_them(
    db: Database,
) -> None:
    """Between the calls of one transaction, too (the transaction keeps its lock meanwhile)."""
    actor, pid, iid = await _trader(db)
    seen = []
    async with _ticking() as ticker, db.session(actor) as s:
        for f in _fills(pid, iid, 10, "c"):
            await s.trades.ingest_fill(f)
            seen.append(ticker.ticks)
    assert all(later > earlier for earlier, later in itertools.pairwise(seen))


async def test_a_large_batch_lets_other_tasks_run_while_it_is_written(
    db: Database, engine_name: str
) -> None:
    """A batch of more than LOOP_BATCH_FILLS fills is one transaction that the loop does not
    wait for: on SQLite it runs on the writer thread, on PostgreSQL it awaits the server."""
    actor, pid, iid = await _trader(db)
    trades = db.scoped(actor).trades
    await trades.ingest_fill(fill(pid, iid, "BUY", "1", "100", trade_id="first", at=T0))
    statements: list[str] = []

    def record(*_args: Any) -> None:
        statements.append(threading.current_thread().name)

    engine = db._get_runner().engine
    target = engine.sync_engine if hasattr(engine, "sync_engine") else engine
    sa.event.listen(target, "before_cursor_execute", record)
    try:
        async with _ticking() as ticker:
            start = ticker.ticks
            results = await trades.ingest_fills(_fills(pid, iid, LOOP_BATCH_FILLS + 1, "d"))
            turns = ticker.ticks - start
    finally:
        sa.event.remove(target, "before_cursor_execute", record)
    assert len(results) == LOOP_BATCH_FILLS + 1 and turns > 0
    if engine_name == "sqlite":
        assert statements and set(statements) == {"tradebook-writer_0"}
        # A small batch stays on the loop's thread, like a single fill.
        statements.clear()
        sa.event.listen(target, "before_cursor_execute", record)
        try:
            await trades.ingest_fills(_fills(pid, iid, LOOP_BATCH_FILLS, "e"))
        finally:
            sa.event.remove(target, "before_cursor_execute", record)
        assert set(statements) == {threading.current_thread().name}
    (position,) = await db.scoped(actor).positions.snapshot(pid)
    expected = 1 + LOOP_BATCH_FILLS + 1 + (LOOP_BATCH_FILLS if engine_name == "sqlite" else 0)
    assert position.quantity == Decimal(expected)


async def test_a_read_does_not_wait_for_another_tasks_write(db: Database, engine_name: str) -> None:
    """While another task holds SQLite's writer connection (a batch on the writer thread, an
    open session), a one-call read reads beside it on a reader lane, from what is committed,
    instead of queueing behind it (PostgreSQL reads on its own connections anyway)."""
    actor, pid, iid = await _trader(db)
    dal = db.scoped(actor)
    await dal.trades.ingest_fill(fill(pid, iid, "BUY", "1", "100", trade_id="r0", at=T0))
    holding, release = asyncio.Event(), asyncio.Event()

    async def writer() -> None:
        async with db.session(actor) as s:
            await s.trades.ingest_fill(fill(pid, iid, "BUY", "2", "100", trade_id="r1", at=T0))
            holding.set()
            await release.wait()

    task = asyncio.create_task(writer())
    await holding.wait()
    try:
        async with asyncio.timeout(10):  # it would wait for release (never) if it queued
            (position,) = await dal.positions.snapshot(pid)
    finally:
        release.set()
        await task
    assert position.quantity == Decimal(1)  # the open session's fill is not committed yet
    (position,) = await dal.positions.snapshot(pid)
    assert position.quantity == Decimal(3)
