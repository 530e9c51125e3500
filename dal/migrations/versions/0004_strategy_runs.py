"""strategy_runs: persisted run state of strategies (resume after restart)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import dal.types

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "strategy_runs",
        sa.Column("id", ID, sa.Identity(always=False), nullable=False),
        sa.Column("strategy_id", ID, nullable=False),
        sa.Column("portfolio_id", ID, nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("started_at", dal.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("stopped_at", dal.types.UTCDateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('RUNNING', 'STOPPED', 'CRASHED', 'FINISHED')",
            name=op.f("ck_strategy_runs_status_valid"),
        ),
        sa.ForeignKeyConstraint(
            ["portfolio_id"],
            ["portfolios.id"],
            name=op.f("fk_strategy_runs_portfolio_id_portfolios"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["strategy_id"],
            ["strategies.id"],
            name=op.f("fk_strategy_runs_strategy_id_strategies"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_strategy_runs")),
        sa.UniqueConstraint(
            "strategy_id", "portfolio_id", name=op.f("uq_strategy_runs_strategy_id_portfolio_id")
        ),
    )
    op.create_index(op.f("ix_strategy_runs_status"), "strategy_runs", ["status"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_strategy_runs_status"), table_name="strategy_runs")
    op.drop_table("strategy_runs")
