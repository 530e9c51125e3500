"""Position checkpoints: a position's state as of a point in canonical trade order, so a late
fill replays only the trades after the last one before it

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import dal.types

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    # Empty at first: a position without checkpoints re-derives from its first trade, as
    # before, and gains them from its next fills (and from its first re-derivation).
    op.create_table(
        "position_checkpoints",
        sa.Column("position_id", ID, nullable=False),
        sa.Column("as_of_exec_time", dal.types.UTCDateTime(), nullable=False),
        sa.Column("as_of_trade_id", ID, autoincrement=False, nullable=False),
        sa.Column("quantity", dal.types.Money(), nullable=False),
        sa.Column("cost_basis", dal.types.Money(), nullable=False),
        sa.Column("realized_pnl", dal.types.Money(), nullable=False),
        sa.Column("opened_at", dal.types.UTCDateTime(), nullable=True),
        sa.CheckConstraint(
            "CAST(cost_basis AS NUMERIC) >= 0",
            name=op.f("ck_position_checkpoints_cost_basis_nonneg"),
        ),
        sa.ForeignKeyConstraint(
            ["position_id"],
            ["positions.id"],
            name=op.f("fk_position_checkpoints_position_id_positions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "position_id",
            "as_of_exec_time",
            "as_of_trade_id",
            name=op.f("pk_position_checkpoints"),
        ),
    )


def downgrade() -> None:
    op.drop_table("position_checkpoints")
