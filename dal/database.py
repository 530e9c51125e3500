"""The unit of work: ``async with db.session(actor) as s:`` is one transaction.

How a transaction executes (README, "DAL design"): every query function and service in dal/ is
plain synchronous SQLAlchemy Core on a ``Connection``. A session runs them where they are
cheapest for its engine:

* SQLite: on one stdlib-sqlite3 writer connection, on the event loop's own thread when the
  write lock is free at once and on the writer thread otherwise (``_Writer``), plus a small
  pool of reader threads for read-only sessions. A service call is one synchronous call, however
  many statements it runs; SQLAlchemy's aiosqlite adapter would pay several thread hops per
  statement (shared/notes/performance.md: ≈ 440 vs ≈ 1,700 fills/s with one hop). The single
  writer connection serializes writers by construction; ``BEGIN IMMEDIATE`` and the busy
  timeout cover other processes.
* PostgreSQL: on one pooled asyncpg connection held for the session, each service call in one
  ``AsyncConnection.run_sync`` (greenlet) step; rows are locked with ``SELECT … FOR UPDATE``.

Either way the bot and the strategies see one async API and the query modules have one code
path for both engines.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Concatenate, ParamSpec, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from dal.engine import BUSY_TIMEOUT_MS, create_engine, create_sync_sqlite_engine, is_sqlite
from dal.errors import Forbidden, NotApproved
from dal.scope import Actor, Tx, is_long_running, is_read_only
from dal.services import Services

T = TypeVar("T")
P = ParamSpec("P")
READER_THREADS = 2


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


class _Writer:
    """The one SQLite connection every write transaction of this process uses, and the thread
    that runs the transactions that should not run on the event loop.

    A write transaction runs on the event loop's own thread when its ``BEGIN IMMEDIATE`` gets
    the lock at once (the connection's busy timeout is 0): SQLAlchemy's Python holds the GIL
    either way, so a thread would only add the hand-offs (≈ 0.15-0.25 ms per transaction on
    this machine, README "DAL design"). It runs on the writer thread, with the normal busy
    timeout, when another connection holds the lock (another process, another Database on the
    same file), and a call marked ``long_running`` runs there too (the loop keeps its share of
    the GIL). The write lock (an asyncio lock) gives the connection to one transaction at a
    time wherever it runs, and a transaction keeps it until its last thread job is over, even
    when its task is cancelled: a thread cannot be stopped halfway.
    """

    def __init__(self, engine: sa.Engine) -> None:
        self._engine = engine
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="tradebook-writer")
        self._conn: sa.Connection | None = None
        self._closed = False
        self.lock = asyncio.Lock()
        self.owner: asyncio.Task[Any] | None = None  # the task holding the lock

    def connection(self) -> sa.Connection:
        if self._closed:
            raise RuntimeError("this Database has been disposed")
        if self._conn is None or self._conn.closed:
            conn = self._engine.connect()
            _set_busy_timeout(conn, 0)
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
        conn.execution_options(sqlite_begin="IMMEDIATE").begin()
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


class _SQLiteRunner:
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
    async def connection(self, readonly: bool) -> AsyncIterator[_Channel]:
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
            async with writer.lock:
                writer.owner = task
                try:
                    yield _WriterChannel(writer)
                finally:
                    writer.owner = None

    async def dispose(self) -> None:
        await self.writer.close()
        for lane in self._all_readers:
            await asyncio.to_thread(lane.close)
        self.engine.dispose()


class _PostgresRunner:
    def __init__(self, url: str, engine: AsyncEngine | None = None) -> None:
        self.engine = engine or create_engine(url)
        # Reads run in autocommit on connections the server holds read-only: no BEGIN and
        # COMMIT round trips, and a write by mistake is refused instead of committed alone.
        self.reader = create_engine(
            url,
            isolation_level="AUTOCOMMIT",
            pool_size=5,
            connect_args={"server_settings": {"default_transaction_read_only": "on"}},
        )

    @contextlib.asynccontextmanager
    async def connection(self, readonly: bool) -> AsyncIterator[_Channel]:
        async with (self.reader if readonly else self.engine).connect() as conn:
            yield _AsyncChannel(conn)

    async def dispose(self) -> None:
        await self.engine.dispose()
        await self.reader.dispose()


class _Channel:
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


class _LaneChannel(_Channel):
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


class _WriterChannel(_Channel):
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
            conn.execution_options(sqlite_begin="IMMEDIATE").begin()
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
            return fn(self._writer.connection())
        return await self._writer.in_thread(fn)

    async def finish(self, commit: bool) -> None:
        writer, where, self._where = self._writer, self._where, None
        if where == "loop":
            _end(writer, writer.connection(), commit, waited=False)
        elif where == "thread":
            await writer.in_thread(lambda conn: _end(writer, conn, commit, waited=True))

    async def run_once(self, fn: Callable[[sa.Connection], T], long_running: bool = False) -> T:
        writer = self._writer
        if self._begin_on_loop(long_running):
            return _whole(writer, writer.connection(), fn)

        def waiting(conn: sa.Connection) -> T:
            _begin_waiting(conn)
            try:
                return _whole(writer, conn, fn)
            finally:
                if writer.holds(conn):
                    _set_busy_timeout(conn, 0)

        return await writer.in_thread(waiting)


class _AsyncChannel(_Channel):
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


class Session(Services):
    """One transaction for one actor. Services hang off it: ``await s.orders.place(...)``."""

    def __init__(self, channel: _Channel, actor: Actor, admin_scope: bool, db: Database) -> None:
        self._channel = channel
        self.actor = actor
        self.admin_scope = admin_scope
        self.db = db
        self._tx_state: dict[str, Any] = {}

    async def run(
        self, fn: Callable[Concatenate[Tx, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run ``fn(tx, *args, **kwargs)`` on the session's connection, in its transaction."""
        return await self._run(lambda tx: fn(tx, *args, **kwargs), is_long_running(fn))

    async def run_method(
        self,
        service: type[Any],
        method: Callable[..., T],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> T:
        return await self._run(
            lambda tx: method(service(tx), *args, **kwargs), is_long_running(method)
        )

    async def _run(self, fn: Callable[[Tx], T], long_running: bool) -> T:
        def call(conn: sa.Connection) -> T:
            tx = Tx(
                conn, self.actor, self.admin_scope, self._tx_state, self.db.settings, self.db.cache
            )
            return fn(tx)

        return await self._channel.run(call, long_running)


@dataclass
class DalSettings:
    """The settings the DAL itself needs (a subset of tradebook.settings.Settings)."""

    paper_starting_cash: Any = None
    paper_currency: str = "USDT"
    admin_telegram_ids: tuple[int, ...] = ()


class Database:
    """Entry point: ``db = Database(url)``; ``async with db.session(actor) as s: ...``."""

    def __init__(self, url: str, settings: DalSettings | None = None) -> None:
        from decimal import Decimal

        self.url = make_url(url).render_as_string(hide_password=False)
        self.settings = settings or DalSettings(paper_starting_cash=Decimal("10000"))
        self.dialect = "sqlite" if is_sqlite(url) else "postgresql"
        self._runner: _SQLiteRunner | _PostgresRunner | None = None
        # Rows that never change once written (instruments), shared by every session.
        self.cache: dict[str, Any] = {}

    @classmethod
    def from_settings(cls, settings: Any) -> Database:
        return cls(
            settings.database_url,
            DalSettings(
                paper_starting_cash=settings.paper_starting_cash,
                paper_currency=settings.paper_currency,
                admin_telegram_ids=tuple(settings.admin_telegram_ids),
            ),
        )

    def _get_runner(self) -> _SQLiteRunner | _PostgresRunner:
        if self._runner is None:
            if self.dialect == "sqlite":
                self._runner = _SQLiteRunner(self.url)
            else:
                self._runner = _PostgresRunner(self.url)
        return self._runner

    @contextlib.asynccontextmanager
    async def session(
        self, actor: Actor, *, admin: bool = False, readonly: bool = False
    ) -> AsyncIterator[Session]:
        """One transaction: commits when the block ends normally, rolls back on any error.

        ``admin=True`` is the explicit admin scope that may cross users; it is refused unless
        the actor is the system actor or a user whose row says is_admin (checked inside).
        ``readonly=True`` runs on a reader (SQLite: BEGIN DEFERRED, concurrent with writes;
        PostgreSQL: autocommit on a connection the server holds read-only, see ``read_only``).
        """
        runner = self._get_runner()
        async with runner.connection(readonly) as channel:
            session = Session(channel, actor, admin, self)
            ok = False
            try:
                if admin and not actor.is_system:
                    await session.run(_require_admin_user)
                yield session
                ok = True
            finally:
                await channel.finish(commit=ok)

    async def call(
        self,
        actor: Actor,
        service: type[Any],
        method: Callable[..., T],
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        admin: bool = False,
    ) -> T:
        """``method(service(tx), *args, **kwargs)`` as its own transaction, in one step: what
        ``db.scoped(actor)`` does for every call (half the thread hops of a one-call session
        on SQLite)."""
        state: dict[str, Any] = {}
        # On SQLite a one-call read is fastest as it is: a transaction on the loop's thread
        # (a reader lane costs a thread hop); on PostgreSQL it saves BEGIN and COMMIT.
        readonly = self.dialect == "postgresql" and is_read_only(method)

        def body(conn: sa.Connection) -> T:
            tx = Tx(conn, actor, admin, state, self.settings, self.cache)
            if admin and not actor.is_system:
                _require_admin_user(tx)
            return method(service(tx), *args, **(kwargs or {}))

        async with self._get_runner().connection(readonly=readonly) as channel:
            return await channel.run_once(body, is_long_running(method))

    def scoped(self, actor: Actor) -> ScopedDal:
        """A user-scoped handle: ``await dal.orders.list()`` runs as its own transaction."""
        return ScopedDal(self, actor)

    async def dispose(self) -> None:
        if self._runner is not None:
            await self._runner.dispose()
            self._runner = None

    async def __aenter__(self) -> Database:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.dispose()


class ScopedDal(Services):
    """The DAL as one user sees it, for code that must not hold a transaction open while it
    waits on the network (bot handlers, strategies): each service call is its own short
    transaction; ``async with dal.session() as s`` groups calls into one.

    ``admin=True`` is the explicit admin scope (checked against the user's row each time).
    """

    def __init__(self, db: Database, actor: Actor, admin: bool = False) -> None:
        self.db = db
        self.actor = actor
        self.admin_scope = admin

    def session(self, readonly: bool = False) -> contextlib.AbstractAsyncContextManager[Session]:
        return self.db.session(self.actor, admin=self.admin_scope, readonly=readonly)

    def as_admin(self) -> ScopedDal:
        return ScopedDal(self.db, self.actor, admin=True)

    async def run_method(
        self,
        service: type[Any],
        method: Callable[..., T],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> T:
        return await self.db.call(self.actor, service, method, args, kwargs, admin=self.admin_scope)


def _require_admin_user(tx: Tx) -> None:
    user = tx.user_row()
    if not user.is_admin:
        raise Forbidden("this needs an admin")
    if not (user.is_active and user.approved_at is not None):
        raise NotApproved("your account is not approved")
