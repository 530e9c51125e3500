"""Where a SQLite write transaction runs: on the event loop's thread when the write lock is
free, on the writer thread when it must wait for it or is marked long-running, and never with
two transactions on the writer connection at once (docs/architecture.md, "How a transaction
executes")."""

from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3
import threading
import time
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
    # One begun on the loop still sends its long-running calls to the thread.
    with _Threads(db) as threads:
        async with db.session(actor) as s:
            await s.positions.snapshot(pid)
            short = len(threads.seen)
            await s.positions.recompute(pid)
    assert short and set(threads.seen[:short]) == {loop_thread}
    assert set(threads.seen[short:]) == {"tradebook-writer_0"}


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


def _lock_is_free(db: Database) -> bool:
    """Can another connection take SQLite's write lock right now (no waiting)?"""
    probe = sqlite3.connect(_path(db), isolation_level=None, timeout=0)
    try:
        probe.execute("BEGIN IMMEDIATE")
        probe.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        probe.close()


async def _trade_count(db: Database, actor: Actor, pid: int) -> int:
    async with db.session(actor, readonly=True) as s:
        return await s.run(
            lambda tx: tx.conn.execute(
                sa.select(sa.func.count())
                .select_from(t.trades)
                .where(t.trades.c.portfolio_id == pid)
            ).scalar_one()
        )


async def test_a_session_cancelled_while_its_begin_waits_leaves_nothing_open(
    db: Database,
) -> None:
    """The task is cancelled while BEGIN IMMEDIATE waits for another connection's lock (a
    strategy stopped, say): the BEGIN still happens on the thread once the lock frees, and the
    session's end rolls it back; the writer is not left holding the lock."""
    actor, pid, iid = await _trader(db)

    async def session_fill() -> None:
        async with db.session(actor) as s:
            await s.trades.ingest_fill(fill(pid, iid, "BUY", "1", "100", trade_id="c"))

    other = sqlite3.connect(_path(db), isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        task = asyncio.create_task(session_fill())
        await asyncio.sleep(0.1)
        task.cancel()
        await asyncio.sleep(0.05)
        other.execute("COMMIT")
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)
    finally:
        other.close()
    assert _lock_is_free(db)
    assert await _trade_count(db, actor, pid) == 0
    # The writer connection fails fast again: the next write runs on the loop and lands.
    with _Threads(db) as threads:
        await db.scoped(actor).trades.ingest_fill(fill(pid, iid, "BUY", "1", "100", trade_id="d"))
    assert set(threads.seen) == {threading.current_thread().name}
    assert await _trade_count(db, actor, pid) == 1


async def test_a_cancelled_thread_job_keeps_the_connection_until_it_is_over(
    db: Database,
) -> None:
    """A long job on the writer thread is cancelled, and so is a write queued behind it: the
    next write still starts only after the long job has finished (a thread cannot be stopped;
    the connection must not be shared with it)."""
    runner = db._get_runner()
    spans: list[tuple[str, float, float]] = []

    async def write(name: str, seconds: float, long_running: bool) -> None:
        def work(conn: sa.Connection) -> None:
            start = time.monotonic()
            time.sleep(seconds)
            spans.append((name, start, time.monotonic()))

        async with runner.connection(readonly=False) as channel:
            await channel.run_once(work, long_running)

    first = asyncio.create_task(write("long", 0.3, True))
    await asyncio.sleep(0.05)
    second = asyncio.create_task(write("queued", 0, False))
    await asyncio.sleep(0.02)
    first.cancel()
    await asyncio.sleep(0.02)
    second.cancel()
    third = asyncio.create_task(write("next", 0, False))
    outcomes = await asyncio.wait_for(
        asyncio.gather(first, second, third, return_exceptions=True), 10
    )
    assert isinstance(outcomes[0], asyncio.CancelledError)
    assert isinstance(outcomes[1], asyncio.CancelledError)
    assert outcomes[2] is None
    ran = {name: (start, end) for name, start, end in spans}
    assert set(ran) == {"long", "next"}  # the queued write was cancelled before it began
    assert ran["next"][0] >= ran["long"][1]


