"""The unit of work: ``async with db.session(actor) as s:`` is one transaction.

The bot and the strategies see one async API (``Database``, ``Session``, ``ScopedDal``) and the
query modules one code path for both engines; how a transaction runs on each engine is
dal/execution.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Concatenate, ParamSpec, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from dal.engine import is_sqlite
from dal.errors import ConcurrentUpdate, Forbidden, NotApproved
from dal.execution import Channel, PostgresRunner, SQLiteRunner
from dal.scope import Actor, Tx, is_long_running, is_read_only
from dal.services import Services, TxServices

T = TypeVar("T")
P = ParamSpec("P")
log = logging.getLogger("tradebook.dal")


class Session(Services):
    """One transaction for one actor. Services hang off it: ``await s.orders.place(...)``."""

    def __init__(self, channel: Channel, actor: Actor, admin_scope: bool, db: Database) -> None:
        self._channel = channel
        self.actor = actor
        self.admin_scope = admin_scope
        self._db = db  # private: code holding a session must not reach the unscoped database
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
            lambda tx: method(service(tx), *args, **kwargs),
            is_long_running(method, args, kwargs),
        )

    async def _run(self, fn: Callable[[Tx], T], long_running: bool) -> T:
        def call(conn: sa.Connection) -> T:
            tx = Tx(
                conn,
                self.actor,
                self.admin_scope,
                self._tx_state,
                self._db.settings,
                self._db.cache,
            )
            return fn(tx)

        return await self._channel.run(call, long_running)


@dataclass
class DalSettings:
    """The settings the DAL itself needs (a subset of tradebook.settings.Settings)."""

    paper_starting_cash: Any = None
    paper_currency: str = "USDT"
    admin_telegram_ids: tuple[int, ...] = ()
    # Runs of a transaction PostgreSQL aborts for a deadlock or serialization failure.
    transaction_attempts: int = 5
    # PostgreSQL connections this process may hold (see PostgresRunner for the budget), and
    # how long a transaction waits for one when all are busy.
    pool_size: int = 10
    pool_timeout_s: float = 30.0


class Database:
    """Entry point: ``db = Database(url)``; ``async with db.session(actor) as s: ...``."""

    def __init__(self, url: str, settings: DalSettings | None = None) -> None:
        from decimal import Decimal

        self.url = make_url(url).render_as_string(hide_password=False)
        self.settings = settings or DalSettings(paper_starting_cash=Decimal("10000"))
        self.dialect = "sqlite" if is_sqlite(url) else "postgresql"
        self._runner: SQLiteRunner | PostgresRunner | None = None
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
                transaction_attempts=settings.db_transaction_attempts,
                pool_size=settings.db_pool_size,
            ),
        )

    def _get_runner(self) -> SQLiteRunner | PostgresRunner:
        if self._runner is None:
            if self.dialect == "sqlite":
                self._runner = SQLiteRunner(self.url)
            else:
                self._runner = PostgresRunner(
                    self.url, self.settings.pool_size, self.settings.pool_timeout_s
                )
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
        with _concurrent_update_is_clear():
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

    async def transaction(
        self,
        actor: Actor,
        unit: Callable[[Session], Awaitable[T]],
        *,
        admin: bool = False,
    ) -> T:
        """``await unit(session)`` as one transaction, run again from the start (in a new
        transaction) when PostgreSQL aborts it for a deadlock or serialization failure.

        ``unit`` may run more than once, so it must only work through the session (no
        messages sent, no state kept outside it) until it returns."""
        return await self._retrying(lambda: self._once(actor, unit, admin))

    async def _once(self, actor: Actor, unit: Callable[[Session], Awaitable[T]], admin: bool) -> T:
        async with self.session(actor, admin=admin) as s:
            return await unit(s)

    async def _retrying(self, attempt: Callable[[], Awaitable[T]]) -> T:
        attempts = max(1, self.settings.transaction_attempts)
        for number in range(1, attempts + 1):
            try:
                return await attempt()
            except ConcurrentUpdate as exc:
                if number == attempts:
                    raise ConcurrentUpdate(
                        f"{exc} It failed {attempts} times in a row; nothing was written. "
                        "Try again."
                    ) from exc
                log.info("transaction retried (%s, attempt %d of %d)", exc, number, attempts)
                # Jittered, growing pauses, so the transactions that collided do not collide
                # again in step.
                await asyncio.sleep(random.uniform(0, RETRY_PAUSE_S * 2**number))
        raise AssertionError("unreachable")

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
        # On PostgreSQL a one-call read saves BEGIN and COMMIT. On SQLite it is fastest as it
        # is, a transaction on the loop's thread (a reader lane costs a thread hop), unless the
        # writer connection is another task's (a batch on the writer thread, a session): then
        # it reads on a reader lane beside the writer instead of queueing behind it.
        runner = self._get_runner()
        readonly = is_read_only(method) and (
            isinstance(runner, PostgresRunner) or runner.writer_taken_by_another()
        )
        long_running = is_long_running(method, args, kwargs)

        def body(conn: sa.Connection) -> T:
            tx = Tx(conn, actor, admin, {}, self.settings, self.cache)
            if admin and not actor.is_system:
                _require_admin_user(tx)
            return method(service(tx), *args, **(kwargs or {}))

        async def once() -> T:
            with _concurrent_update_is_clear():
                if isinstance(runner, PostgresRunner):
                    return await runner.run_once(readonly, body)
                async with runner.connection(readonly=readonly) as channel:
                    return await channel.run_once(body, long_running)

        if self.dialect == "sqlite":  # writers are serialized: nothing to retry
            return await once()
        return await self._retrying(once)

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
        self._db = db  # private: handlers get a ScopedDal, never the unscoped database
        self.actor = actor
        self.admin_scope = admin

    def session(self, readonly: bool = False) -> contextlib.AbstractAsyncContextManager[Session]:
        return self._db.session(self.actor, admin=self.admin_scope, readonly=readonly)

    def as_admin(self) -> ScopedDal:
        return ScopedDal(self._db, self.actor, admin=True)

    async def run_method(
        self,
        service: type[Any],
        method: Callable[..., T],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> T:
        return await self._db.call(
            self.actor, service, method, args, kwargs, admin=self.admin_scope
        )

    async def transaction(self, unit: Callable[[Session], Awaitable[T]]) -> T:
        """``await unit(session)`` as one transaction, retried on deadlock (see Database)."""
        return await self._db.transaction(self.actor, unit, admin=self.admin_scope)

    async def run(self, unit: Callable[[TxServices], T]) -> T:
        """``unit(services)`` — a plain function calling the services of one transaction
        directly — as one transaction in one step, as a single service call runs: no hop to
        the event loop between its calls. Retried on deadlock like ``transaction``, so it
        must not act outside the services until it returns."""
        return await self._db.call(
            self.actor, _UnitOfWork, _UnitOfWork.run, (unit,), admin=self.admin_scope
        )


class _UnitOfWork:
    """A ``ScopedDal.run`` unit as the one method of a service (what ``Database.call`` runs)."""

    def __init__(self, tx: Tx) -> None:
        self.tx = tx

    def run(self, unit: Callable[[TxServices], T]) -> T:
        return unit(TxServices(self.tx))


# SQLSTATEs of a transaction PostgreSQL aborted because of concurrent ones: safe to run again.
RETRYABLE = {"40P01": "deadlock detected", "40001": "serialization failure"}
RETRY_PAUSE_S = 0.005


@contextlib.contextmanager
def _concurrent_update_is_clear() -> Iterator[None]:
    try:
        yield
    except sa.exc.DBAPIError as exc:
        what = RETRYABLE.get(getattr(exc.orig, "sqlstate", None) or "")
        if what is None:
            raise
        raise ConcurrentUpdate(
            f"The database aborted this change because another one touched the same rows at "
            f"the same time ({what})."
        ) from exc


def _require_admin_user(tx: Tx) -> None:
    user = tx.user_row()
    if not user.is_admin:
        raise Forbidden("this needs an admin")
    if not (user.is_active and user.approved_at is not None):
        raise NotApproved("your account is not approved")
