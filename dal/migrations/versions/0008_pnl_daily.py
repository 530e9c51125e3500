"""pnl_daily: realized PnL per local day and quote currency (the /pnl chart's daily series)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import dal.types

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "pnl_daily",
        sa.Column("portfolio_id", ID, nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("currency", sa.String(length=16), nullable=False),
        sa.Column("realized_pnl", dal.types.Money(), nullable=False),
        sa.ForeignKeyConstraint(
            ["portfolio_id"],
            ["portfolios.id"],
            name=op.f("fk_pnl_daily_portfolio_id_portfolios"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("portfolio_id", "day", "currency", name=op.f("pk_pnl_daily")),
    )
    # Existing trades: every portfolio's daily series from the DAL's own function, so the
    # result is what `db verify` expects.
    from dal.pnl_summary import rebuild_daily

    conn = op.get_bind()
    for (portfolio_id,) in conn.execute(sa.text("SELECT id FROM portfolios ORDER BY id")):
        rebuild_daily(conn, portfolio_id)


def downgrade() -> None:
    op.drop_table("pnl_daily")
