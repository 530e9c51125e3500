"""The audit trail: one row per state change, written inside its business transaction."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from dal import schema as t
from dal.errors import InvalidInput
from dal.models import check_json_arg
from dal.scope import Tx

audit_log = t.audit_log


def audit_row_of(entity_type: str, entity_id: Any, action: Any) -> sa.Insert:
    """The audit row of a row that a statement of data-modifying CTEs (PostgreSQL) inserts:
    ``entity_id`` is the inserting CTE's id column, ``action`` a literal or a bound parameter;
    the user, the details and the time are the parameters ``a_user_id``, ``a_details`` and
    ``a_created_at``."""
    return audit_log.insert().from_select(
        ["user_id", "entity_type", "entity_id", "action", "details_json", "created_at"],
        sa.select(
            sa.bindparam("a_user_id", type_=audit_log.c.user_id.type),
            sa.literal(entity_type),
            entity_id,
            action,
            sa.bindparam("a_details", type_=audit_log.c.details_json.type),
            sa.bindparam("a_created_at", type_=audit_log.c.created_at.type),
        ),
    )


class AuditLogger:
    def __init__(self, tx: Tx) -> None:
        self.tx = tx

    def log(
        self, entity_type: str, entity_id: int | None, action: str, details: dict[str, Any]
    ) -> None:
        """Record an action (admins only: the services audit what they do themselves with
        ``tx.audit``; a user-written row about any entity id would be a forged record)."""
        if entity_type not in t.AUDIT_ENTITIES:
            raise InvalidInput(f"unknown audit entity {entity_type!r}")
        if action not in t.AUDIT_ACTIONS:
            raise InvalidInput(f"unknown audit action {action!r}")
        check_json_arg(details, "details")
        self.tx.require_admin()
        self.tx.audit(entity_type, entity_id, action, details)

    def recent(self, limit: int = 50, entity_type: str | None = None) -> list[sa.Row[Any]]:
        """The acting user's own audit rows, newest first (every user's in admin scope)."""
        query = (
            sa.select(audit_log)
            .where(self.tx.owned(audit_log.c.user_id))
            .order_by(audit_log.c.created_at.desc(), audit_log.c.id.desc())
            .limit(min(max(limit, 1), 1000))
        )
        if entity_type:
            query = query.where(audit_log.c.entity_type == entity_type)
        return list(self.tx.conn.execute(query))
