"""pnl_summary: realized PnL, fees and trade count per day and month (what /pnl reads)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import dal.types

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


_COLUMNS_AT_0006 = (
    "portfolio_id",
    "period",
    "period_start",
    "instrument_id",
    "fee_currency",
    "realized_pnl",
    "fees",
    "trade_count",
)


def upgrade() -> None:
    op.create_table(
        "pnl_summary",
        sa.Column("portfolio_id", ID, nullable=False),
        sa.Column("period", sa.String(length=5), nullable=False),
        sa.Column("period_start", sa.Date(), nullable=False),
        sa.Column("instrument_id", ID, nullable=False),
        sa.Column("fee_currency", sa.String(length=16), nullable=False),
        sa.Column("realized_pnl", dal.types.Money(), nullable=False),
        sa.Column("fees", dal.types.Money(), nullable=False),
        sa.Column("trade_count", sa.Integer(), nullable=False),
        sa.CheckConstraint("period IN ('DAY', 'MONTH')", name=op.f("ck_pnl_summary_period_valid")),
        sa.CheckConstraint("trade_count >= 0", name=op.f("ck_pnl_summary_trade_count_nonneg")),
        sa.ForeignKeyConstraint(
            ["instrument_id"],
            ["instruments.id"],
            name=op.f("fk_pnl_summary_instrument_id_instruments"),
        ),
        sa.ForeignKeyConstraint(
            ["portfolio_id"],
            ["portfolios.id"],
            name=op.f("fk_pnl_summary_portfolio_id_portfolios"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "portfolio_id",
            "period",
            "period_start",
            "instrument_id",
            "fee_currency",
            name=op.f("pk_pnl_summary"),
        ),
    )
    op.create_index(
        op.f("ix_pnl_summary_instrument_id"), "pnl_summary", ["instrument_id"], unique=False
    )
    # Existing trades: build every portfolio's summary with the DAL's own function, so the
    # result is what `db verify` expects.
    from dal.pnl_summary import rebuild_summary

    conn = op.get_bind()
    for (portfolio_id,) in conn.execute(sa.text("SELECT id FROM portfolios ORDER BY id")):
        rebuild_summary(  # pnl_daily comes with 0008, the other columns with 0011
            conn, portfolio_id, daily_too=False, columns=_COLUMNS_AT_0006
        )


def downgrade() -> None:
    op.drop_index(op.f("ix_pnl_summary_instrument_id"), table_name="pnl_summary")
    op.drop_table("pnl_summary")
