"""Exchange accounts: accounts.trading_mode (testnet until switched live) and instruments'
min_notional (the exchange's smallest order value)

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import dal.types

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A plain ADD COLUMN: a batch on SQLite would copy instruments and lose its expression index.
    op.add_column("instruments", sa.Column("min_notional", dal.types.Money(), nullable=True))
    with op.batch_alter_table("accounts") as batch:
        batch.add_column(
            sa.Column("trading_mode", sa.String(length=8), server_default="testnet", nullable=False)
        )
        batch.create_check_constraint(
            op.f("ck_accounts_trading_mode_valid"), "trading_mode IN ('testnet', 'live')"
        )


def downgrade() -> None:
    with op.batch_alter_table("accounts") as batch:
        batch.drop_constraint(op.f("ck_accounts_trading_mode_valid"), type_="check")
        batch.drop_column("trading_mode")
    op.drop_column("instruments", "min_notional")