async def test_a_failed_commit_rolls_back_and_frees_the_write_lock(db: Database) -> None:
    """COMMIT itself fails (here a deferred foreign key; a full disk is the same path): the
    caller gets the error, SQLite's transaction is rolled back, nothing of it is stored, and
    the next write works."""
    actor, pid, iid = await _trader(db)
    runner = db._get_runner()

    def orphan_audit_row(conn: sa.Connection) -> None:
        conn.exec_driver_sql("PRAGMA defer_foreign_keys=ON")  # checked at COMMIT, not here
        conn.execute(
            t.audit_log.insert().values(
                user_id=987654,
                entity_type="USER",
                action="UPDATE",
                details_json={"test": "orphan"},
                created_at=dt.datetime.now(dt.UTC),
            )
        )

    for long_running in (False, True):  # on the loop, then on the writer thread
        async with runner.connection(readonly=False) as channel:
            with pytest.raises(sa.exc.IntegrityError, match="FOREIGN KEY"):
                await channel.run_once(orphan_audit_row, long_running)
        assert _lock_is_free(db)
        await db.scoped(actor).trades.ingest_fill(
            fill(pid, iid, "BUY", "1", "100", trade_id=f"after-{long_running}")
        )
    assert await _trade_count(db, actor, pid) == 2
    check = sqlite3.connect(_path(db))
    try:
        orphans = check.execute("SELECT count(*) FROM audit_log WHERE user_id = 987654")
        assert orphans.fetchone() == (0,)
    finally:
        check.close()


async def test_dispose_waits_for_an_open_write_session(db: Database) -> None:
    """Disposing while a session is between two calls waits for the session to end, so the
    session lands whole (not its first call rolled back and its second committed alone)."""
    actor, pid, iid = await _trader(db)
    release = asyncio.Event()

    async def two_fills() -> None:
        async with db.session(actor) as s:
            await s.trades.ingest_fill(fill(pid, iid, "BUY", "1", "100", trade_id="e1"))
            await release.wait()
            await s.trades.ingest_fill(fill(pid, iid, "BUY", "1", "100", trade_id="e2"))

    session = asyncio.create_task(two_fills())
    await asyncio.sleep(0.05)
    disposing = asyncio.create_task(db.dispose())
    await asyncio.sleep(0.05)
    assert not disposing.done()
    release.set()
    await asyncio.wait_for(asyncio.gather(session, disposing), 10)
    (position,) = await db.scoped(actor).positions.snapshot(pid)  # a new runner, lazily
    assert position.quantity == Decimal(2)


async def test_a_write_inside_an_open_write_session_of_the_same_task_is_refused(
    db: Database,
) -> None:
    """The write lock is not reentrant: a second write transaction from the task that holds
    it would wait for itself forever. It is refused at once instead, and the open session
    carries on."""
    actor, pid, iid = await _trader(db)
    async with db.session(actor) as s:
        await s.trades.ingest_fill(fill(pid, iid, "BUY", "1", "100", trade_id="n1"))
        with pytest.raises(RuntimeError, match="inside another one"):
            async with asyncio.timeout(5):  # same task (wait_for would run it in another)
                await db.scoped(actor).positions.snapshot(pid)
        await s.trades.ingest_fill(fill(pid, iid, "BUY", "1", "100", trade_id="n2"))
    assert await _trade_count(db, actor, pid) == 2


async def test_checkpoints_run_on_their_own_thread_not_in_the_commit(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer connection's automatic checkpoint is only a backstop far above the usual
    threshold: the checkpointer thread copies the WAL back after commits, so a COMMIT on the
    loop's thread does not."""
    from dal import execution

    monkeypatch.setattr(execution, "CHECKPOINT_INTERVAL_S", 0.0)
    done: list[tuple[str, Any]] = []
    checkpoint = execution._Checkpointer._checkpoint

    def recorded(self: Any) -> Any:
        result = checkpoint(self)
        done.append((threading.current_thread().name, result))
        return result

    monkeypatch.setattr(execution._Checkpointer, "_checkpoint", recorded)
    actor, pid, iid = await _trader(db)
    dal = db.scoped(actor)
    for i in range(20):
        await dal.trades.ingest_fill(fill(pid, iid, "BUY", "1", "100", trade_id=f"c{i}"))
    writer = db._get_runner().writer  # type: ignore[union-attr]  # a SQLiteRunner here
    await writer.checkpointer.settled()
    driver = writer.connection().connection.driver_connection
    assert driver is not None
    (pages,) = driver.execute("PRAGMA wal_autocheckpoint").fetchone()
    assert pages == execution.BACKSTOP_AUTOCHECKPOINT_PAGES
    assert done and {name for name, _ in done} == {"tradebook-checkpoint_0"}
    assert all(result is not None and result[0] == 0 for _, result in done)
    assert sum(result[2] for _, result in done) > 0  # frames were copied back
