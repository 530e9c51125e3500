"""How a transaction executes, per engine: the channels a ``Session`` runs its work on.

Every query function and service in dal/ is plain synchronous SQLAlchemy Core on a
``Connection``. A session runs them where they are cheapest for its engine:

* SQLite: on one stdlib-sqlite3 writer connection, on the event loop's own thread when the
  write lock is free at once and on the writer thread otherwise (``_Writer``), plus a small
  pool of reader threads for read-only sessions. A service call is one synchronous call, however
  many statements it runs: SQLAlchemy's aiosqlite adapter would pay several thread hops per
  statement (docs/performance.md). The single writer connection serializes writers by
  construction; ``BEGIN IMMEDIATE`` and the busy timeout cover other processes. WAL
  checkpoints run on a thread of their own (``_Checkpointer``), not inside a COMMIT.
* PostgreSQL: on one pooled asyncpg connection held for the session, each service call in one
  ``AsyncConnection.run_sync`` (greenlet) step; rows are locked with ``SELECT … FOR UPDATE``.

A runner hands out channels (``connection(readonly)``); a channel runs a sync function in the
transaction (``run``), ends it (``finish``) or does both in one step (``run_once``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.util import greenlet_spawn

from dal.engine import (
    BUSY_TIMEOUT_MS,
    WAL_AUTOCHECKPOINT_PAGES,
    create_engine,
    create_sync_sqlite_engine,
)
from dal.errors import DatabaseUnavailable

T = TypeVar("T")
log = logging.getLogger("tradebook.dal")
READER_THREADS = 2
# SQLite's automatic checkpoint runs inside the COMMIT that takes the WAL past its threshold:
# it copies the WAL's pages back into the database file and syncs the file, which held the
# event loop for tens of milliseconds at a time (docs/performance.md, "The event loop while
# fills pour in"). The writer connection leaves checkpoints to a thread of its own
# (_Checkpointer), at most one every CHECKPOINT_INTERVAL_S, and keeps the automatic one only as
# a backstop far above what that thread lets the WAL grow to.
CHECKPOINT_INTERVAL_S = 0.1
BACKSTOP_AUTOCHECKPOINT_PAGES = 10 * WAL_AUTOCHECKPOINT_PAGES


class _Lane:
    """One reader thread with its own SQLite connection: everything submitted runs in order."""

    def __init__(self, engine: sa.Engine, name: str) -> None:
        self._engine = engine
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=name)
        self._local = threading.local()

    def _conn(self) -> sa.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            conn = self._engine.connect()
            self._local.conn = conn
        return conn

    async def submit(self, fn: Callable[[sa.Connection], T]) -> T:
        return await asyncio.wrap_future(self._pool.submit(lambda: fn(self._conn())))

    def close(self) -> None:
        def _close() -> None:
            conn = getattr(self._local, "conn", None)
            if conn is not None:
                conn.close()

        self._pool.submit(_close).result()
        self._pool.shutdown(wait=True)


class _Checkpointer:
    """PASSIVE checkpoints of the WAL on a thread and a connection of their own, started after
    commits of the writer connection: at most one at a time and one every
    ``CHECKPOINT_INTERVAL_S``. A passive checkpoint waits for no reader and no writer, so the
    loop and the writer go on meanwhile; frames a reader still needs wait for the next one."""

    def __init__(self, engine: sa.Engine) -> None:
        self._engine = engine
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="tradebook-checkpoint")
        self._conn: Any = None  # the thread's connection (a pool proxy of a sqlite3 one)
        self._job: Future[tuple[int, int, int] | None] | None = None
        self._last = float("-inf")  # time.monotonic() when the last checkpoint was started
        self._closed = False

    def committed(self) -> None:
        """After a COMMIT on the writer connection, on whichever thread ran it (the write lock
        keeps two of these from running at once)."""
        now = time.monotonic()
        if self._closed or now - self._last < CHECKPOINT_INTERVAL_S:
            return
        if self._job is not None and not self._job.done():
            return
        self._last = now
        self._job = self._pool.submit(self._checkpoint)

    def _checkpoint(self) -> tuple[int, int, int] | None:
        """(busy, frames in the WAL, frames copied back), as SQLite reports them."""
        try:
            if self._conn is None:
                self._conn = self._engine.raw_connection()
            cursor = self._conn.driver_connection.execute("PRAGMA wal_checkpoint(PASSIVE)")
            return cursor.fetchone()  # type: ignore[no-any-return]  # sqlite3 rows are tuples
        except Exception:  # the next commit tries again; the backstop still holds
            log.warning("WAL checkpoint failed", exc_info=True)
            return None

    async def settled(self) -> None:
        """Wait for the checkpoint under way, if any."""
        job = self._job
        if job is not None:
            await asyncio.wrap_future(job)

    async def close(self) -> None:
        self._closed = True
        await self.settled()

        def close_connection() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        await asyncio.wrap_future(self._pool.submit(close_connection))
        self._pool.shutdown(wait=False)


class _Writer:
    """The one SQLite connection every write transaction of this process uses, and the thread
    that runs the transactions that should not run on the event loop.

    A write transaction runs on the event loop's own thread when its ``BEGIN IMMEDIATE`` gets
    the lock at once (the connection's busy timeout is 0): SQLAlchemy's Python holds the GIL
    either way, so a thread would only add the hand-offs (docs/performance.md). It runs on the
    writer thread, with the normal busy timeout, when another connection holds the lock
    (another process, another Database on the same file), and a call marked ``long_running``
    runs there too (the loop keeps its share of the GIL). The write lock (an asyncio lock)
    gives the connection to one transaction at a time wherever it runs, and a transaction
    keeps it until its last thread job is over, even when its task is cancelled: a thread
    cannot be stopped halfway. Work on the loop's thread lets the loop turn between one
    piece and the next (``take_turn``), so back-to-back transactions do not freeze the bot.
    """

    def __init__(self, engine: sa.Engine) -> None:
        self._engine = engine
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="tradebook-writer")
        self.checkpointer = _Checkpointer(engine)
        self._conn: sa.Connection | None = None
        self._closed = False
        self.lock = asyncio.Lock()
        self.owner: asyncio.Task[Any] | None = None  # the task holding the lock
        # False from the end of work run on the loop's thread until the loop next turns.
        self._loop_turned = True

    def worked_on_loop(self) -> None:
        """Note that the loop's thread has just run work on this connection."""
        if self._loop_turned:
            self._loop_turned = False
            asyncio.get_running_loop().call_soon(self._turned)

    def _turned(self) -> None:
        self._loop_turned = True

    async def take_turn(self) -> None:
        """Called before work on the loop's thread: when the last work ran there too and the
        loop has not turned since, let it turn first, so whatever is ready (a bot update, a
        timer) runs between two transactions.

        Work on the loop's thread never suspends when the write lock is free, so without
        this, back-to-back transactions (a strategy ingesting fills one call after another)
        would hold the loop for as long as they keep coming. One turn costs a few
        microseconds; letting several transactions run before a turn was measured to leave
        the loop as late as several of them, since what waits (a timer, a socket read) needs
        a few turns to reach its task (docs/performance.md, "The event loop while fills pour
        in")."""
        if not self._loop_turned:
            await asyncio.sleep(0)  # self._turned runs before this task resumes

    def connection(self) -> sa.Connection:
        if self._closed:
            raise RuntimeError("this Database has been disposed")
        if self._conn is None or self._conn.closed:
            conn = self._engine.connect()
            _set_busy_timeout(conn, 0)
            driver = conn.connection.driver_connection
            driver.execute(f"PRAGMA wal_autocheckpoint={BACKSTOP_AUTOCHECKPOINT_PAGES}")  # type: ignore[union-attr]  # a live sqlite3 connection here
            self._conn = conn
        return self._conn

    def holds(self, conn: sa.Connection) -> bool:
        return self._conn is conn

    async def in_thread(self, fn: Callable[[sa.Connection], T]) -> T:
        """``fn(connection)`` on the writer thread; returns (or raises) only once it is over."""
        job = asyncio.wrap_future(self._thread.submit(fn, self.connection()))
        try:
            return await asyncio.shield(job)
        except asyncio.CancelledError:
            # The job runs on regardless: keep the connection (and the write lock, which the
            # caller holds) until it is over, so no other transaction shares the connection
            # with it; then pass the cancellation on. Its own outcome is what the caller's
            # session sees when it ends (a BEGIN still to be rolled back, say).
            await _until_done(job)
            raise

    def discard(self) -> None:
        """Drop a connection whose transaction state cannot be trusted; SQLite rolls back
        whatever it still had open when it closes."""
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.invalidate()
            finally:
                conn.close()

    async def close(self) -> None:
        # After any transaction still running (a session that awaits between calls), never
        # under it: closing would roll back its first half and let the rest commit alone.
        async with self.lock:
            self._closed = True
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            self._thread.shutdown(wait=True)
            await self.checkpointer.close()


async def _until_done(job: asyncio.Future[Any]) -> None:
    """Wait for ``job`` to finish, however often this task is cancelled meanwhile."""
    while not job.done():
        try:
            await asyncio.wait([job])
        except asyncio.CancelledError:
            continue
    if not job.cancelled():
        job.exception()  # retrieved: its outcome was reported where it belonged


def _set_busy_timeout(conn: sa.Connection, ms: int) -> None:
    # On the driver's connection: a statement through SQLAlchemy would open a transaction.
    conn.connection.driver_connection.execute(f"PRAGMA busy_timeout={ms}")  # type: ignore[union-attr]  # a live sqlite3 connection here


def _begin_waiting(conn: sa.Connection) -> None:
    _set_busy_timeout(conn, BUSY_TIMEOUT_MS)
    try:
        conn.begin()  # the writer's BEGIN is IMMEDIATE (dal/engine.py)
    except BaseException:
        _set_busy_timeout(conn, 0)
        raise


def _commit(writer: _Writer, conn: sa.Connection) -> None:
    """COMMIT; if it fails, roll back in SQLite itself before raising. A failed COMMIT (a
    deferred foreign key, a full disk) leaves SQLite's transaction open while SQLAlchemy marks
    its own inactive, and SQLAlchemy's rollback would then never reach SQLite: the writer
    connection would keep the write lock with a half-done transaction on it."""
    try:
        conn.commit()
    except BaseException:
        try:
            conn.connection.driver_connection.rollback()  # type: ignore[union-attr]  # a live sqlite3 connection here
            conn.rollback()  # forgets SQLAlchemy's inactive transaction
        except BaseException:
            writer.discard()
        raise
    writer.checkpointer.committed()


def _rollback(writer: _Writer, conn: sa.Connection) -> None:
    try:
        conn.rollback()
    except BaseException:
        writer.discard()
        raise


def _end(writer: _Writer, conn: sa.Connection, commit: bool, *, waited: bool) -> None:
    try:
        if conn.in_transaction():
            (_commit if commit else _rollback)(writer, conn)
    finally:
        if waited and writer.holds(conn):
            _set_busy_timeout(conn, 0)


def _whole(writer: _Writer, conn: sa.Connection, fn: Callable[[sa.Connection], T]) -> T:
    """The work of a begun transaction, then COMMIT (or ROLLBACK on any error)."""
    try:
        result = fn(conn)
    except BaseException:
        _rollback(writer, conn)
        raise
    _commit(writer, conn)
    return result


def _is_busy(exc: sa.exc.OperationalError) -> bool:
    # Extended result codes (SQLITE_BUSY_RECOVERY, ...) carry the primary code in the low byte.
    code = getattr(exc.orig, "sqlite_errorcode", None)
    return code is not None and code & 0xFF == sqlite3.SQLITE_BUSY


class SQLiteRunner:
    def __init__(self, url: str) -> None:
        # The writer and the readers each hold their own connection; no pool needed. Each
        # connection is used by one transaction at a time, so any thread may use it.
        self.engine = create_sync_sqlite_engine(
            url, poolclass=sa.pool.NullPool, connect_args={"check_same_thread": False}
        )
        self.writer = _Writer(self.engine)
        self._readers: asyncio.Queue[_Lane] = asyncio.Queue()
        for i in range(READER_THREADS):
            lane = _Lane(self.engine, f"tradebook-reader-{i}")
            self._readers.put_nowait(lane)
        self._all_readers = list(self._readers._queue)  # type: ignore[attr-defined]  # asyncio.Queue's deque, to reach every lane at dispose

    @contextlib.asynccontextmanager
    async def connection(self, readonly: bool) -> AsyncIterator[Channel]:
        if readonly:
            lane = await self._readers.get()
            try:
                yield _LaneChannel(lane, begin="DEFERRED")
            finally:
                self._readers.put_nowait(lane)
        else:
            writer = self.writer
            task = asyncio.current_task()
            if writer.owner is not None and writer.owner is task:
                # It would wait for itself forever: the lock is not reentrant.
                raise RuntimeError(
                    "a write transaction was started inside another one in the same task; "
                    "use the open session instead"
                )
            await writer.take_turn()
            async with writer.lock:
                writer.owner = task
                try:
                    yield _WriterChannel(writer)
                finally:
                    writer.owner = None

    def writer_taken_by_another(self) -> bool:
        """Whether another task holds the writer connection now."""
        owner = self.writer.owner
        return self.writer.lock.locked() and owner is not asyncio.current_task()

    async def dispose(self) -> None:
        await self.writer.close()
        for lane in self._all_readers:
            await asyncio.to_thread(lane.close)
        self.engine.dispose()


class PostgresRunner:
    """Two pools: writers (``pool_size`` connections, as many again in bursts) and readers
    (half that, likewise), so one process holds at most ``3 × pool_size`` connections: 30 by
    default, against PostgreSQL's default ``max_connections`` of 100."""

    def __init__(self, url: str, pool_size: int = 10, pool_timeout_s: float = 30.0) -> None:
        writers, readers = max(1, pool_size), max(1, pool_size // 2)
        self.engine = create_engine(
            url, pool_size=writers, max_overflow=writers, pool_timeout=pool_timeout_s
        )
        # Reads run in autocommit on connections the server holds read-only: no BEGIN and
        # COMMIT round trips, and a write by mistake is refused instead of committed alone.
        self.reader = create_engine(
            url,
            isolation_level="AUTOCOMMIT",
            pool_size=readers,
            max_overflow=readers,
            pool_timeout=pool_timeout_s,
            connect_args={"server_settings": {"default_transaction_read_only": "on"}},
        )

    @contextlib.asynccontextmanager
    async def connection(self, readonly: bool) -> AsyncIterator[Channel]:
        engine = self.reader if readonly else self.engine
        with _unavailable_told():
            conn = await engine.connect()
        try:
            yield _AsyncChannel(conn)
        finally:
            # As ``async with`` would: the connection goes back even if this task is cancelled.
            await asyncio.shield(conn.close())

    async def run_once(self, readonly: bool, fn: Callable[[sa.Connection], T]) -> T:
        """A whole one-call transaction (check out, BEGIN, ``fn``, COMMIT, check in) in one
        greenlet: what ``connection`` and ``_AsyncChannel.run_once`` do, without a hand-off
        between the event loop and a greenlet for every step."""
        engine = (self.reader if readonly else self.engine).sync_engine
        return await greenlet_spawn(_whole_transaction, engine, fn)

    async def dispose(self) -> None:
        await self.engine.dispose()
        await self.reader.dispose()


@contextlib.contextmanager
def _unavailable_told() -> Iterator[None]:
    """A connection that cannot be had is DatabaseUnavailable, saying why."""
    try:
        yield
    except sa.exc.TimeoutError:
        raise DatabaseUnavailable(
            "every database connection of this process is busy; try again "
            "(TRADEBOOK_DB_POOL_SIZE sets how many it may hold)"
        ) from None
    except sa.exc.DBAPIError as exc:
        if getattr(exc.orig, "sqlstate", None) == "53300":
            raise DatabaseUnavailable(
                "PostgreSQL has no connection to spare (max_connections reached); lower "
                "TRADEBOOK_DB_POOL_SIZE or raise the server's max_connections"
            ) from None
        raise


def _whole_transaction(engine: sa.Engine, fn: Callable[[sa.Connection], T]) -> T:
    with _unavailable_told():
        conn = engine.connect()
    with conn, conn.begin():
        return fn(conn)


class Channel:
    """Runs a sync function on the session's connection, inside the session's transaction.

    ``long_running`` (work marked ``dal.scope.long_running``) asks SQLite to keep it off the
    event loop's thread; PostgreSQL ignores it (the work awaits the server anyway).
    """

    async def run(self, fn: Callable[[sa.Connection], T], long_running: bool = False) -> T:
        raise NotImplementedError

    async def finish(self, commit: bool) -> None:
        raise NotImplementedError

    async def run_once(self, fn: Callable[[sa.Connection], T], long_running: bool = False) -> T:
        """A whole transaction around ``fn`` in one step (BEGIN, work, COMMIT)."""
        raise NotImplementedError


class _LaneChannel(Channel):
    """A read-only session on a reader thread (``BEGIN DEFERRED``: concurrent with writes)."""

    def __init__(self, lane: _Lane, begin: str) -> None:
        self._lane = lane
        self._begin = begin

    async def run(self, fn: Callable[[sa.Connection], T], long_running: bool = False) -> T:
        def in_transaction(conn: sa.Connection) -> T:
            if not conn.in_transaction():
                # The first call of a session opens its transaction in the same thread hop.
                conn.execution_options(sqlite_begin=self._begin).begin()
            return fn(conn)

        return await self._lane.submit(in_transaction)

    async def finish(self, commit: bool) -> None:
        def end(conn: sa.Connection) -> None:
            if conn.in_transaction():
                (conn.commit if commit else conn.rollback)()

        await self._lane.submit(end)

    async def run_once(self, fn: Callable[[sa.Connection], T], long_running: bool = False) -> T:
        """A read in one thread hop; rolled back, so a write by mistake is not kept."""

        def whole(conn: sa.Connection) -> T:
            conn.execution_options(sqlite_begin=self._begin).begin()
            try:
                return fn(conn)
            finally:
                conn.rollback()

        return await self._lane.submit(whole)


class _WriterChannel(Channel):
    """One write transaction on the writer connection, begun on the loop or on the writer
    thread; a call marked long-running runs on the thread either way."""

    def __init__(self, writer: _Writer) -> None:
        self._writer = writer
        self._where: str | None = None  # "loop" | "thread" once BEGIN was sent there

    def _begin_on_loop(self, long_running: bool) -> bool:
        if long_running:
            return False
        conn = self._writer.connection()
        try:
            conn.begin()  # the writer's BEGIN is IMMEDIATE (dal/engine.py)
        except sa.exc.OperationalError as exc:
            if _is_busy(exc):
                return False  # someone else writes: wait for the lock on the thread
            raise
        return True

    async def _begin(self, long_running: bool) -> None:
        if self._begin_on_loop(long_running):
            self._where = "loop"
        else:
            # Set first: if this task is cancelled while BEGIN waits, finish() still ends
            # whatever BEGIN began.
            self._where = "thread"
            await self._writer.in_thread(_begin_waiting)

    async def run(self, fn: Callable[[sa.Connection], T], long_running: bool = False) -> T:
        if self._where is None:
            await self._begin(long_running)
        if self._where == "loop" and not long_running:
            writer = self._writer
            await writer.take_turn()  # between the calls of a session, too
            try:
                return fn(writer.connection())
            finally:
                writer.worked_on_loop()
        return await self._writer.in_thread(fn)

    async def finish(self, commit: bool) -> None:
        writer, where, self._where = self._writer, self._where, None
        if where == "loop":
            try:
                _end(writer, writer.connection(), commit, waited=False)
            finally:
                writer.worked_on_loop()
        elif where == "thread":
            await writer.in_thread(lambda conn: _end(writer, conn, commit, waited=True))

    async def run_once(self, fn: Callable[[sa.Connection], T], long_running: bool = False) -> T:
        writer = self._writer
        if self._begin_on_loop(long_running):
            try:
                return _whole(writer, writer.connection(), fn)
            finally:
                writer.worked_on_loop()

        def waiting(conn: sa.Connection) -> T:
            _begin_waiting(conn)
            try:
                return _whole(writer, conn, fn)
            finally:
                if writer.holds(conn):
                    _set_busy_timeout(conn, 0)

        return await writer.in_thread(waiting)


class _AsyncChannel(Channel):
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def run(self, fn: Callable[[sa.Connection], T], long_running: bool = False) -> T:
        if not self._conn.in_transaction():
            await self._conn.begin()
        return await self._conn.run_sync(fn)

    async def finish(self, commit: bool) -> None:
        if self._conn.in_transaction():
            await (self._conn.commit() if commit else self._conn.rollback())

    async def run_once(self, fn: Callable[[sa.Connection], T], long_running: bool = False) -> T:
        async with self._conn.begin():
            return await self._conn.run_sync(fn)
