"""Who is acting, and the per-transaction context every service works in.

Isolation by construction: services never take a user id from the caller. They read the
owner from ``tx`` and filter every user-facing query with ``tx.owned(column)``, which is
``column = <actor's user id>`` unless the session was opened with the explicit admin scope.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import sqlalchemy as sa

from dal import schema as t
from dal.clock import utc_now
from dal.compiled import DriverStatement
from dal.errors import Forbidden, NotApproved, NotFound

F = TypeVar("F", bound=Callable[..., Any])


def long_running(method: F) -> F:
    """Marks a service method whose work can take seconds (a replay of a portfolio's whole
    history): on SQLite it runs on the writer thread, so the event loop keeps getting its
    share of the GIL meanwhile, instead of on the loop's own thread like short transactions."""
    method.long_running = True  # type: ignore[attr-defined]  # a marker attribute on the function object
    return method


def long_running_when(predicate: Callable[..., bool]) -> Callable[[F], F]:
    """Marks a service method whose work is long for some arguments only (a batch of many
    fills): a call is long-running, as with ``long_running``, when ``predicate`` called with
    the call's arguments (without ``self``) says so."""

    def mark(method: F) -> F:
        method.long_running = predicate  # type: ignore[attr-defined]  # a marker attribute on the function object
        return method

    return mark


def is_long_running(
    fn: Callable[..., Any], args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
) -> bool:
    """Whether calling ``fn(self, *args, **kwargs)`` is long-running work."""
    marker = getattr(fn, "long_running", False)
    if marker is True:
        return True
    return callable(marker) and bool(marker(*args, **(kwargs or {})))


def read_only(method: F) -> F:
    """Marks a service method that only reads. Called as its own transaction
    (``db.scoped(actor)``) on PostgreSQL it runs on a connection in autocommit that the
    server holds read-only: one round trip per statement instead of BEGIN, statements,
    COMMIT. Under READ COMMITTED each statement reads its own snapshot either way, so it
    sees what it saw inside a transaction; a write from it is refused by the server."""
    method.read_only = True  # type: ignore[attr-defined]  # a marker attribute on the function object
    return method


def is_read_only(fn: Callable[..., Any]) -> bool:
    return getattr(fn, "read_only", False) is True


@dataclass(frozen=True, slots=True)
class Actor:
    """The user a session acts for; ``Actor.system()`` is tradebook itself (CLI, bootstrap)."""

    user_id: int | None
    is_system: bool = False

    @classmethod
    def system(cls) -> Actor:
        return cls(None, True)

    @classmethod
    def user(cls, user_id: int) -> Actor:
        return cls(int(user_id))


class Tx:
    """The connection, the actor and the scope of one transaction."""

    __slots__ = ("actor", "admin_scope", "cache", "conn", "settings", "state")

    def __init__(
        self,
        conn: sa.Connection,
        actor: Actor,
        admin_scope: bool,
        state: dict[str, Any],
        settings: Any,
        cache: dict[str, Any] | None = None,
    ) -> None:
        self.conn = conn
        self.actor = actor
        self.admin_scope = admin_scope or actor.is_system
        self.state = state  # shared by every call of one session
        self.settings = settings
        self.cache = cache if cache is not None else {}  # process-wide, immutable rows only

    @property
    def dialect(self) -> str:
        return self.conn.dialect.name

    def now(self) -> dt.datetime:
        return utc_now()

    # --- the acting user ------------------------------------------------------------------------
    def user_row(self) -> sa.Row[Any]:
        """The actor's users row, read once per session."""
        row = self.state.get("user")
        if row is None:
            if self.actor.user_id is None:
                raise NotFound("no user is acting")
            row = self.conn.execute(_USER, {"user_id": self.actor.user_id}).one_or_none()
            if row is None:
                raise NotApproved("unknown user; send /start to register")
            self.state["user"] = row
        return row

    def forget_user(self) -> None:
        self.state.pop("user", None)
        self.state.pop("owner_zones", None)
        self.state.pop("checked_portfolios", None)
        self.state.pop("approved", None)

    def require_user(self) -> sa.Row[Any] | None:
        """The approved, active acting user (None for the system actor)."""
        if self.actor.is_system:
            return None
        user = self.user_row()
        if not user.is_active:
            raise NotApproved("your account is deactivated")
        if user.approved_at is None:
            raise NotApproved("your account is waiting for approval by an admin")
        return user

    def require_approved(self) -> None:
        """``require_user`` where only the check matters: skipped once a statement of this
        session has proved it (the one-statement portfolio check joins the approved owner)."""
        if not self.state.get("approved"):
            self.require_user()

    def require_admin(self) -> None:
        """Admin actions need the explicit admin scope (``db.session(actor, admin=True)``)."""
        self.require_user()
        if not self.admin_scope:
            raise Forbidden("this needs an admin session")

    @property
    def user_id(self) -> int:
        """The acting user's id (approved); the system actor has none."""
        user = self.require_user()
        if user is None:
            raise Forbidden("the system actor owns nothing; act as a user")
        return int(user.id)

    def owner_id(self) -> int | None:
        """The user id every scoped query filters on; None in the admin scope (no filter)."""
        self.require_approved()
        return None if self.admin_scope else self.actor.user_id

    def owned(self, user_column: sa.ColumnElement[Any]) -> sa.ColumnElement[bool]:
        """Filter on ownership: the actor's rows only, unless this is the admin scope."""
        self.require_approved()
        if self.admin_scope:
            return sa.true()
        return user_column == self.actor.user_id

    # --- audit ----------------------------------------------------------------------------------
    def audit(
        self,
        entity_type: str,
        entity_id: int | None,
        action: str,
        details: dict[str, Any],
        *,
        user_id: int | None = None,
    ) -> None:
        """Write one audit row inside the current business transaction."""
        self.audit_many(entity_type, action, [(entity_id, details, user_id)])

    def audit_many(
        self,
        entity_type: str,
        action: str,
        rows: list[tuple[int | None, dict[str, Any], int | None]],
    ) -> None:
        """Audit rows ``(entity_id, details, user_id)`` of one action, in one statement."""
        now = self.now()
        params = [
            {
                "user_id": user_id if user_id is not None else self.actor.user_id,
                "entity_type": entity_type,
                "entity_id": entity_id,
                "action": action,
                "details_json": details,
                "created_at": now,
            }
            for entity_id, details, user_id in rows
        ]
        if len(params) == 1:
            _AUDIT_ONE.execute(self.conn, params[0])
        elif params:
            self.conn.execute(_AUDIT_INSERT, params)


_AUDIT_INSERT = t.audit_log.insert()
_AUDIT_ONE = DriverStatement(
    _AUDIT_INSERT,
    column_keys=["user_id", "entity_type", "entity_id", "action", "details_json", "created_at"],
)
_USER = sa.select(t.users).where(t.users.c.id == sa.bindparam("user_id"))
