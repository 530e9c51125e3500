"""Users: registration, approval, revocation, admin bootstrap."""

from __future__ import annotations

import functools
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from dal import schema as t
from dal.errors import Conflict, Forbidden, InvalidInput, NotFound
from dal.models import valid_id
from dal.ownership import forget_portfolios
from dal.pnl_summary import rebuild_summary
from dal.scope import Tx, long_running
from dal.types import new_uid
from dal.vocabulary import NOTIFICATION_KINDS

users = t.users

PAPER_ACCOUNT = "Paper"


@functools.cache
def _time_zones() -> dict[str, str]:
    """IANA zone names (from tzdata) by their lower case: "utc" is UTC, "europe/berlin"
    Europe/Berlin. "localtime" and file paths are not zones."""
    from zoneinfo import available_timezones

    return {name.lower(): name for name in available_timezones() if name != "localtime"}


DEFAULT_PORTFOLIO = "Main"


def user_by_telegram_id(conn: sa.Connection, telegram_user_id: int | str) -> sa.Row[Any] | None:
    return conn.execute(
        sa.select(users).where(users.c.telegram_user_id == str(telegram_user_id))
    ).one_or_none()


def user_by_ref(conn: sa.Connection, ref: int | str) -> sa.Row[Any] | None:
    """A user by Telegram id, by ``@username`` or by username."""
    text = str(ref).strip()
    if text.lstrip("-").isdigit():
        return user_by_telegram_id(conn, text)
    name = text.removeprefix("@")
    return conn.execute(
        sa.select(users).where(sa.func.lower(users.c.username) == name.lower())
    ).first()


