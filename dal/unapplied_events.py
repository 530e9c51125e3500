"""Broker events the order desk could not apply: kept durably until they apply.

Each row belongs to the portfolio's owner, who sees their own; tradebook itself (the system
actor) lists every pending one to try them again.
"""

from __future__ import annotations

import builtins
from typing import Any

import sqlalchemy as sa

from dal import schema as t
from dal.models import check_json_arg, check_text
from dal.ownership import owned_portfolio, owned_row
from dal.scope import Tx

events = t.unapplied_events


class UnappliedEventService:
    def __init__(self, tx: Tx) -> None:
        self.tx = tx

    def keep(self, portfolio_id: int, event: dict[str, Any], error: str) -> sa.Row[Any]:
        """Keep an event of one of the actor's portfolios that could not be applied."""
        portfolio = owned_portfolio(self.tx, portfolio_id)
        check_json_arg(event, "event")
        error = check_text(error, "error", limit=500) or "unknown error"
        now = self.tx.now()
        row_id = self.tx.conn.execute(
            events.insert()
            .values(
                user_id=portfolio.user_id,
                portfolio_id=portfolio.id,
                event_json=event,
                error=error,
                attempts=1,
                created_at=now,
                last_tried_at=now,
            )
            .returning(events.c.id)
        ).scalar_one()
        return owned_row(self.tx, events, row_id, "kept event")

    def list(self, include_applied: bool = False) -> list[sa.Row[Any]]:
        """The actor's kept events (every user's in admin scope), oldest first."""
        query = sa.select(events).where(self.tx.owned(events.c.user_id))
        if not include_applied:
            query = query.where(events.c.applied_at.is_(None))
        return list(self.tx.conn.execute(query.order_by(events.c.id)))

    def pending(self) -> builtins.list[sa.Row[Any]]:
        """Every kept event not applied yet (admin or system scope: tradebook's retry)."""
        self.tx.require_admin()
        return self.list()

    def failed_again(self, event_id: int, error: str) -> None:
        row = owned_row(self.tx, events, event_id, "kept event")
        self.tx.conn.execute(
            events.update()
            .where(events.c.id == row.id)
            .values(
                attempts=row.attempts + 1,
                error=check_text(error, "error", limit=500) or row.error,
                last_tried_at=self.tx.now(),
            )
        )

    def applied(self, event_id: int) -> None:
        row = owned_row(self.tx, events, event_id, "kept event")
        self.tx.conn.execute(
            events.update().where(events.c.id == row.id).values(applied_at=self.tx.now())
        )
