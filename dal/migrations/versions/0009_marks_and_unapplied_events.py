"""marks (the feed's latest price per instrument) and unapplied_events (broker events kept
until they apply)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import dal.types

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "marks",
        sa.Column("instrument_id", ID, nullable=False),
        sa.Column("price", dal.types.Money(), nullable=False),
        sa.Column("as_of", dal.types.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["instrument_id"],
            ["instruments.id"],
            name=op.f("fk_marks_instrument_id_instruments"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("instrument_id", name=op.f("pk_marks")),
    )
    op.create_table(
        "unapplied_events",
        sa.Column("id", ID, sa.Identity(always=False), nullable=False),
        sa.Column("user_id", ID, nullable=False),
        sa.Column("portfolio_id", ID, nullable=False),
        sa.Column("event_json", dal.types.JSONDoc(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", dal.types.UTCDateTime(), nullable=False),
        sa.Column("last_tried_at", dal.types.UTCDateTime(), nullable=False),
        sa.Column("applied_at", dal.types.UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["portfolio_id"],
            ["portfolios.id"],
            name=op.f("fk_unapplied_events_portfolio_id_portfolios"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_unapplied_events_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_unapplied_events")),
    )
    op.create_index(
        op.f("ix_unapplied_events_user_id_applied_at"),
        "unapplied_events",
        ["user_id", "applied_at"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_unapplied_events_user_id_applied_at"), table_name="unapplied_events")
    op.drop_table("unapplied_events")
    op.drop_table("marks")