class UserService:
    def __init__(self, tx: Tx) -> None:
        self.tx = tx

    # --- open to everyone -----------------------------------------------------------------------
    def register(
        self,
        telegram_user_id: int | str,
        username: str | None = None,
        chat_id: int | None = None,
        *,
        wrote_to_us: bool = True,
    ) -> sa.Row[Any]:
        """Register a Telegram user as pending (idempotent; refreshes username and chat id).
        Tradebook itself (the system actor) registers the sender of /start; no user can
        register, or rewrite the chat of, anyone. ``wrote_to_us``: the user sent something,
        so a chat marked unreachable works again (not so for admins listed in the settings)."""
        if not self.tx.actor.is_system:
            self.tx.require_approved()
            raise Forbidden("users are registered by tradebook when they send /start")
        conn = self.tx.conn
        existing = user_by_telegram_id(conn, telegram_user_id)
        if existing is not None:
            changes: dict[str, Any] = {}
            if username and username != existing.username:
                changes["username"] = username
            if chat_id is not None and chat_id != existing.telegram_chat_id:
                changes["telegram_chat_id"] = chat_id
            if wrote_to_us and existing.unreachable_at is not None:
                changes["unreachable_at"] = None  # they wrote to us: the chat works again
            if changes:
                conn.execute(users.update().where(users.c.id == existing.id).values(**changes))
                existing = conn.execute(sa.select(users).where(users.c.id == existing.id)).one()
            return existing
        user_id = conn.execute(
            users.insert()
            .values(
                uid=new_uid(),
                telegram_user_id=str(telegram_user_id),
                username=username,
                telegram_chat_id=chat_id,
                created_at=self.tx.now(),
            )
            .returning(users.c.id)
        ).scalar_one()
        self.tx.audit(
            "USER", user_id, "CREATE", {"telegram_user_id": str(telegram_user_id)}, user_id=user_id
        )
        return conn.execute(sa.select(users).where(users.c.id == user_id)).one()

    def me(self) -> sa.Row[Any]:
        """The acting user's row, whatever their approval state."""
        return self.tx.user_row()

    @long_running
    def set_timezone(self, zone: str) -> str:
        """Set the user's time zone (an IANA name, any case); returns its canonical name."""
        known = _time_zones().get(zone.lower()) if isinstance(zone, str) else None
        if known is None:
            shown = zone[:40] + "…" if isinstance(zone, str) and len(zone) > 40 else zone
            raise InvalidInput(
                f"unknown time zone {shown!r}; use an IANA name like Europe/Berlin"
            ) from None
        zone = known
        user_id = self.tx.user_id
        conn = self.tx.conn
        if zone == self.tx.user_row().timezone:
            return zone
        conn.execute(users.update().where(users.c.id == user_id).values(timezone=zone))
        # The PnL summary is kept in the owner's local days: rebuild it in the new zone.
        portfolio_ids = conn.execute(
            sa.select(t.portfolios.c.id).where(t.portfolios.c.user_id == user_id)
        ).scalars()
        rows = sum(rebuild_summary(conn, pid, zone) for pid in portfolio_ids)
        self.tx.audit("USER", user_id, "UPDATE", {"timezone": zone, "pnl_summary_rows": rows})
        self.tx.forget_user()
        return zone

    def set_muted(self, muted: bool) -> sa.Row[Any]:
        """/mute and /unmute: notifications (fills, breaches, alerts) on or off."""
        user_id = self.tx.user_id
        self.tx.conn.execute(
            users.update().where(users.c.id == user_id).values(notifications_muted=bool(muted))
        )
        self.tx.audit("USER", user_id, "UPDATE", {"notifications_muted": bool(muted)})
        self.tx.forget_user()
        return self.tx.user_row()

    def set_notify(self, kind: str, on: bool) -> sa.Row[Any]:
        """/notify: one kind of notification (fills, alerts, reports, risk) on or off."""
        if kind not in NOTIFICATION_KINDS:
            raise InvalidInput(f"notifications are {', '.join(NOTIFICATION_KINDS)}, not {kind!r}")
        user_id = self.tx.user_id
        column = f"notify_{kind}"
        self.tx.conn.execute(users.update().where(users.c.id == user_id).values({column: on}))
        self.tx.audit("USER", user_id, "UPDATE", {column: bool(on)})
        self.tx.forget_user()
        return self.tx.user_row()

    def set_reachable(self, user_id: int, reachable: bool) -> None:
        """Record that a user's chat blocked the bot (Telegram 403), or works again (system)."""
        self.tx.require_admin()
        self.tx.conn.execute(
            users.update()
            .where(users.c.id == user_id)
            .values(unreachable_at=None if reachable else self.tx.now())
        )

    # --- admin ----------------------------------------------------------------------------------
    def lookup(self, telegram_user_id: int | str) -> sa.Row[Any] | None:
        """A user by Telegram id, whatever their state (admin scope: the bot's middleware)."""
        self.tx.require_admin()
        return user_by_telegram_id(self.tx.conn, telegram_user_id)

    def find(self, ref: int | str) -> sa.Row[Any]:
        """A user by Telegram id or @username (admin scope)."""
        self.tx.require_admin()
        return self._target(ref)

    def find_by_id(self, user_id: int) -> sa.Row[Any]:
        """A user by database id (admin scope)."""
        self.tx.require_admin()
        if not valid_id(user_id):
            raise NotFound(f"no user #{user_id}")
        row = self.tx.conn.execute(sa.select(users).where(users.c.id == user_id)).one_or_none()
        if row is None:
            raise NotFound(f"no user #{user_id}")
        return row

    def admins(self) -> list[sa.Row[Any]]:
        """Active, approved admins (to notify them of registrations)."""
        self.tx.require_admin()
        return list(
            self.tx.conn.execute(
                sa.select(users)
                .where(users.c.is_admin, users.c.is_active, users.c.approved_at.is_not(None))
                .order_by(users.c.id)
            )
        )

    def pending(self) -> list[sa.Row[Any]]:
        self.tx.require_admin()
        return list(
            self.tx.conn.execute(
                sa.select(users)
                .where(users.c.approved_at.is_(None), users.c.is_active)
                .order_by(users.c.created_at, users.c.id)
            )
        )

    def list_all(self) -> list[sa.Row[Any]]:
        self.tx.require_admin()
        return list(self.tx.conn.execute(sa.select(users).order_by(users.c.id)))

    def _target(self, ref: int | str) -> sa.Row[Any]:
        row = user_by_ref(self.tx.conn, ref)
        if row is None:
            raise NotFound(f"no user {ref}")
        return row

    def approve(self, ref: int | str) -> sa.Row[Any]:
        """Approve a user; on first approval they get a Paper account and a funded "Main"."""
        self.tx.require_admin()
        target = self._target(ref)
        if not target.is_active:
            raise Conflict(
                f"{_who(target)} is deactivated; /reactivate them first if they should return"
            )
        if target.approved_at is not None:
            return target
        now = self.tx.now()
        self.tx.conn.execute(
            users.update()
            .where(users.c.id == target.id)
            .values(approved_at=now, approved_by_user_id=self.tx.actor.user_id, is_active=True)
        )
        self.tx.audit("USER", target.id, "APPROVE", {"telegram_user_id": target.telegram_user_id})
        ensure_paper_portfolio(self.tx, target.id)
        return self._target(target.telegram_user_id)

    def revoke(self, ref: int | str) -> sa.Row[Any]:
        """Withdraw approval: the user is back to pending and can do nothing until re-approved."""
        self.tx.require_admin()
        target = self._target(ref)
        if target.id == self.tx.actor.user_id:
            raise Forbidden("you cannot revoke yourself")
        self.tx.conn.execute(
            users.update()
            .where(users.c.id == target.id)
            .values(approved_at=None, approved_by_user_id=None)
        )
        self.tx.audit("USER", target.id, "REVOKE", {"telegram_user_id": target.telegram_user_id})
        return self._target(target.telegram_user_id)

    def deactivate(self, ref: int | str) -> sa.Row[Any]:
        """Lock a user out (their data stays); /reactivate lets them back."""
        self.tx.require_admin()
        target = self._target(ref)
        if target.id == self.tx.actor.user_id:
            raise Forbidden("you cannot deactivate yourself")
        if target.is_admin and target.is_active and self._active_admins() == 1:
            raise Forbidden("the last active admin cannot be deactivated")
        return self._set(target, "DEACTIVATE", is_active=False)

    def reactivate(self, ref: int | str) -> sa.Row[Any]:
        """Let a deactivated user back in, with the approval they had."""
        self.tx.require_admin()
        return self._set(self._target(ref), "ACTIVATE", is_active=True)

    def promote(self, ref: int | str) -> sa.Row[Any]:
        """Make an approved, active user an admin."""
        self.tx.require_admin()
        target = self._target(ref)
        if target.approved_at is None or not target.is_active:
            raise Conflict(f"{_who(target)} is not an approved, active user")
        return self._set(target, "UPDATE", is_admin=True)

    def demote(self, ref: int | str) -> sa.Row[Any]:
        """Take a user's admin rights (never the last active admin's)."""
        self.tx.require_admin()
        target = self._target(ref)
        if target.is_admin and target.is_active and self._active_admins() == 1:
            raise Forbidden("the last active admin cannot be demoted: promote another first")
        return self._set(target, "UPDATE", is_admin=False)

    def _active_admins(self) -> int:
        count: int = self.tx.conn.execute(
            sa.select(sa.func.count())
            .select_from(users)
            .where(users.c.is_admin.is_(True), users.c.is_active.is_(True))
        ).scalar_one()
        return count

    def _set(self, target: sa.Row[Any], action: str, **values: bool) -> sa.Row[Any]:
        """Change a user's flags, audited with what changed (nothing changed: no audit)."""
        changed = {k: v for k, v in values.items() if getattr(target, k) != v}
        if changed:
            self.tx.conn.execute(users.update().where(users.c.id == target.id).values(changed))
            self.tx.audit(
                "USER",
                target.id,
                action,
                {"telegram_user_id": target.telegram_user_id, **changed},
            )
        return self._target(target.telegram_user_id)

    def bootstrap_admins(self, telegram_ids: list[int] | tuple[int, ...]) -> list[sa.Row[Any]]:
        """Make the configured Telegram ids approved admins (system actor; idempotent)."""
        if not self.tx.actor.is_system:
            raise Forbidden("only tradebook itself bootstraps admins")
        rows = []
        for telegram_id in telegram_ids:
            row = self.register(telegram_id, wrote_to_us=False)  # a restart is not a message
            if not (row.is_admin and row.is_active and row.approved_at is not None):
                self.tx.conn.execute(
                    users.update()
                    .where(users.c.id == row.id)
                    .values(
                        is_admin=True,
                        is_active=True,
                        approved_at=row.approved_at or self.tx.now(),
                    )
                )
                self.tx.audit("USER", row.id, "APPROVE", {"bootstrap_admin": True}, user_id=row.id)
            ensure_paper_portfolio(self.tx, row.id)
            rows.append(self._target(telegram_id))
        return rows


