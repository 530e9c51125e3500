"""The unit of work: ``async with db.session(actor) as s:`` is one transaction.

The bot and the strategies see one async API (``Database``, ``Session``, ``ScopedDal``) and the
query modules one code path for both engines; how a transaction runs on each engine is
dal/execution.py.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Concatenate, ParamSpec, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from dal.engine import is_sqlite
from dal.errors import Forbidden, NotApproved
from dal.execution import Channel, PostgresRunner, SQLiteRunner
from dal.scope import Actor, Tx, is_long_running, is_read_only
from dal.services import Services

T = TypeVar("T")
P = ParamSpec("P")


class Session(Services):
    """One transaction for one actor. Services hang off it: ``await s.orders.place(...)``."""

    def __init__(self, channel: Channel, actor: Actor, admin_scope: bool, db: Database) -> None:
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
            ),
        )

    def _get_runner(self) -> SQLiteRunner | PostgresRunner:
        if self._runner is None:
            if self.dialect == "sqlite":
                self._runner = SQLiteRunner(self.url)
            else:
                self._runner = PostgresRunner(self.url)
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
