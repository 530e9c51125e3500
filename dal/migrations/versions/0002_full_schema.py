"""the rest of the specified schema with the additions listed in docs/schema.md

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 17:25:53.980653
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import dal.types

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "brokers",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.Identity(always=False),
            nullable=False,
        ),
        sa.Column("code", sa.String(length=32), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_brokers")),
        sa.UniqueConstraint("code", name=op.f("uq_brokers_code")),
    )
    op.create_table(
        "instruments",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.Identity(always=False),
            nullable=False,
        ),
        sa.Column("uid", sa.String(length=36), nullable=False),
        sa.Column("symbol", sa.String(length=32), nullable=False),
        sa.Column("exchange", sa.String(length=32), nullable=True),
        sa.Column("asset_type", sa.String(length=16), nullable=False),
        sa.Column("currency", sa.String(length=16), nullable=False),
        sa.Column("tick_size", dal.types.Money(precision=38, scale=18), nullable=True),
        sa.Column("lot_size", dal.types.Money(precision=38, scale=18), nullable=True),
        sa.CheckConstraint(
            "asset_type IN ('CRYPTO', 'EQUITY', 'FUTURE', 'FOREX', 'ETF')",
            name=op.f("ck_instruments_asset_type_valid"),
        ),
        sa.CheckConstraint(
            "lot_size IS NULL OR CAST(lot_size AS NUMERIC) > 0",
            name=op.f("ck_instruments_lot_size_positive"),
        ),
        sa.CheckConstraint(
            "tick_size IS NULL OR CAST(tick_size AS NUMERIC) > 0",
            name=op.f("ck_instruments_tick_size_positive"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_instruments")),
        sa.UniqueConstraint("uid", name=op.f("uq_instruments_uid")),
    )
    with op.batch_alter_table("instruments", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_instruments_asset_type"), ["asset_type"], unique=False)
    # Expression indexes: autogenerate cannot see these on SQLite, so they are written by hand.
    op.create_index(
        "uq_instruments_symbol_exchange",
        "instruments",
        ["symbol", sa.text("coalesce(exchange, '')")],
        unique=True,
    )

    op.create_table(
        "accounts",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.Identity(always=False),
            nullable=False,
        ),
        sa.Column("uid", sa.String(length=36), nullable=False),
        sa.Column("user_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column(
            "broker_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("account_uid", sa.Text(), nullable=True),
        sa.Column("base_currency", sa.String(length=16), server_default="USD", nullable=False),
        sa.Column("created_at", dal.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["broker_id"], ["brokers.id"], name=op.f("fk_accounts_broker_id_brokers")
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_accounts_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_accounts")),
        sa.UniqueConstraint("id", "user_id", name=op.f("uq_accounts_id_user_id")),
        sa.UniqueConstraint("uid", name=op.f("uq_accounts_uid")),
        sa.UniqueConstraint("user_id", "name", name=op.f("uq_accounts_user_id_name")),
    )
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_accounts_broker_id"), ["broker_id"], unique=False)

    op.create_table(
        "audit_log",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.Identity(always=False),
            nullable=False,
        ),
        sa.Column("user_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("entity_type", sa.String(length=16), nullable=False),
        sa.Column("entity_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("details_json", dal.types.JSONDoc(), nullable=False),
        sa.Column("created_at", dal.types.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "action IN ('CREATE', 'UPDATE', 'DELETE', 'SYNC', 'CANCEL', 'REJECT', 'BREACH', 'APPROVE', 'REVOKE', 'DEACTIVATE', 'ACTIVATE', 'ARCHIVE', 'FILL', 'EXPIRE', 'REPAIR', 'START', 'STOP', 'HANDOVER')",
            name=op.f("ck_audit_log_action_valid"),
        ),
        sa.CheckConstraint(
            "entity_type IN ('USER', 'ACCOUNT', 'BROKER', 'INSTRUMENT', 'CASH', 'ALERT', 'SCHEDULE', 'SCREENER', 'STRATEGY', 'POLICY', 'ORDER', 'TRADE', 'POSITION', 'PORTFOLIO')",
            name=op.f("ck_audit_log_entity_type_valid"),
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_audit_log_user_id_users"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
    )
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_audit_log_created_at"), ["created_at"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_audit_log_entity_type_entity_id"),
            ["entity_type", "entity_id"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_audit_log_user_id_created_at"), ["user_id", "created_at"], unique=False
        )

    op.create_table(
        "risk_policies",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.Identity(always=False),
            nullable=False,
        ),
        sa.Column("uid", sa.String(length=36), nullable=False),
        sa.Column("user_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("scope_type", sa.String(length=16), nullable=False),
        sa.Column("scope_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("config_json", dal.types.JSONDoc(), nullable=False),
        sa.Column("is_active", sa.Boolean(), server_default=sa.true(), nullable=False),
        sa.Column("created_at", dal.types.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "scope_type IN ('USER', 'PORTFOLIO', 'STRATEGY')",
            name=op.f("ck_risk_policies_scope_type_valid"),
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_risk_policies_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_risk_policies")),
        sa.UniqueConstraint("uid", name=op.f("uq_risk_policies_uid")),
        sa.UniqueConstraint("user_id", "name", name=op.f("uq_risk_policies_user_id_name")),
    )
    with op.batch_alter_table("risk_policies", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_risk_policies_is_active"), ["is_active"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_risk_policies_scope_type_scope_id"),
            ["scope_type", "scope_id"],
            unique=False,
        )

    op.create_table(
        "schedules",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.Identity(always=False),
            nullable=False,
        ),
        sa.Column("uid", sa.String(length=36), nullable=False),
        sa.Column("user_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("cron", sa.String(length=128), nullable=False),
        sa.Column("config_json", dal.types.JSONDoc(), server_default="{}", nullable=False),
        sa.Column("is_active", sa.Boolean(), server_default=sa.true(), nullable=False),
        sa.Column("last_run_at", dal.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("next_run_at", dal.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("created_at", dal.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_schedules_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_schedules")),
        sa.UniqueConstraint("uid", name=op.f("uq_schedules_uid")),
    )
    with op.batch_alter_table("schedules", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_schedules_is_active_next_run_at"),
            ["is_active", "next_run_at"],
            unique=False,
        )
        batch_op.create_index(batch_op.f("ix_schedules_user_id"), ["user_id"], unique=False)

    op.create_table(
        "screeners",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.Identity(always=False),
            nullable=False,
        ),
        sa.Column("uid", sa.String(length=36), nullable=False),
        sa.Column("user_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("config_json", dal.types.JSONDoc(), nullable=False),
        sa.Column("is_active", sa.Boolean(), server_default=sa.true(), nullable=False),
        sa.Column("created_at", dal.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_screeners_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_screeners")),
        sa.UniqueConstraint("uid", name=op.f("uq_screeners_uid")),
    )
    with op.batch_alter_table("screeners", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_screeners_user_id"), ["user_id"], unique=False)

    op.create_table(
        "strategies",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.Identity(always=False),
            nullable=False,
        ),
        sa.Column("uid", sa.String(length=36), nullable=False),
        sa.Column("user_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("version", sa.String(length=32), server_default="1.0", nullable=False),
        sa.Column("params_json", dal.types.JSONDoc(), server_default="{}", nullable=False),
        sa.Column("is_active", sa.Boolean(), server_default=sa.true(), nullable=False),
        sa.Column("created_at", dal.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_strategies_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_strategies")),
        sa.UniqueConstraint("uid", name=op.f("uq_strategies_uid")),
        sa.UniqueConstraint(
            "user_id", "name", "version", name=op.f("uq_strategies_user_id_name_version")
        ),
    )
    op.create_table(
        "portfolios",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.Identity(always=False),
            nullable=False,
        ),
        sa.Column("uid", sa.String(length=36), nullable=False),
        sa.Column("user_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column(
            "account_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("is_default", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("archived_at", dal.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("created_at", dal.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id", "user_id"],
            ["accounts.id", "accounts.user_id"],
            name="fk_portfolios_account_owner",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_portfolios_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_portfolios")),
        sa.UniqueConstraint("uid", name=op.f("uq_portfolios_uid")),
        sa.UniqueConstraint("user_id", "name", name=op.f("uq_portfolios_user_id_name")),
    )
    with op.batch_alter_table("portfolios", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_portfolios_account_id"), ["account_id"], unique=False)
        batch_op.create_index(
            "uq_portfolios_one_default",
            ["user_id"],
            unique=True,
            sqlite_where=sa.text("is_default"),
            postgresql_where=sa.text("is_default"),
        )

    op.create_table(
        "alerts",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.Identity(always=False),
            nullable=False,
        ),
        sa.Column("uid", sa.String(length=36), nullable=False),
        sa.Column("user_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column(
            "portfolio_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("type", sa.String(length=16), nullable=False),
        sa.Column("config_json", dal.types.JSONDoc(), nullable=False),
        sa.Column("is_active", sa.Boolean(), server_default=sa.true(), nullable=False),
        sa.Column("created_at", dal.types.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "type IN ('PRICE', 'INDICATOR', 'POSITION', 'RISK', 'SCHEDULE')",
            name=op.f("ck_alerts_type_valid"),
        ),
        sa.ForeignKeyConstraint(
            ["portfolio_id"],
            ["portfolios.id"],
            name=op.f("fk_alerts_portfolio_id_portfolios"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_alerts_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alerts")),
        sa.UniqueConstraint("uid", name=op.f("uq_alerts_uid")),
    )
    with op.batch_alter_table("alerts", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_alerts_user_id_is_active"), ["user_id", "is_active"], unique=False
        )

    op.create_table(
        "cash_movements",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.Identity(always=False),
            nullable=False,
        ),
        sa.Column("uid", sa.String(length=36), nullable=False),
        sa.Column(
            "portfolio_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("amount", dal.types.Money(precision=38, scale=18), nullable=False),
        sa.Column("currency", sa.String(length=16), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("created_at", dal.types.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "(kind = 'DEPOSIT' AND CAST(amount AS NUMERIC) > 0) OR (kind = 'WITHDRAWAL' AND CAST(amount AS NUMERIC) < 0) OR (kind = 'ADJUSTMENT' AND CAST(amount AS NUMERIC) <> 0)",
            name=op.f("ck_cash_movements_amount_sign"),
        ),
        sa.CheckConstraint(
            "kind IN ('DEPOSIT', 'WITHDRAWAL', 'ADJUSTMENT')",
            name=op.f("ck_cash_movements_kind_valid"),
        ),
        sa.ForeignKeyConstraint(
            ["portfolio_id"],
            ["portfolios.id"],
            name=op.f("fk_cash_movements_portfolio_id_portfolios"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cash_movements")),
        sa.UniqueConstraint("uid", name=op.f("uq_cash_movements_uid")),
    )
    with op.batch_alter_table("cash_movements", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_cash_movements_portfolio_id_created_at"),
            ["portfolio_id", "created_at"],
            unique=False,
        )

    op.create_table(
        "orders",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.Identity(always=False),
            nullable=False,
        ),
        sa.Column("uid", sa.String(length=36), nullable=False),
        sa.Column(
            "portfolio_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column(
            "instrument_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column(
            "strategy_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column("side", sa.String(length=4), nullable=False),
        sa.Column("type", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("time_in_force", sa.String(length=3), nullable=True),
        sa.Column("quantity", dal.types.Money(precision=38, scale=18), nullable=False),
        sa.Column("price", dal.types.Money(precision=38, scale=18), nullable=True),
        sa.Column("stop_price", dal.types.Money(precision=38, scale=18), nullable=True),
        sa.Column(
            "filled_quantity",
            dal.types.Money(precision=38, scale=18),
            server_default="0",
            nullable=False,
        ),
        sa.Column("avg_fill_price", dal.types.Money(precision=38, scale=18), nullable=True),
        sa.Column("client_order_id", sa.String(length=64), nullable=True),
        sa.Column("broker_order_id", sa.String(length=64), nullable=True),
        sa.Column("placed_at", dal.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", dal.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("meta_json", dal.types.JSONDoc(), server_default="{}", nullable=False),
        sa.CheckConstraint("side IN ('BUY', 'SELL')", name=op.f("ck_orders_side_valid")),
        sa.CheckConstraint(
            "status IN ('NEW', 'PARTIALLY_FILLED', 'FILLED', 'CANCELED', 'REJECTED', 'EXPIRED')",
            name=op.f("ck_orders_status_valid"),
        ),
        sa.CheckConstraint(
            "time_in_force IS NULL OR time_in_force IN ('GTC', 'IOC', 'FOK', 'DAY')",
            name=op.f("ck_orders_time_in_force_valid"),
        ),
        sa.CheckConstraint(
            "type IN ('MARKET', 'LIMIT', 'STOP', 'STOP_LIMIT', 'TRAILING')",
            name=op.f("ck_orders_type_valid"),
        ),
        sa.CheckConstraint(
            "CAST(filled_quantity AS NUMERIC) <= CAST(quantity AS NUMERIC)",
            name=op.f("ck_orders_filled_le_quantity"),
        ),
        sa.CheckConstraint(
            "CAST(filled_quantity AS NUMERIC) >= 0", name=op.f("ck_orders_filled_quantity_nonneg")
        ),
        sa.CheckConstraint(
            "CAST(quantity AS NUMERIC) > 0", name=op.f("ck_orders_quantity_positive")
        ),
        sa.CheckConstraint(
            "avg_fill_price IS NULL OR CAST(avg_fill_price AS NUMERIC) > 0",
            name=op.f("ck_orders_avg_fill_price_positive"),
        ),
        sa.CheckConstraint(
            "price IS NULL OR CAST(price AS NUMERIC) > 0", name=op.f("ck_orders_price_positive")
        ),
        sa.CheckConstraint(
            "stop_price IS NULL OR CAST(stop_price AS NUMERIC) > 0",
            name=op.f("ck_orders_stop_price_positive"),
        ),
        sa.ForeignKeyConstraint(
            ["instrument_id"], ["instruments.id"], name=op.f("fk_orders_instrument_id_instruments")
        ),
        sa.ForeignKeyConstraint(
            ["portfolio_id"],
            ["portfolios.id"],
            name=op.f("fk_orders_portfolio_id_portfolios"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["strategy_id"],
            ["strategies.id"],
            name=op.f("fk_orders_strategy_id_strategies"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_orders")),
        sa.UniqueConstraint(
            "portfolio_id", "client_order_id", name=op.f("uq_orders_portfolio_id_client_order_id")
        ),
        sa.UniqueConstraint(
            "portfolio_id",
            "instrument_id",
            "broker_order_id",
            name=op.f("uq_orders_portfolio_id_instrument_id_broker_order_id"),
        ),
        sa.UniqueConstraint("uid", name=op.f("uq_orders_uid")),
    )
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_orders_instrument_id"), ["instrument_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_orders_placed_at"), ["placed_at"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_orders_portfolio_id_placed_at"),
            ["portfolio_id", "placed_at"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_orders_portfolio_id_status"), ["portfolio_id", "status"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_orders_strategy_id"), ["strategy_id"], unique=False)

    op.create_table(
        "positions",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.Identity(always=False),
            nullable=False,
        ),
        sa.Column("uid", sa.String(length=36), nullable=False),
        sa.Column(
            "portfolio_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column(
            "instrument_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column(
            "strategy_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column("quantity", dal.types.Money(precision=38, scale=18), nullable=False),
        sa.Column(
            "cost_basis",
            dal.types.Money(precision=38, scale=18),
            server_default="0",
            nullable=False,
        ),
        sa.Column(
            "avg_price", dal.types.Money(precision=38, scale=18), server_default="0", nullable=False
        ),
        sa.Column(
            "realized_pnl",
            dal.types.Money(precision=38, scale=18),
            server_default="0",
            nullable=False,
        ),
        sa.Column("opened_at", dal.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("last_exec_time", dal.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column(
            "last_trade_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column("updated_at", dal.types.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "CAST(cost_basis AS NUMERIC) >= 0", name=op.f("ck_positions_cost_basis_nonneg")
        ),
        sa.ForeignKeyConstraint(
            ["instrument_id"],
            ["instruments.id"],
            name=op.f("fk_positions_instrument_id_instruments"),
        ),
        sa.ForeignKeyConstraint(
            ["portfolio_id"],
            ["portfolios.id"],
            name=op.f("fk_positions_portfolio_id_portfolios"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["strategy_id"],
            ["strategies.id"],
            name=op.f("fk_positions_strategy_id_strategies"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_positions")),
        sa.UniqueConstraint("uid", name=op.f("uq_positions_uid")),
    )
    with op.batch_alter_table("positions", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_positions_instrument_id"), ["instrument_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_positions_strategy_id"), ["strategy_id"], unique=False)
    op.create_index(
        "uq_positions_portfolio_instrument_strategy",
        "positions",
        ["portfolio_id", "instrument_id", sa.text("coalesce(strategy_id, 0)")],
        unique=True,
    )

    op.create_table(
        "risk_breaches",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.Identity(always=False),
            nullable=False,
        ),
        sa.Column(
            "policy_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column(
            "portfolio_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column(
            "instrument_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column("order_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("observed_json", dal.types.JSONDoc(), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("created_at", dal.types.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "action IN ('BLOCKED', 'WARNED', 'REDUCED_SIZE', 'CLOSED_POSITION')",
            name=op.f("ck_risk_breaches_action_valid"),
        ),
        sa.ForeignKeyConstraint(
            ["instrument_id"],
            ["instruments.id"],
            name=op.f("fk_risk_breaches_instrument_id_instruments"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["order_id"],
            ["orders.id"],
            name=op.f("fk_risk_breaches_order_id_orders"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["policy_id"],
            ["risk_policies.id"],
            name=op.f("fk_risk_breaches_policy_id_risk_policies"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["portfolio_id"],
            ["portfolios.id"],
            name=op.f("fk_risk_breaches_portfolio_id_portfolios"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_risk_breaches")),
    )
    with op.batch_alter_table("risk_breaches", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_risk_breaches_policy_id_created_at"),
            ["policy_id", "created_at"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_risk_breaches_portfolio_id_created_at"),
            ["portfolio_id", "created_at"],
            unique=False,
        )

    op.create_table(
        "trades",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.Identity(always=False),
            nullable=False,
        ),
        sa.Column("uid", sa.String(length=36), nullable=False),
        sa.Column(
            "portfolio_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column(
            "instrument_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column(
            "strategy_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column("order_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("side", sa.String(length=4), nullable=False),
        sa.Column("quantity", dal.types.Money(precision=38, scale=18), nullable=False),
        sa.Column("price", dal.types.Money(precision=38, scale=18), nullable=False),
        sa.Column(
            "fee", dal.types.Money(precision=38, scale=18), server_default="0", nullable=False
        ),
        sa.Column("fee_currency", sa.String(length=16), nullable=True),
        sa.Column(
            "realized_pnl",
            dal.types.Money(precision=38, scale=18),
            server_default="0",
            nullable=False,
        ),
        sa.Column("exec_time", dal.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("broker_trade_id", sa.String(length=64), nullable=True),
        sa.Column("meta_json", dal.types.JSONDoc(), server_default="{}", nullable=False),
        sa.CheckConstraint("side IN ('BUY', 'SELL')", name=op.f("ck_trades_side_valid")),
        sa.CheckConstraint("CAST(price AS NUMERIC) > 0", name=op.f("ck_trades_price_positive")),
        sa.CheckConstraint(
            "CAST(quantity AS NUMERIC) > 0", name=op.f("ck_trades_quantity_positive")
        ),
        sa.ForeignKeyConstraint(
            ["instrument_id"], ["instruments.id"], name=op.f("fk_trades_instrument_id_instruments")
        ),
        sa.ForeignKeyConstraint(
            ["order_id"], ["orders.id"], name=op.f("fk_trades_order_id_orders"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["portfolio_id"],
            ["portfolios.id"],
            name=op.f("fk_trades_portfolio_id_portfolios"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["strategy_id"],
            ["strategies.id"],
            name=op.f("fk_trades_strategy_id_strategies"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_trades")),
        sa.UniqueConstraint(
            "portfolio_id",
            "instrument_id",
            "broker_trade_id",
            name=op.f("uq_trades_portfolio_id_instrument_id_broker_trade_id"),
        ),
        sa.UniqueConstraint("uid", name=op.f("uq_trades_uid")),
    )
    with op.batch_alter_table("trades", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_trades_instrument_id_exec_time"),
            ["instrument_id", "exec_time"],
            unique=False,
        )
        batch_op.create_index(batch_op.f("ix_trades_order_id"), ["order_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_trades_portfolio_id_exec_time"),
            ["portfolio_id", "exec_time"],
            unique=False,
        )
        batch_op.create_index(batch_op.f("ix_trades_strategy_id"), ["strategy_id"], unique=False)

    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(sa.Column("telegram_chat_id", sa.BigInteger(), nullable=True))
        batch_op.add_column(
            sa.Column("timezone", sa.String(length=64), server_default="UTC", nullable=False)
        )
        batch_op.add_column(
            sa.Column(
                "current_portfolio_id",
                sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                nullable=True,
            )
        )
        batch_op.create_foreign_key(
            batch_op.f("fk_users_current_portfolio_id_portfolios"),
            "portfolios",
            ["current_portfolio_id"],
            ["id"],
            ondelete="SET NULL",
            use_alter=True,
        )


def downgrade() -> None:
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_constraint(
            batch_op.f("fk_users_current_portfolio_id_portfolios"), type_="foreignkey"
        )
        batch_op.drop_column("current_portfolio_id")
        batch_op.drop_column("timezone")
        batch_op.drop_column("telegram_chat_id")

    with op.batch_alter_table("trades", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_trades_strategy_id"))
        batch_op.drop_index(batch_op.f("ix_trades_portfolio_id_exec_time"))
        batch_op.drop_index(batch_op.f("ix_trades_order_id"))
        batch_op.drop_index(batch_op.f("ix_trades_instrument_id_exec_time"))

    op.drop_table("trades")
    with op.batch_alter_table("risk_breaches", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_risk_breaches_portfolio_id_created_at"))
        batch_op.drop_index(batch_op.f("ix_risk_breaches_policy_id_created_at"))

    op.drop_table("risk_breaches")
    op.drop_index("uq_positions_portfolio_instrument_strategy", table_name="positions")
    with op.batch_alter_table("positions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_positions_strategy_id"))
        batch_op.drop_index(batch_op.f("ix_positions_instrument_id"))

    op.drop_table("positions")
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_orders_strategy_id"))
        batch_op.drop_index(batch_op.f("ix_orders_portfolio_id_status"))
        batch_op.drop_index(batch_op.f("ix_orders_portfolio_id_placed_at"))
        batch_op.drop_index(batch_op.f("ix_orders_placed_at"))
        batch_op.drop_index(batch_op.f("ix_orders_instrument_id"))

    op.drop_table("orders")
    with op.batch_alter_table("cash_movements", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_cash_movements_portfolio_id_created_at"))

    op.drop_table("cash_movements")
    with op.batch_alter_table("alerts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_alerts_user_id_is_active"))

    op.drop_table("alerts")
    with op.batch_alter_table("portfolios", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_portfolios_one_default",
            sqlite_where=sa.text("is_default"),
            postgresql_where=sa.text("is_default"),
        )
        batch_op.drop_index(batch_op.f("ix_portfolios_account_id"))

    op.drop_table("portfolios")
    op.drop_table("strategies")
    with op.batch_alter_table("screeners", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_screeners_user_id"))

    op.drop_table("screeners")
    with op.batch_alter_table("schedules", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_schedules_user_id"))
        batch_op.drop_index(batch_op.f("ix_schedules_is_active_next_run_at"))

    op.drop_table("schedules")
    with op.batch_alter_table("risk_policies", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_risk_policies_scope_type_scope_id"))
        batch_op.drop_index(batch_op.f("ix_risk_policies_is_active"))

    op.drop_table("risk_policies")
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_audit_log_user_id_created_at"))
        batch_op.drop_index(batch_op.f("ix_audit_log_entity_type_entity_id"))
        batch_op.drop_index(batch_op.f("ix_audit_log_created_at"))

    op.drop_table("audit_log")
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_accounts_broker_id"))

    op.drop_table("accounts")
    op.drop_index("uq_instruments_symbol_exchange", table_name="instruments")
    with op.batch_alter_table("instruments", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_instruments_asset_type"))

    op.drop_table("instruments")
    op.drop_table("brokers")
