"""Where a SQLite write transaction runs: on the event loop's thread when the write lock is
free, on the writer thread when it must wait for it or is marked long-running, and never with
two transactions on the writer connection at once (README, "DAL design")."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from dal import schema as t
from dal.database import Database
from dal.scope import Actor
from tests.factories import T0, default_portfolio, fill, make_instrument, make_user

pytestmark = pytest.mark.parametrize("engine_name", ["sqlite"], indirect=True)


def _path(db: Database) -> str:
    database = make_url(db.url).database
    assert database
    return database


class _Threads:
    """The name of the thread each statement of the DAL ran on."""

    def __init__(self, db: Database) -> None:
        self.engine = db._get_runner().engine
        self.seen: list[str] = []

    def _listener(self, *args: Any) -> None:
        self.seen.append(threading.current_thread().name)

    def __enter__(self) -> _Threads:
        sa.event.listen(self.engine, "before_cursor_execute", self._listener)
        return self

    def __exit__(self, *exc: object) -> None:
        sa.event.remove(self.engine, "before_cursor_execute", self._listener)


async def _trader(db: Database) -> tuple[Actor, int, int]:
    actor = await make_user(db)
    return actor, await default_portfolio(db, actor), await make_instrument(db, "BTCUSDT")


async def test_short_calls_run_on_the_loop_and_long_ones_on_the_writer_thread(
    db: Database,
) -> None:
    actor, pid, iid = await _trader(db)
    dal = db.scoped(actor)
    loop_thread = threading.current_thread().name
    with _Threads(db) as threads:
        await dal.trades.ingest_fill(fill(pid, iid, "BUY", "1", "100", trade_id="a"))
        await dal.positions.snapshot(pid)
    assert set(threads.seen) == {loop_thread}
    with _Threads(db) as threads:
        assert (await dal.positions.recompute(pid))[(pid, iid, None)].quantity == Decimal(1)
        assert await dal.positions.verify(pid) == []
    assert threads.seen and set(threads.seen) == {"tradebook-writer_0"}
    # A multi-call session that starts with long-running work stays on the thread to its end.
    with _Threads(db) as threads:
        async with db.session(actor) as s:
            await s.positions.recompute(pid)
            await s.positions.snapshot(pid)
    assert set(threads.seen) == {"tradebook-writer_0"}


async def test_a_write_waits_for_another_connection_on_the_writer_thread(db: Database) -> None:
    """Another process holds the write lock: the DAL's BEGIN IMMEDIATE cannot get it at once,
    so the transaction waits (busy timeout) on the writer thread while the event loop keeps
    running, and goes through once the lock is released: no "database is locked"."""
    actor, pid, iid = await _trader(db)
    other = sqlite3.connect(_path(db), isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        task = asyncio.create_task(
            db.scoped(actor).trades.ingest_fill(fill(pid, iid, "BUY", "2", "100", trade_id="w"))
        )
        ticks = 0
        for _ in range(20):  # the loop is free while the fill waits for the lock
            await asyncio.sleep(0.01)
            ticks += 1
        assert ticks == 20 and not task.done()
        other.execute("COMMIT")
        result = await asyncio.wait_for(task, 10)
    finally:
        other.close()
    assert not result.replayed
    # The connection is back to failing fast, so the next write runs on the loop again.
    with _Threads(db) as threads:
        await db.scoped(actor).trades.ingest_fill(fill(pid, iid, "BUY", "1", "100", trade_id="x"))
    assert set(threads.seen) == {threading.current_thread().name}
    (position,) = await db.scoped(actor).positions.snapshot(pid)
    assert position.quantity == Decimal(3)


async def test_a_session_waiting_on_the_thread_keeps_the_connection_to_itself(
    db: Database,
) -> None:
    """A session that began on the writer thread (the lock was taken) runs every call there;
    writes queued behind it wait for it, and all of them land exactly once."""
    actor, pid, iid = await _trader(db)
    other = sqlite3.connect(_path(db), isolation_level=None)
    other.execute("BEGIN IMMEDIATE")

    async def session_fills() -> None:
        async with db.session(actor) as s:
            for i in range(3):
                await s.trades.ingest_fill(fill(pid, iid, "BUY", "1", "100", trade_id=f"s{i}"))

    async def single_fill(i: int) -> None:
        await db.scoped(actor).trades.ingest_fill(
            fill(pid, iid, "BUY", "1", "100", trade_id=f"q{i}", at=T0)
        )

    tasks = [asyncio.create_task(session_fills())]
    tasks += [asyncio.create_task(single_fill(i)) for i in range(5)]
    await asyncio.sleep(0.1)
    other.execute("COMMIT")
    other.close()
    await asyncio.wait_for(asyncio.gather(*tasks), 10)
    async with db.session(actor) as s:
        (position,) = await s.positions.snapshot(pid)
        assert await s.positions.verify(pid) == []
        count = await s.run(
            lambda tx: tx.conn.execute(
                sa.select(sa.func.count())
                .select_from(t.trades)
                .where(t.trades.c.portfolio_id == pid)
            ).scalar_one()
        )
    assert position.quantity == Decimal(8) and count == 8
