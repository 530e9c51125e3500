"""orders: a partial index of the open orders per portfolio, newest first (/orders)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The same predicate as dal.schema.OPEN_ORDER: queries repeat it with literal values.
OPEN = sa.text("status IN ('NEW', 'PARTIALLY_FILLED')")


def upgrade() -> None:
    op.create_index(
        "ix_orders_open_portfolio_id_placed_at",
        "orders",
        ["portfolio_id", "placed_at", "id"],
        unique=False,
        sqlite_where=OPEN,
        postgresql_where=OPEN,
    )


def downgrade() -> None:
    op.drop_index("ix_orders_open_portfolio_id_placed_at", table_name="orders")
