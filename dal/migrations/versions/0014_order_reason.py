"""orders.meta_json: why an order ended is under one key, "reason", whether it was refused
before it reached a broker (stored until now as "reject_reason") or ended there

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

import dal.types

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_orders = sa.table(
    "orders",
    sa.column("id", sa.BigInteger()),
    sa.column("status", sa.Text()),
    sa.column("meta_json", dal.types.JSONDoc()),
)


def _rows_mentioning(key: str) -> list[tuple[int, str, dict[str, Any]]]:
    mentions = sa.cast(_orders.c.meta_json, sa.Text).contains(f'"{key}"')
    query = sa.select(_orders.c.id, _orders.c.status, _orders.c.meta_json).where(mentions)
    return [(row.id, row.status, row.meta_json) for row in op.get_bind().execute(query)]


def _write(order_id: int, meta: dict[str, Any]) -> None:
    op.get_bind().execute(_orders.update().where(_orders.c.id == order_id).values(meta_json=meta))


def upgrade() -> None:
    for order_id, _status, meta in _rows_mentioning("reject_reason"):
        if "reject_reason" in meta:
            reason = meta.pop("reject_reason")
            meta.setdefault("reason", reason)
            _write(order_id, meta)


def downgrade() -> None:
    # The earlier code read a refusal from "reject_reason"; "reason" stays as well, since it
    # also held why a broker ended an order.
    for order_id, status, meta in _rows_mentioning("reason"):
        if status == "REJECTED" and "reason" in meta and "reject_reason" not in meta:
            meta["reject_reason"] = meta["reason"]
            _write(order_id, meta)
