"""seed the brokers reference table

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BROKERS = [
    {"code": "BINANCE", "name": "Binance"},
    {"code": "IBKR", "name": "Interactive Brokers"},
    {"code": "PAPER", "name": "Paper trading"},
]

brokers = sa.table("brokers", sa.column("code", sa.String), sa.column("name", sa.Text))


def upgrade() -> None:
    existing = {row[0] for row in op.get_bind().execute(sa.select(brokers.c.code))}
    rows = [b for b in BROKERS if b["code"] not in existing]
    if rows:
        op.bulk_insert(brokers, rows)


def downgrade() -> None:
    op.execute(brokers.delete().where(brokers.c.code.in_([b["code"] for b in BROKERS])))