def ensure_paper_portfolio(tx: Tx, user_id: int) -> None:
    """Give a user a PAPER account "Paper" and a default portfolio "Main" funded with the
    configured starting cash, unless they already have a default portfolio."""
    conn = tx.conn
    has_default = conn.execute(
        sa.select(t.portfolios.c.id).where(
            t.portfolios.c.user_id == user_id, t.portfolios.c.is_default
        )
    ).first()
    if has_default is not None:
        return
    broker_id = conn.execute(
        sa.select(t.brokers.c.id).where(t.brokers.c.code == "PAPER")
    ).scalar_one_or_none()
    if broker_id is None:
        raise Conflict("the PAPER broker is missing; run `tradebook db upgrade`")
    currency = tx.settings.paper_currency
    now = tx.now()
    account_id = conn.execute(
        sa.select(t.accounts.c.id).where(
            t.accounts.c.user_id == user_id, t.accounts.c.name == PAPER_ACCOUNT
        )
    ).scalar_one_or_none()
    if account_id is None:
        account_id = conn.execute(
            t.accounts.insert()
            .values(
                uid=new_uid(),
                user_id=user_id,
                broker_id=broker_id,
                name=PAPER_ACCOUNT,
                base_currency=currency,
                created_at=now,
            )
            .returning(t.accounts.c.id)
        ).scalar_one()
        tx.audit(
            "ACCOUNT",
            account_id,
            "CREATE",
            {"name": PAPER_ACCOUNT, "broker": "PAPER"},
            user_id=user_id,
        )
    name = DEFAULT_PORTFOLIO
    taken = conn.execute(
        sa.select(t.portfolios.c.id).where(
            t.portfolios.c.user_id == user_id, t.portfolios.c.name == name
        )
    ).first()
    if taken is not None:
        # A non-default "Main" exists (made by hand): promote it rather than invent a name.
        conn.execute(
            t.portfolios.update().where(t.portfolios.c.id == taken.id).values(is_default=True)
        )
        tx.audit("PORTFOLIO", taken.id, "UPDATE", {"is_default": True}, user_id=user_id)
        forget_portfolios(tx)
        return
    portfolio_id = conn.execute(
        t.portfolios.insert()
        .values(
            uid=new_uid(),
            user_id=user_id,
            account_id=account_id,
            name=name,
            is_default=True,
            created_at=now,
        )
        .returning(t.portfolios.c.id)
    ).scalar_one()
    tx.audit("PORTFOLIO", portfolio_id, "CREATE", {"name": name, "default": True}, user_id=user_id)
    conn.execute(
        users.update().where(users.c.id == user_id).values(current_portfolio_id=portfolio_id)
    )
    cash = Decimal(tx.settings.paper_starting_cash or 0)
    if cash > 0:
        from dal.cash import insert_movement

        insert_movement(
            tx, portfolio_id, "DEPOSIT", cash, currency, "paper starting cash", user_id=user_id
        )


def _who(row: Any) -> str:
    return f"@{row.username}" if row.username else f"user {row.telegram_user_id}"
