"""The unit of work: ``async with db.session(actor) as s:`` is one transaction.

How a transaction executes (README, "DAL design"): every query function and service in dal/ is
plain synchronous SQLAlchemy Core on a ``Connection``. A session runs them where they are
cheapest for its engine:

* SQLite: on one dedicated writer thread holding one stdlib-sqlite3 connection (plus a small
  pool of reader threads for read-only sessions). A service call is one thread hop, however
  many statements it runs; SQLAlchemy's aiosqlite adapter would pay several hops per statement
  (shared/notes/performance.md: ≈ 440 vs ≈ 1,700 fills/s). The single writer also serializes
  writers by construction; ``BEGIN IMMEDIATE`` and the busy timeout cover other processes.
* PostgreSQL: on one pooled asyncpg connection held for the session, each service call in one
  ``AsyncConnection.run_sync`` (greenlet) step; rows are locked with ``SELECT … FOR UPDATE``.

Either way the bot and the strategies see one async API and the query modules have one code
path for both engines.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from dal.engine import create_engine, create_sync_sqlite_engine, is_sqlite
from dal.errors import Forbidden, NotApproved
from dal.scope import Actor, Tx

if TYPE_CHECKING:
    from dal.accounts import AccountService, PortfolioService
    from dal.audit import AuditLogger
    from dal.brokers import BrokerService
    from dal.cash import CashService
    from dal.instruments import InstrumentService
    from dal.orders import OrderService
    from dal.positions import PositionService
    from dal.risk import RiskService
    from dal.strategies import StrategyRunService, StrategyService
    from dal.trades import TradeService
    from dal.user_configs import AlertService, ScheduleService, ScreenerService
    from dal.users import UserService

T = TypeVar("T")
READER_THREADS = 2


class _Lane:
    """One thread with one held SQLite connection: everything submitted runs in order."""

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


class _SQLiteRunner:
    def __init__(self, url: str) -> None:
        # The writer and the readers each hold their own connection; no pool needed.
        self.engine = create_sync_sqlite_engine(url, poolclass=sa.pool.NullPool)
        self.writer = _Lane(self.engine, "tradebook-writer")
        self._write_lock = asyncio.Lock()
        self._readers: asyncio.Queue[_Lane] = asyncio.Queue()
        for i in range(READER_THREADS):
            lane = _Lane(self.engine, f"tradebook-reader-{i}")
            self._readers.put_nowait(lane)
        self._all_readers = list(self._readers._queue)  # type: ignore[attr-defined]

    @contextlib.asynccontextmanager
    async def connection(self, readonly: bool) -> AsyncIterator[_Channel]:
        if readonly:
            lane = await self._readers.get()
            try:
                yield _LaneChannel(lane, begin="DEFERRED")
            finally:
                self._readers.put_nowait(lane)
        else:
            async with self._write_lock:
                yield _LaneChannel(self.writer, begin="IMMEDIATE")

    async def dispose(self) -> None:
        await asyncio.to_thread(self.writer.close)
        for lane in self._all_readers:
            await asyncio.to_thread(lane.close)
        self.engine.dispose()


class _PostgresRunner:
    def __init__(self, url: str, engine: AsyncEngine | None = None) -> None:
        self.engine = engine or create_engine(url)

    @contextlib.asynccontextmanager
    async def connection(self, readonly: bool) -> AsyncIterator[_Channel]:
        async with self.engine.connect() as conn:
            yield _AsyncChannel(conn)

    async def dispose(self) -> None:
        await self.engine.dispose()


class _Channel:
    """Runs a sync function on the session's connection, inside the session's transaction."""

    async def run(self, fn: Callable[[sa.Connection], T]) -> T:
        raise NotImplementedError

    async def finish(self, commit: bool) -> None:
        raise NotImplementedError

    async def run_once(self, fn: Callable[[sa.Connection], T]) -> T:
        """A whole transaction around ``fn`` in one step (one thread hop on SQLite)."""
        raise NotImplementedError


class _LaneChannel(_Channel):
    def __init__(self, lane: _Lane, begin: str) -> None:
        self._lane = lane
        self._begin = begin

    async def run(self, fn: Callable[[sa.Connection], T]) -> T:
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

    async def run_once(self, fn: Callable[[sa.Connection], T]) -> T:
        def whole(conn: sa.Connection) -> T:
            # BEGIN, the work and COMMIT (or ROLLBACK) in one thread hop.
            conn.execution_options(sqlite_begin=self._begin).begin()
            try:
                result = fn(conn)
            except BaseException:
                conn.rollback()
                raise
            conn.commit()
            return result

        return await self._lane.submit(whole)


class _AsyncChannel(_Channel):
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def run(self, fn: Callable[[sa.Connection], T]) -> T:
        if not self._conn.in_transaction():
            await self._conn.begin()
        return await self._conn.run_sync(fn)

    async def finish(self, commit: bool) -> None:
        if self._conn.in_transaction():
            await (self._conn.commit() if commit else self._conn.rollback())

    async def run_once(self, fn: Callable[[sa.Connection], T]) -> T:
        async with self._conn.begin():
            return await self._conn.run_sync(fn)


class _AsyncService:
    """Every public method of a sync service class, as a coroutine run on the session."""

    def __init__(self, session: Session, cls: type) -> None:
        self._session = session
        self._cls = cls

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._cls, name, None)
        if name.startswith("_") or not callable(method):
            raise AttributeError(f"{self._cls.__name__} has no method {name!r}")

        async def call(*args: Any, **kwargs: Any) -> Any:
            return await self._session.run(lambda tx: getattr(self._cls(tx), name)(*args, **kwargs))

        call.__name__ = name
        call.__doc__ = method.__doc__
        return call


class _service:
    def __init__(self, target: str) -> None:
        self._target = target
        self._cls: type | None = None

    def resolve(self) -> type:
        if self._cls is None:
            import importlib

            module, name = self._target.split(":")
            self._cls = getattr(importlib.import_module(module), name)
        return self._cls

    def __get__(self, session: Session | None, owner: type) -> Any:
        if session is None:
            return self
        return _AsyncService(session, self.resolve())


class Session:
    """One transaction for one actor. Services hang off it: ``await s.orders.place(...)``."""

    def __init__(self, channel: _Channel, actor: Actor, admin_scope: bool, db: Database) -> None:
        self._channel = channel
        self.actor = actor
        self.admin_scope = admin_scope
        self.db = db
        self._tx_state: dict[str, Any] = {}

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(tx, *args, **kwargs)`` on the session's connection, in its transaction."""

        def call(conn: sa.Connection) -> T:
            tx = Tx(
                conn, self.actor, self.admin_scope, self._tx_state, self.db.settings, self.db.cache
            )
            return fn(tx, *args, **kwargs)

        return await self._channel.run(call)

    # The services, each an async facade over its synchronous class: ``await s.orders.place()``
    # runs ``OrderService(tx).place()`` in one step on the session's connection.
    users: UserService = _service("dal.users:UserService")  # type: ignore[assignment]
    brokers: BrokerService = _service("dal.brokers:BrokerService")  # type: ignore[assignment]
    accounts: AccountService = _service("dal.accounts:AccountService")  # type: ignore[assignment]
    portfolios: PortfolioService = _service("dal.accounts:PortfolioService")  # type: ignore[assignment]
    strategies: StrategyService = _service("dal.strategies:StrategyService")  # type: ignore[assignment]
    strategy_runs: StrategyRunService = _service("dal.strategies:StrategyRunService")  # type: ignore[assignment]
    instruments: InstrumentService = _service("dal.instruments:InstrumentService")  # type: ignore[assignment]
    orders: OrderService = _service("dal.orders:OrderService")  # type: ignore[assignment]
    trades: TradeService = _service("dal.trades:TradeService")  # type: ignore[assignment]
    positions: PositionService = _service("dal.positions:PositionService")  # type: ignore[assignment]
    cash: CashService = _service("dal.cash:CashService")  # type: ignore[assignment]
    risk: RiskService = _service("dal.risk:RiskService")  # type: ignore[assignment]
    alerts: AlertService = _service("dal.user_configs:AlertService")  # type: ignore[assignment]
    schedules: ScheduleService = _service("dal.user_configs:ScheduleService")  # type: ignore[assignment]
    screeners: ScreenerService = _service("dal.user_configs:ScreenerService")  # type: ignore[assignment]
    audit: AuditLogger = _service("dal.audit:AuditLogger")  # type: ignore[assignment]


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
        ``readonly=True`` runs on a reader (SQLite: BEGIN DEFERRED, concurrent with writes).
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
        service: str,
        method: str,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        admin: bool = False,
    ) -> Any:
        """One service call as its own transaction, in one step: what ``db.scoped(actor)``
        does for every call (half the thread hops of a one-call session on SQLite)."""
        descriptor = Session.__dict__.get(service)
        if not isinstance(descriptor, _service) or method.startswith("_"):
            raise AttributeError(f"no service method {service}.{method}")
        cls = descriptor.resolve()
        state: dict[str, Any] = {}

        def body(conn: sa.Connection) -> Any:
            tx = Tx(conn, actor, admin, state, self.settings, self.cache)
            if admin and not actor.is_system:
                _require_admin_user(tx)
            return getattr(cls(tx), method)(*args, **(kwargs or {}))

        async with self._get_runner().connection(readonly=False) as channel:
            return await channel.run_once(body)

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


class _ScopedService:
    def __init__(self, dal: ScopedDal, service: str) -> None:
        self._dal = dal
        self._service = service

    def __getattr__(self, name: str) -> Callable[..., Any]:
        async def call(*args: Any, **kwargs: Any) -> Any:
            dal = self._dal
            return await dal.db.call(
                dal.actor, self._service, name, args, kwargs, admin=dal.admin_scope
            )

        call.__name__ = name
        return call


class ScopedDal:
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

    def __getattr__(self, service: str) -> Any:
        if service.startswith("_") or not isinstance(getattr(Session, service, None), _service):
            raise AttributeError(service)
        return _ScopedService(self, service)


def _require_admin_user(tx: Tx) -> None:
    user = tx.user_row()
    if not user.is_admin:
        raise Forbidden("this needs an admin")
    if not (user.is_active and user.approved_at is not None):
        raise NotApproved("your account is not approved")
