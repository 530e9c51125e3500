"""Balances and valuation: instruments.base_asset, the trade flows and win/loss figures in
pnl_summary, orders.reserve_price, accounts.margin_leverage, users' /notify switches, equity_snapshots

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import dal.types

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_SUMMARY_AMOUNTS = (
    "gross_profit",
    "gross_loss",
    "net_quantity",
    "net_proceeds",
    "holding_seconds",
)
_SUMMARY_COUNTS = ("win_count", "loss_count", "closing_count")
_NOTIFY = ("notify_fills", "notify_alerts", "notify_reports", "notify_risk")


def upgrade() -> None:
    from dal.models import base_asset_of
    from dal.pnl_summary import rebuild_summary
    from dal.positions import reduced_positions_opened_at

    conn = op.get_bind()
    # Plain ADD COLUMNs (with a default, as SQLite needs for NOT NULL): a batch on SQLite
    # would copy the tables and lose instruments' expression index.
    op.add_column(
        "instruments",
        sa.Column("base_asset", sa.String(length=32), server_default="", nullable=False),
    )
    instruments = sa.table(
        "instruments",
        sa.column("id", ID),
        sa.column("symbol", sa.String()),
        sa.column("currency", sa.String()),
        sa.column("base_asset", sa.String()),
    )
    for row in conn.execute(sa.select(instruments)).all():
        conn.execute(
            instruments.update()
            .where(instruments.c.id == row.id)
            .values(base_asset=base_asset_of(row.symbol, row.currency))
        )

    op.add_column("orders", sa.Column("reserve_price", dal.types.Money(), nullable=True))
    with op.batch_alter_table("accounts") as batch:
        batch.add_column(sa.Column("margin_leverage", dal.types.Money(), nullable=True))
        batch.create_check_constraint(
            op.f("ck_accounts_margin_leverage_positive"),
            "margin_leverage IS NULL OR CAST(margin_leverage AS NUMERIC) > 0",
        )

    for name in _NOTIFY:
        op.add_column(
            "users", sa.Column(name, sa.Boolean(), server_default=sa.true(), nullable=False)
        )
    for name in _SUMMARY_COUNTS:
        op.add_column(
            "pnl_summary", sa.Column(name, sa.Integer(), server_default="0", nullable=False)
        )
    for name in _SUMMARY_AMOUNTS:
        op.add_column(
            "pnl_summary", sa.Column(name, dal.types.Money(), server_default="0", nullable=False)
        )
    op.add_column("trades", sa.Column("position_opened_at", dal.types.UTCDateTime()))
    # Existing trades: the opening time of the position each reducing trade reduced, from a
    # replay, then every portfolio's summary rebuilt with the DAL's own function, so the new
    # columns hold what `db verify` expects.
    trades = sa.table("trades", sa.column("id", ID), sa.column("position_opened_at"))
    for (portfolio_id,) in conn.execute(sa.text("SELECT id FROM portfolios ORDER BY id")):
        opened = reduced_positions_opened_at(conn, portfolio_id)
        if opened:
            conn.execute(
                trades.update()
                .where(trades.c.id == sa.bindparam("trade_id"))
                .values(
                    position_opened_at=sa.bindparam("opened_at", type_=dal.types.UTCDateTime())
                ),
                [{"trade_id": k, "opened_at": v} for k, v in sorted(opened.items())],
            )
        rebuild_summary(conn, portfolio_id, daily_too=False)

    op.create_table(
        "equity_snapshots",
        sa.Column("portfolio_id", ID, nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("currency", sa.String(length=16), nullable=False),
        sa.Column("equity", dal.types.Money(), nullable=False),
        sa.Column("net_deposits", dal.types.Money(), nullable=False),
        sa.Column("marks_json", dal.types.JSONDoc(), nullable=False),
        sa.Column("balances_json", dal.types.JSONDoc(), nullable=False),
        sa.Column("unconverted_json", dal.types.JSONDoc(), nullable=False),
        sa.Column("as_of", dal.types.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["portfolio_id"],
            ["portfolios.id"],
            name=op.f("fk_equity_snapshots_portfolio_id_portfolios"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("portfolio_id", "day", name=op.f("pk_equity_snapshots")),
    )


def downgrade() -> None:
    op.drop_table("equity_snapshots")
    for name in (*_SUMMARY_AMOUNTS, *_SUMMARY_COUNTS):
        op.drop_column("pnl_summary", name)
    op.drop_column("trades", "position_opened_at")
    for name in _NOTIFY:
        op.drop_column("users", name)
    with op.batch_alter_table("accounts") as batch:
        batch.drop_constraint(op.f("ck_accounts_margin_leverage_positive"), type_="check")
        batch.drop_column("margin_leverage")
    op.drop_column("instruments", "base_asset")
    op.drop_column("orders", "reserve_price")
