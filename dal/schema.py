"""The whole schema as SQLAlchemy Core tables on one MetaData.

Columns follow the original specification's data model; the additions and changes, and why,
are in docs/schema.md and docs/decisions.md. Enumerations are CHECK constraints (portable); every
amount is ``Money`` and every timestamp ``UTCDateTime`` (see dal/types.py).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa

from dal.types import BigID, JSONDoc, Money, Notional, UTCDateTime
from dal.vocabulary import (
    NOTIFICATION_KINDS,
    OPEN_STATUSES,
    ORDER_STATUSES,
    ORDER_TYPES,
    SIDES,
    TIME_IN_FORCE,
)

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)

# --- enumerations (stored as text, enforced by CHECK) -----------------------------------------
ASSET_TYPES = ("CRYPTO", "EQUITY", "FUTURE", "FOREX", "ETF")
PNL_PERIODS = ("DAY", "MONTH")
POLICY_SCOPES = ("USER", "PORTFOLIO", "STRATEGY")
BREACH_ACTIONS = ("BLOCKED", "WARNED", "REDUCED_SIZE", "CLOSED_POSITION")
ALERT_TYPES = ("PRICE", "INDICATOR", "POSITION", "RISK", "SCHEDULE")
CASH_KINDS = ("DEPOSIT", "WITHDRAWAL", "ADJUSTMENT")
TRADING_MODES = ("testnet", "live")  # where an exchange account's orders go
AUDIT_ENTITIES = (
    "USER",
    "ACCOUNT",
    "BROKER",
    "INSTRUMENT",
    "CASH",
    "ALERT",
    "SCHEDULE",
    "SCREENER",
    "STRATEGY",
    "POLICY",
    "ORDER",
    "TRADE",
    "POSITION",
    "PORTFOLIO",
)
AUDIT_ACTIONS = (
    "CREATE",
    "UPDATE",
    "DELETE",
    "SYNC",
    "CANCEL",
    "REJECT",
    "BREACH",
    "APPROVE",
    "REVOKE",
    "DEACTIVATE",
    "ACTIVATE",
    "ARCHIVE",
    "FILL",
    "EXPIRE",
    "REPAIR",
    "START",
    "STOP",
    "HANDOVER",
)


def one_of(column: str, values: tuple[str, ...], name: str | None = None) -> sa.CheckConstraint:
    """CHECK (column IN (...)) — the portable enum."""
    return sa.CheckConstraint(f"{column} IN ({quoted(values)})", name=name or f"{column}_valid")


def quoted(values: tuple[str, ...]) -> str:
    return ", ".join(f"'{v}'" for v in values)


def positive(column: str, *, nullable: bool = False) -> sa.CheckConstraint:
    """CHECK column > 0. The CAST makes SQLite compare the decimal TEXT as a number: exact for
    the sign, which is all this checks (exact comparisons between amounts live in the DAL)."""
    expr = f"CAST({column} AS NUMERIC) > 0"
    if nullable:
        expr = f"{column} IS NULL OR {expr}"
    return sa.CheckConstraint(expr, name=f"{column}_positive")


def uid_column(nullable: bool = False) -> sa.Column[str]:
    return sa.Column("uid", sa.String(36), nullable=nullable, unique=True)


def id_column() -> sa.Column[int]:
    return sa.Column("id", BigID, sa.Identity(), primary_key=True)


def fk(target: str, ondelete: str | None = None, **kw: Any) -> sa.ForeignKey:
    return sa.ForeignKey(target, ondelete=ondelete, **kw)


def created_at() -> sa.Column[dt.datetime]:
    return sa.Column("created_at", UTCDateTime(), nullable=False)


users = sa.Table(
    "users",
    metadata,
    id_column(),
    uid_column(nullable=True),  # as specified, so an existing users table can be stamped
    sa.Column("telegram_user_id", sa.Text(), nullable=False, unique=True),
    sa.Column("username", sa.Text()),
    sa.Column("is_admin", sa.Boolean(), nullable=False, server_default=sa.false()),
    sa.Column("is_active", sa.Boolean(), nullable=False, server_default=sa.true()),
    sa.Column("approved_by_user_id", BigID, fk("users.id", ondelete="SET NULL")),
    sa.Column("approved_at", UTCDateTime()),
    created_at(),
    # Beyond the specification: delivery address, the user's time zone, the bot's context.
    sa.Column("telegram_chat_id", sa.BigInteger()),
    sa.Column("timezone", sa.String(64), nullable=False, server_default="UTC"),
    sa.Column(
        "current_portfolio_id",
        BigID,
        fk("portfolios.id", ondelete="SET NULL", use_alter=True),
    ),
    # /mute, and chats that blocked the bot (403) are not retried.
    sa.Column("notifications_muted", sa.Boolean(), nullable=False, server_default=sa.false()),
    # /notify: each kind of notification on or off.
    *(
        sa.Column(f"notify_{kind}", sa.Boolean(), nullable=False, server_default=sa.true())
        for kind in NOTIFICATION_KINDS
    ),
    sa.Column("unreachable_at", UTCDateTime()),
    sa.Index(None, "is_active"),
)

brokers = sa.Table(
    "brokers",
    metadata,
    id_column(),
    sa.Column("code", sa.String(32), nullable=False, unique=True),
    sa.Column("name", sa.Text(), nullable=False),
)

accounts = sa.Table(
    "accounts",
    metadata,
    id_column(),
    uid_column(),
    sa.Column("user_id", BigID, fk("users.id", ondelete="CASCADE"), nullable=False),
    sa.Column("broker_id", BigID, fk("brokers.id"), nullable=False),
    sa.Column("name", sa.String(64), nullable=False),
    sa.Column("account_uid", sa.Text()),
    sa.Column("base_currency", sa.String(16), nullable=False, server_default="USD"),
    # NULL: a spot account (orders need the free balance; no selling what is not held). A
    # number: a margin account that may go short and hold up to this many times its equity.
    sa.Column("margin_leverage", Money()),
    # Exchange accounts trade on the exchange's testnet until their owner switches them live.
    sa.Column("trading_mode", sa.String(8), nullable=False, server_default="testnet"),
    created_at(),
    positive("margin_leverage", nullable=True),
    one_of("trading_mode", TRADING_MODES),
    sa.UniqueConstraint("user_id", "name"),
    # Target of portfolios' composite FK: a portfolio's account belongs to the same user.
    sa.UniqueConstraint("id", "user_id"),
    sa.Index(None, "broker_id"),
)

portfolios = sa.Table(
    "portfolios",
    metadata,
    id_column(),
    uid_column(),
    sa.Column("user_id", BigID, fk("users.id", ondelete="CASCADE"), nullable=False),
    sa.Column("account_id", BigID, nullable=False),  # FK below, together with the owner
    sa.Column("name", sa.String(64), nullable=False),
    sa.Column("description", sa.Text()),
    sa.Column("is_default", sa.Boolean(), nullable=False, server_default=sa.false()),
    sa.Column("archived_at", UTCDateTime()),
    created_at(),
    sa.UniqueConstraint("user_id", "name"),
    sa.ForeignKeyConstraint(
        ["account_id", "user_id"],
        ["accounts.id", "accounts.user_id"],
        name="fk_portfolios_account_owner",
        ondelete="CASCADE",
    ),
    sa.Index(None, "account_id"),
    # At most one default portfolio per user (the DAL keeps it at exactly one).
    sa.Index(
        "uq_portfolios_one_default",
        "user_id",
        unique=True,
        sqlite_where=sa.text("is_default"),
        postgresql_where=sa.text("is_default"),
    ),
)

strategies = sa.Table(
    "strategies",
    metadata,
    id_column(),
    uid_column(),
    sa.Column("user_id", BigID, fk("users.id", ondelete="CASCADE"), nullable=False),
    sa.Column("name", sa.String(64), nullable=False),
    sa.Column("version", sa.String(32), nullable=False, server_default="1.0"),
    sa.Column("params_json", JSONDoc(), nullable=False, server_default="{}"),
    sa.Column("is_active", sa.Boolean(), nullable=False, server_default=sa.true()),
    created_at(),
    sa.UniqueConstraint("user_id", "name", "version"),
)

instruments = sa.Table(
    "instruments",
    metadata,
    id_column(),
    uid_column(),
    sa.Column("symbol", sa.String(32), nullable=False),
    sa.Column("exchange", sa.String(32)),
    sa.Column("asset_type", sa.String(16), nullable=False),
    sa.Column("currency", sa.String(16), nullable=False),  # the quote asset
    # What one unit of the instrument is: BTC for BTCUSDT, the share itself (AAPL) for a stock.
    sa.Column("base_asset", sa.String(32), nullable=False),
    sa.Column("tick_size", Money()),
    sa.Column("lot_size", Money()),
    # The smallest order value (quantity × price, in ``currency``) the exchange accepts.
    sa.Column("min_notional", Money()),
    one_of("asset_type", ASSET_TYPES),
    positive("tick_size", nullable=True),
    positive("lot_size", nullable=True),
    # NULL exchanges are distinct in a plain UNIQUE; COALESCE makes (BTCUSDT, NULL) unique too.
    sa.Index(
        "uq_instruments_symbol_exchange",
        "symbol",
        sa.func.coalesce(sa.column("exchange"), sa.literal_column("''")),
        unique=True,
    ),
    sa.Index(None, "asset_type"),
)

orders = sa.Table(
    "orders",
    metadata,
    id_column(),
    uid_column(),
    sa.Column("portfolio_id", BigID, fk("portfolios.id", ondelete="CASCADE"), nullable=False),
    sa.Column("instrument_id", BigID, fk("instruments.id"), nullable=False),
    sa.Column("strategy_id", BigID, fk("strategies.id", ondelete="SET NULL")),
    sa.Column("side", sa.String(4), nullable=False),
    sa.Column("type", sa.String(16), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("time_in_force", sa.String(3)),
    sa.Column("quantity", Money(), nullable=False),
    sa.Column("price", Money()),
    sa.Column("stop_price", Money()),
    sa.Column("filled_quantity", Money(), nullable=False, server_default="0"),
    sa.Column("avg_fill_price", Money()),
    # Σ quantity × price of the order's fills, exact: avg_fill_price is this over
    # filled_quantity, rounded once (so it does not depend on the order the fills came in).
    sa.Column("fill_notional", Notional(), nullable=False, server_default="0"),
    # What a BUY holds back per unit of its open quantity (limit or mark with slippage, plus
    # the fee), fixed when it is placed (dal/balances.py). NULL: a SELL, or nothing priced it.
    sa.Column("reserve_price", Money()),
    sa.Column("client_order_id", sa.String(64)),
    sa.Column("broker_order_id", sa.String(64)),
    sa.Column("placed_at", UTCDateTime(), nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
    sa.Column("meta_json", JSONDoc(), nullable=False, server_default="{}"),
    one_of("side", SIDES),
    one_of("type", ORDER_TYPES),
    one_of("status", ORDER_STATUSES),
    sa.CheckConstraint(
        f"time_in_force IS NULL OR time_in_force IN ({quoted(TIME_IN_FORCE)})",
        name="time_in_force_valid",
    ),
    positive("quantity"),
    positive("price", nullable=True),
    positive("stop_price", nullable=True),
    positive("avg_fill_price", nullable=True),
    sa.CheckConstraint("CAST(filled_quantity AS NUMERIC) >= 0", name="filled_quantity_nonneg"),
    # A backstop only: on SQLite the CAST compares as float; the DAL checks overfills exactly.
    sa.CheckConstraint(
        "CAST(filled_quantity AS NUMERIC) <= CAST(quantity AS NUMERIC)",
        name="filled_le_quantity",
    ),
    # Idempotency: Binance order ids are unique per symbol only, so the key includes the
    # instrument.
    sa.UniqueConstraint("portfolio_id", "instrument_id", "broker_order_id"),
    sa.UniqueConstraint("portfolio_id", "client_order_id"),
    sa.Index(None, "portfolio_id", "status"),
    sa.Index(None, "portfolio_id", "placed_at"),
    sa.Index(None, "instrument_id"),
    sa.Index(None, "placed_at"),
    sa.Index(None, "strategy_id"),
)

# Open orders are a handful among a portfolio's thousands of finished ones (tens of thousands
# a year for a busy strategy). This partial index holds only them, in /orders' order (newest
# first per portfolio), so listing them never walks the finished ones. A query uses it only when it
# repeats the predicate with literal values (``OPEN_ORDER``): neither SQLite nor PostgreSQL
# can prove the index's WHERE from bound parameters.
OPEN_ORDER = orders.c.status.in_([sa.literal_column(f"'{s}'") for s in OPEN_STATUSES])
sa.Index(
    "ix_orders_open_portfolio_id_placed_at",
    orders.c.portfolio_id,
    orders.c.placed_at,
    orders.c.id,
    sqlite_where=OPEN_ORDER,
    postgresql_where=OPEN_ORDER,
)

trades = sa.Table(
    "trades",
    metadata,
    id_column(),
    uid_column(),
    sa.Column("portfolio_id", BigID, fk("portfolios.id", ondelete="CASCADE"), nullable=False),
    sa.Column("instrument_id", BigID, fk("instruments.id"), nullable=False),
    sa.Column("strategy_id", BigID, fk("strategies.id", ondelete="SET NULL")),
    sa.Column("order_id", BigID, fk("orders.id", ondelete="SET NULL")),
    sa.Column("side", sa.String(4), nullable=False),
    sa.Column("quantity", Money(), nullable=False),
    sa.Column("price", Money(), nullable=False),
    sa.Column("fee", Money(), nullable=False, server_default="0"),
    sa.Column("fee_currency", sa.String(16)),
    sa.Column("realized_pnl", Money(), nullable=False, server_default="0"),
    sa.Column("exec_time", UTCDateTime(), nullable=False),
    sa.Column("broker_trade_id", sa.String(64)),
    # When the position this fill reduced was opened (NULL when it opened or added): the
    # holding time that ends with this fill is exec_time − position_opened_at.
    sa.Column("position_opened_at", UTCDateTime()),
    sa.Column("meta_json", JSONDoc(), nullable=False, server_default="{}"),
    one_of("side", SIDES),
    positive("quantity"),
    positive("price"),
    sa.UniqueConstraint("portfolio_id", "instrument_id", "broker_trade_id"),
    sa.Index(None, "portfolio_id", "exec_time"),
    sa.Index(None, "instrument_id", "exec_time"),
    sa.Index(None, "order_id"),
    sa.Index(None, "strategy_id"),
)

# Realized PnL, fees and trade count per portfolio, instrument and fee currency, per day and per
# month in the owner's time zone: kept in the fill transaction so /pnl reads a few hundred rows
# instead of every trade of the period (dal/pnl_summary.py). '' is "no fee currency".
pnl_summary = sa.Table(
    "pnl_summary",
    metadata,
    sa.Column("portfolio_id", BigID, fk("portfolios.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("period", sa.String(5), primary_key=True),
    sa.Column("period_start", sa.Date(), primary_key=True),
    sa.Column("instrument_id", BigID, fk("instruments.id"), primary_key=True),
    sa.Column("fee_currency", sa.String(16), primary_key=True),
    sa.Column("realized_pnl", Money(), nullable=False),
    sa.Column("fees", Money(), nullable=False),
    sa.Column("trade_count", sa.Integer(), nullable=False),
    # Trades whose realized PnL is > 0 / < 0, and those PnLs' sums (gross_loss >= 0): win rate,
    # profit factor and average win / loss without reading the trades.
    sa.Column("win_count", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("loss_count", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("gross_profit", Money(), nullable=False, server_default="0"),
    sa.Column("gross_loss", Money(), nullable=False, server_default="0"),
    # What the trades moved: base quantity (+ bought, − sold) and quote amount (− paid,
    # + received; quantity × price rounded to 18 places). With the cash ledger and the fees
    # these are the portfolio's balances per asset (dal/balances.py).
    sa.Column("net_quantity", Money(), nullable=False, server_default="0"),
    sa.Column("net_proceeds", Money(), nullable=False, server_default="0"),
    # Trades that reduced a position, and the seconds each had held it (since the position
    # was opened): the average holding time.
    sa.Column("closing_count", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("holding_seconds", Money(), nullable=False, server_default="0"),
    one_of("period", PNL_PERIODS),
    sa.CheckConstraint("trade_count >= 0", name="trade_count_nonneg"),
    sa.Index(None, "instrument_id"),
)

# Realized PnL per portfolio, local day of the owner and quote currency (the instruments'
# currency): the daily series of the /pnl chart, kept in the fill transaction beside
# pnl_summary so a year's chart reads one row per day and currency instead of one per
# instrument and day (dal/pnl_summary.py).
pnl_daily = sa.Table(
    "pnl_daily",
    metadata,
    sa.Column("portfolio_id", BigID, fk("portfolios.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("day", sa.Date(), primary_key=True),
    sa.Column("currency", sa.String(16), primary_key=True),
    sa.Column("realized_pnl", Money(), nullable=False),
)

positions = sa.Table(
    "positions",
    metadata,
    id_column(),
    uid_column(),
    sa.Column("portfolio_id", BigID, fk("portfolios.id", ondelete="CASCADE"), nullable=False),
    sa.Column("instrument_id", BigID, fk("instruments.id"), nullable=False),
    sa.Column("strategy_id", BigID, fk("strategies.id", ondelete="SET NULL")),
    sa.Column("quantity", Money(), nullable=False),
    sa.Column("cost_basis", Money(), nullable=False, server_default="0"),
    sa.Column("avg_price", Money(), nullable=False, server_default="0"),
    sa.Column("realized_pnl", Money(), nullable=False, server_default="0"),
    sa.Column("opened_at", UTCDateTime()),
    # The canonical key (exec_time, trade id) of the last fill applied: a fill that sorts
    # before it is late and makes the DAL re-derive the position from its trades.
    sa.Column("last_exec_time", UTCDateTime()),
    sa.Column("last_trade_id", BigID),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
    sa.CheckConstraint("CAST(cost_basis AS NUMERIC) >= 0", name="cost_basis_nonneg"),
    # One position per (portfolio, instrument, strategy) including the manual (NULL) strategy.
    sa.Index(
        "uq_positions_portfolio_instrument_strategy",
        "portfolio_id",
        "instrument_id",
        sa.func.coalesce(sa.column("strategy_id"), sa.literal_column("0")),
        unique=True,
    ),
    # (portfolio_id) is served by the unique index above, whose first column it is.
    sa.Index(None, "instrument_id"),
    sa.Index(None, "strategy_id"),
)

# A position's state as of a point in canonical trade order (exec_time, trade id), written
# when the position's fills cross into a new UTC day: a late fill replays only the trades
# after the last checkpoint before it instead of the position's whole history
# (dal/checkpoints.py). Derived data like the position itself: ``verify`` checks every row
# against a replay from zero, ``repair`` rewrites them. Primary key in that order: the latest
# checkpoint before a time is one index probe.
position_checkpoints = sa.Table(
    "position_checkpoints",
    metadata,
    sa.Column("position_id", BigID, fk("positions.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("as_of_exec_time", UTCDateTime(), primary_key=True),
    # The last trade the state includes (no foreign key: trades go only with their portfolio,
    # which takes the position and its checkpoints with it).
    sa.Column("as_of_trade_id", BigID, primary_key=True, autoincrement=False),
    sa.Column("quantity", Money(), nullable=False),
    sa.Column("cost_basis", Money(), nullable=False),
    sa.Column("realized_pnl", Money(), nullable=False),
    sa.Column("opened_at", UTCDateTime()),
    sa.CheckConstraint("CAST(cost_basis AS NUMERIC) >= 0", name="cost_basis_nonneg"),
)

cash_movements = sa.Table(
    "cash_movements",
    metadata,
    id_column(),
    uid_column(),
    sa.Column("portfolio_id", BigID, fk("portfolios.id", ondelete="CASCADE"), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    # Signed: deposits are positive, withdrawals negative, adjustments either.
    sa.Column("amount", Money(), nullable=False),
    sa.Column("currency", sa.String(16), nullable=False),
    sa.Column("note", sa.Text()),
    created_at(),
    one_of("kind", CASH_KINDS),
    sa.CheckConstraint(
        "(kind = 'DEPOSIT' AND CAST(amount AS NUMERIC) > 0)"
        " OR (kind = 'WITHDRAWAL' AND CAST(amount AS NUMERIC) < 0)"
        " OR (kind = 'ADJUSTMENT' AND CAST(amount AS NUMERIC) <> 0)",
        name="amount_sign",
    ),
    sa.Index(None, "portfolio_id", "created_at"),
)

risk_policies = sa.Table(
    "risk_policies",
    metadata,
    id_column(),
    uid_column(),
    # Addition: the owner, so ownership filters need no per-scope join.
    sa.Column("user_id", BigID, fk("users.id", ondelete="CASCADE"), nullable=False),
    sa.Column("scope_type", sa.String(16), nullable=False),
    sa.Column("scope_id", BigID, nullable=False),
    sa.Column("name", sa.String(64), nullable=False),
    sa.Column("config_json", JSONDoc(), nullable=False),
    sa.Column("is_active", sa.Boolean(), nullable=False, server_default=sa.true()),
    created_at(),
    one_of("scope_type", POLICY_SCOPES),
    sa.UniqueConstraint("user_id", "name"),
    sa.Index(None, "scope_type", "scope_id"),
    sa.Index(None, "is_active"),
)

risk_breaches = sa.Table(
    "risk_breaches",
    metadata,
    id_column(),
    sa.Column("policy_id", BigID, fk("risk_policies.id", ondelete="CASCADE"), nullable=False),
    sa.Column("portfolio_id", BigID, fk("portfolios.id", ondelete="SET NULL")),
    sa.Column("instrument_id", BigID, fk("instruments.id", ondelete="SET NULL")),
    sa.Column("order_id", BigID, fk("orders.id", ondelete="SET NULL")),
    sa.Column("observed_json", JSONDoc(), nullable=False),
    sa.Column("action", sa.String(16), nullable=False),
    created_at(),
    one_of("action", BREACH_ACTIONS),
    sa.Index(None, "policy_id", "created_at"),
    sa.Index(None, "portfolio_id", "created_at"),
)

alerts = sa.Table(
    "alerts",
    metadata,
    id_column(),
    uid_column(),
    sa.Column("user_id", BigID, fk("users.id", ondelete="CASCADE"), nullable=False),
    sa.Column("portfolio_id", BigID, fk("portfolios.id", ondelete="SET NULL")),
    sa.Column("name", sa.String(64), nullable=False),
    sa.Column("type", sa.String(16), nullable=False),
    sa.Column("config_json", JSONDoc(), nullable=False),
    sa.Column("is_active", sa.Boolean(), nullable=False, server_default=sa.true()),
    created_at(),
    one_of("type", ALERT_TYPES),
    sa.Index(None, "user_id", "is_active"),
)

schedules = sa.Table(
    "schedules",
    metadata,
    id_column(),
    uid_column(),
    sa.Column("user_id", BigID, fk("users.id", ondelete="CASCADE"), nullable=False),
    sa.Column("name", sa.String(64), nullable=False),
    sa.Column("cron", sa.String(128), nullable=False),
    sa.Column("config_json", JSONDoc(), nullable=False, server_default="{}"),
    sa.Column("is_active", sa.Boolean(), nullable=False, server_default=sa.true()),
    sa.Column("last_run_at", UTCDateTime()),
    sa.Column("next_run_at", UTCDateTime()),
    created_at(),
    sa.Index(None, "user_id"),
    sa.Index(None, "is_active", "next_run_at"),
)

screeners = sa.Table(
    "screeners",
    metadata,
    id_column(),
    uid_column(),
    sa.Column("user_id", BigID, fk("users.id", ondelete="CASCADE"), nullable=False),
    sa.Column("name", sa.String(64), nullable=False),
    sa.Column("config_json", JSONDoc(), nullable=False),
    sa.Column("is_active", sa.Boolean(), nullable=False, server_default=sa.true()),
    created_at(),
    sa.Index(None, "user_id"),
)

RUN_STATUSES = ("RUNNING", "STOPPED", "CRASHED", "FINISHED")

# Which strategy version runs on which portfolio, so running
# strategies resume after a restart.
strategy_runs = sa.Table(
    "strategy_runs",
    metadata,
    id_column(),
    sa.Column("strategy_id", BigID, fk("strategies.id", ondelete="CASCADE"), nullable=False),
    sa.Column("portfolio_id", BigID, fk("portfolios.id", ondelete="CASCADE"), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("error", sa.Text()),
    sa.Column("started_at", UTCDateTime(), nullable=False),
    sa.Column("stopped_at", UTCDateTime()),
    one_of("status", RUN_STATUSES),
    sa.UniqueConstraint("strategy_id", "portfolio_id"),
    sa.Index(None, "status"),
)

audit_log = sa.Table(
    "audit_log",
    metadata,
    id_column(),
    sa.Column("user_id", BigID, fk("users.id", ondelete="SET NULL")),
    sa.Column("entity_type", sa.String(16), nullable=False),
    sa.Column("entity_id", BigID),
    sa.Column("action", sa.String(16), nullable=False),
    sa.Column("details_json", JSONDoc(), nullable=False),
    created_at(),
    one_of("entity_type", AUDIT_ENTITIES),
    one_of("action", AUDIT_ACTIONS),
    sa.Index(None, "user_id", "created_at"),
    sa.Index(None, "entity_type", "entity_id"),
    sa.Index(None, "created_at"),
)

# The latest price the market-data feed gave each instrument, so a restart continues from it.
marks = sa.Table(
    "marks",
    metadata,
    sa.Column("instrument_id", BigID, fk("instruments.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("price", Money(), nullable=False),
    sa.Column("as_of", UTCDateTime(), nullable=False),
)

# Each portfolio's equity at the end of each local day of its owner, in the portfolio's
# currency: the equity curve and its drawdown. ``marks_json`` holds the prices it was valued at
# (instrument id → price), so a snapshot can be re-derived from the trades and cash up to
# ``as_of`` (dal/equity.py); ``unconverted_json`` what could not be valued in that currency.
equity_snapshots = sa.Table(
    "equity_snapshots",
    metadata,
    sa.Column("portfolio_id", BigID, fk("portfolios.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("day", sa.Date(), primary_key=True),
    sa.Column("currency", sa.String(16), nullable=False),
    sa.Column("equity", Money(), nullable=False),
    sa.Column("net_deposits", Money(), nullable=False),
    sa.Column("marks_json", JSONDoc(), nullable=False),
    sa.Column("balances_json", JSONDoc(), nullable=False),
    sa.Column("unconverted_json", JSONDoc(), nullable=False),
    sa.Column("as_of", UTCDateTime(), nullable=False),
)

# Broker events the order desk could not apply after its retries: kept until they apply, so
# no fill or status change the broker sent is ever lost. ``applied_at`` is set once one does.
unapplied_events = sa.Table(
    "unapplied_events",
    metadata,
    id_column(),
    sa.Column("user_id", BigID, fk("users.id", ondelete="CASCADE"), nullable=False),
    sa.Column("portfolio_id", BigID, fk("portfolios.id", ondelete="CASCADE"), nullable=False),
    sa.Column("event_json", JSONDoc(), nullable=False),
    sa.Column("error", sa.Text(), nullable=False),
    sa.Column("attempts", sa.Integer(), nullable=False),
    created_at(),
    sa.Column("last_tried_at", UTCDateTime(), nullable=False),
    sa.Column("applied_at", UTCDateTime()),
    sa.Index(None, "user_id", "applied_at"),
)
