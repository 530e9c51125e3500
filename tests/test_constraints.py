"""Every CHECK, foreign key and unique of the schema refuses bad rows, on both engines."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from dal import schema as s
from dal.types import new_uid

T0 = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)


async def insert(engine: AsyncEngine, table: sa.Table, **values: Any) -> int | None:
    """Insert one row; its id (None for a table keyed otherwise, like pnl_summary)."""
    async with engine.begin() as conn:
        if "id" not in table.c:
            await conn.execute(table.insert().values(**values))
            return None
        return (await conn.execute(table.insert().values(**values).returning(table.c.id))).scalar()


class Graph:
    """One valid row per table; ``row(table, **changes)`` returns a new valid row to mutate."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.ids: dict[str, int] = {}
        self.seq = 0

    def _n(self) -> str:
        self.seq += 1
        return str(self.seq)

    def row(self, table: sa.Table, **changes: Any) -> dict[str, Any]:
        i = self.ids
        n = self._n()
        uid = {"uid": new_uid()} if "uid" in table.c else {}
        base: dict[str, dict[str, Any]] = {
            "users": {"telegram_user_id": f"tg{n}", "created_at": T0},
            "brokers": {"code": f"B{n}", "name": "Broker"},
            "accounts": {
                "user_id": i.get("users"),
                "broker_id": 1,
                "name": f"acct{n}",
                "created_at": T0,
            },
            "portfolios": {
                "user_id": i.get("users"),
                "account_id": i.get("accounts"),
                "name": f"pf{n}",
                "created_at": T0,
            },
            "strategies": {"user_id": i.get("users"), "name": f"st{n}", "created_at": T0},
            "instruments": {
                "symbol": f"SYM{n}",
                "base_asset": f"SYM{n}",
                "exchange": "X",
                "asset_type": "CRYPTO",
                "currency": "USDT",
                "tick_size": Decimal("0.01"),
            },
            "orders": {
                "portfolio_id": i.get("portfolios"),
                "instrument_id": i.get("instruments"),
                "side": "BUY",
                "type": "LIMIT",
                "status": "NEW",
                "time_in_force": "GTC",
                "quantity": Decimal("2"),
                "price": Decimal("10"),
                "filled_quantity": Decimal("1"),
                "client_order_id": f"c{n}",
                "broker_order_id": f"b{n}",
                "placed_at": T0,
                "updated_at": T0,
            },
            "trades": {
                "portfolio_id": i.get("portfolios"),
                "instrument_id": i.get("instruments"),
                "side": "BUY",
                "quantity": Decimal("1"),
                "price": Decimal("10"),
                "exec_time": T0,
                "broker_trade_id": f"t{n}",
            },
            "positions": {
                "portfolio_id": i.get("portfolios"),
                "instrument_id": i.get("instruments"),
                "strategy_id": i.get("strategies"),
                "quantity": Decimal("1"),
                "updated_at": T0,
            },
            "position_checkpoints": {
                "position_id": i.get("positions"),
                "as_of_exec_time": T0 + dt.timedelta(days=self.seq),
                "as_of_trade_id": i.get("trades"),
                "quantity": Decimal("1"),
                "cost_basis": Decimal("100"),
                "realized_pnl": Decimal("0"),
            },
            "cash_movements": {
                "portfolio_id": i.get("portfolios"),
                "kind": "DEPOSIT",
                "amount": Decimal("100"),
                "currency": "USDT",
                "created_at": T0,
            },
            "risk_policies": {
                "user_id": i.get("users"),
                "scope_type": "USER",
                "scope_id": i.get("users"),
                "name": f"pol{n}",
                "config_json": {"max_daily_loss": "0.03"},
                "created_at": T0,
            },
            "risk_breaches": {
                "policy_id": i.get("risk_policies"),
                "observed_json": {},
                "action": "WARNED",
                "created_at": T0,
            },
            "alerts": {
                "user_id": i.get("users"),
                "name": f"al{n}",
                "type": "PRICE",
                "config_json": {},
                "created_at": T0,
            },
            "schedules": {
                "user_id": i.get("users"),
                "name": f"sc{n}",
                "cron": "0 18 * * *",
                "created_at": T0,
            },
            "strategy_runs": {
                "strategy_id": i.get("strategies"),
                "portfolio_id": i.get("portfolios"),
                "status": "RUNNING",
                "started_at": T0,
            },
            "screeners": {
                "user_id": i.get("users"),
                "name": f"scr{n}",
                "config_json": {},
                "created_at": T0,
            },
            "pnl_summary": {
                "portfolio_id": i.get("portfolios"),
                "period": "DAY",
                "period_start": T0.date() + dt.timedelta(days=self.seq),
                "instrument_id": i.get("instruments"),
                "fee_currency": "",
                "realized_pnl": Decimal("1.5"),
                "fees": Decimal(0),
                "trade_count": 1,
            },
            "pnl_daily": {
                "portfolio_id": i.get("portfolios"),
                "day": T0.date() + dt.timedelta(days=self.seq),
                "currency": "USDT",
                "realized_pnl": Decimal("1.5"),
            },
            "audit_log": {
                "entity_type": "ORDER",
                "action": "CREATE",
                "details_json": {},
                "created_at": T0,
            },
            "marks": {"instrument_id": i.get("instruments"), "price": Decimal(1), "as_of": T0},
            "equity_snapshots": {
                "portfolio_id": i.get("portfolios"),
                "day": T0.date() + dt.timedelta(days=self.seq),
                "currency": "USDT",
                "equity": Decimal("10000"),
                "net_deposits": Decimal("10000"),
                "marks_json": {},
                "balances_json": {"USDT": "10000"},
                "unconverted_json": {},
                "as_of": T0,
            },
            "unapplied_events": {
                "user_id": i.get("users"),
                "portfolio_id": i.get("portfolios"),
                "event_json": {"kind": "fill"},
                "error": "boom",
                "attempts": 1,
                "created_at": T0,
                "last_tried_at": T0,
            },
        }
        return {**uid, **base[table.name], **changes}

    async def build(self) -> Graph:
        for table in (
            s.users,
            s.accounts,
            s.portfolios,
            s.strategies,
            s.instruments,
            s.orders,
            s.trades,
            s.positions,
            s.cash_movements,
            s.risk_policies,
            s.risk_breaches,
            s.alerts,
            s.schedules,
            s.screeners,
            s.audit_log,
        ):
            new_id = await insert(self.engine, table, **self.row(table))
            assert new_id is not None, table.name  # each table built here has an id
            self.ids[table.name] = new_id
        return self


@pytest.fixture
async def graph(engine: AsyncEngine) -> Graph:
    return await Graph(engine).build()


async def test_valid_rows_insert(graph: Graph) -> None:
    # Baseline for the refusals below: an unmodified new row is accepted in every table.
    for table in s.metadata.sorted_tables:
        if table.name in ("positions", "brokers"):
            continue
        await insert(graph.engine, table, **graph.row(table))


BAD_ROWS: list[tuple[str, sa.Table, dict[str, Any]]] = [
    ("unknown asset type", s.instruments, {"asset_type": "BOND"}),
    ("zero tick size", s.instruments, {"tick_size": Decimal("0")}),
    ("negative lot size", s.instruments, {"lot_size": Decimal("-1")}),
    ("unknown side", s.orders, {"side": "HOLD"}),
    ("unknown summary period", s.pnl_summary, {"period": "WEEK"}),
    ("negative summary trade count", s.pnl_summary, {"trade_count": -1}),
    ("summary for missing portfolio", s.pnl_summary, {"portfolio_id": 999_999}),
    ("daily row for missing portfolio", s.pnl_daily, {"portfolio_id": 999_999}),
    ("unknown order type", s.orders, {"type": "ICEBERG"}),
    ("unknown status", s.orders, {"status": "DONE"}),
    ("unknown time in force", s.orders, {"time_in_force": "GTD"}),
    ("zero quantity", s.orders, {"quantity": Decimal("0")}),
    ("negative quantity", s.orders, {"quantity": Decimal("-1")}),
    ("negative price", s.orders, {"price": Decimal("-10")}),
    ("zero stop price", s.orders, {"stop_price": Decimal("0")}),
    ("overfill", s.orders, {"filled_quantity": Decimal("3")}),
    ("negative filled", s.orders, {"filled_quantity": Decimal("-1")}),
    ("order for missing portfolio", s.orders, {"portfolio_id": 999_999}),
    ("order for missing instrument", s.orders, {"instrument_id": 999_999}),
    ("trade side", s.trades, {"side": "buy"}),
    ("trade zero quantity", s.trades, {"quantity": Decimal("0")}),
    ("trade zero price", s.trades, {"price": Decimal("0")}),
    ("trade for missing order", s.trades, {"order_id": 999_999}),
    ("position negative cost basis", s.positions, {"cost_basis": Decimal("-1")}),
    ("checkpoint negative cost basis", s.position_checkpoints, {"cost_basis": Decimal("-1")}),
    ("checkpoint of missing position", s.position_checkpoints, {"position_id": 999_999}),
    ("deposit must be positive", s.cash_movements, {"amount": Decimal("-5")}),
    (
        "withdrawal must be negative",
        s.cash_movements,
        {"kind": "WITHDRAWAL", "amount": Decimal("5")},
    ),
    ("zero adjustment", s.cash_movements, {"kind": "ADJUSTMENT", "amount": Decimal("0")}),
    ("unknown cash kind", s.cash_movements, {"kind": "GIFT"}),
    ("policy scope", s.risk_policies, {"scope_type": "GLOBAL"}),
    ("breach action", s.risk_breaches, {"action": "IGNORED"}),
    ("breach for missing policy", s.risk_breaches, {"policy_id": 999_999}),
    ("alert type", s.alerts, {"type": "SMS"}),
    ("audit entity", s.audit_log, {"entity_type": "WALLET"}),
    ("run status", s.strategy_runs, {"status": "PAUSED"}),
    ("run of missing strategy", s.strategy_runs, {"strategy_id": 999_999}),
    ("audit action", s.audit_log, {"action": "LAUNCH"}),
    ("account for missing user", s.accounts, {"user_id": 999_999}),
    ("account for missing broker", s.accounts, {"broker_id": 999_999}),
    ("user approved by missing user", s.users, {"approved_by_user_id": 999_999}),
    ("schedule for missing user", s.schedules, {"user_id": 999_999}),
]


@pytest.mark.parametrize(("what", "table", "changes"), BAD_ROWS, ids=[case[0] for case in BAD_ROWS])
async def test_bad_row_is_refused(
    graph: Graph, what: str, table: sa.Table, changes: dict[str, Any]
) -> None:
    before = await count(graph.engine, table)
    with pytest.raises(IntegrityError):
        await insert(graph.engine, table, **graph.row(table, **changes))
    assert await count(graph.engine, table) == before


async def count(engine: AsyncEngine, table: sa.Table) -> int:
    async with engine.connect() as conn:
        return (await conn.execute(sa.select(sa.func.count()).select_from(table))).scalar_one()


async def refused(graph: Graph, table: sa.Table, **changes: Any) -> None:
    with pytest.raises(IntegrityError):
        await insert(graph.engine, table, **graph.row(table, **changes))


async def test_uniques(graph: Graph) -> None:
    ids = graph.ids
    await refused(graph, s.users, telegram_user_id="tg1")
    await refused(graph, s.brokers, code="PAPER")
    await refused(graph, s.accounts, name="acct2")
    await refused(graph, s.portfolios, name="pf3")
    await refused(graph, s.strategies, name="st4", version="1.0")
    await insert(graph.engine, s.strategies, **graph.row(s.strategies, name="st4", version="1.1"))
    await refused(graph, s.risk_policies, name="pol10")
    # uid columns are unique everywhere.
    async with graph.engine.connect() as conn:
        order_uid = (await conn.execute(sa.select(s.orders.c.uid))).scalar()
    await refused(graph, s.orders, uid=order_uid)
    # Idempotency keys: client order id per portfolio; broker ids per portfolio + instrument.
    await refused(graph, s.orders, client_order_id="c6")
    await refused(graph, s.orders, broker_order_id="b6")
    other = await insert(graph.engine, s.instruments, **graph.row(s.instruments))
    await insert(
        graph.engine, s.orders, **graph.row(s.orders, instrument_id=other, broker_order_id="b6")
    )
    await refused(graph, s.trades, broker_trade_id="t7")
    await insert(
        graph.engine, s.trades, **graph.row(s.trades, instrument_id=other, broker_trade_id="t7")
    )
    # Several trades without a broker id are fine (manual fills).
    await insert(graph.engine, s.trades, **graph.row(s.trades, broker_trade_id=None))
    await insert(graph.engine, s.trades, **graph.row(s.trades, broker_trade_id=None))
    assert ids["portfolios"]


async def test_instrument_unique_with_null_exchange(graph: Graph) -> None:
    await insert(
        graph.engine, s.instruments, **graph.row(s.instruments, symbol="BTC", exchange=None)
    )
    await refused(graph, s.instruments, symbol="BTC", exchange=None)
    await insert(
        graph.engine, s.instruments, **graph.row(s.instruments, symbol="BTC", exchange="X")
    )
    await refused(graph, s.instruments, symbol="BTC", exchange="X")


async def test_one_position_per_key_including_manual(graph: Graph) -> None:
    # The graph holds a strategy position; a second one for the same strategy is refused.
    await refused(graph, s.positions)
    # One manual (NULL strategy) position is fine; a second manual one is refused.
    await insert(graph.engine, s.positions, **graph.row(s.positions, strategy_id=None))
    await refused(graph, s.positions, strategy_id=None)


async def test_one_default_portfolio_per_user(graph: Graph) -> None:
    await insert(graph.engine, s.portfolios, **graph.row(s.portfolios, is_default=True))
    await refused(graph, s.portfolios, is_default=True)
    await insert(graph.engine, s.portfolios, **graph.row(s.portfolios, is_default=False))


async def test_portfolio_account_must_belong_to_the_same_user(graph: Graph) -> None:
    other_user = await insert(graph.engine, s.users, **graph.row(s.users))
    await refused(graph, s.portfolios, user_id=other_user)  # account is the first user's


async def test_on_delete_actions(graph: Graph) -> None:
    ids = graph.ids
    approver = await insert(graph.engine, s.users, **graph.row(s.users))
    approved = await insert(
        graph.engine, s.users, **graph.row(s.users, approved_by_user_id=approver)
    )
    async with graph.engine.begin() as conn:
        await conn.execute(s.users.delete().where(s.users.c.id == approver))
        assert (
            await conn.execute(
                sa.select(s.users.c.approved_by_user_id).where(s.users.c.id == approved)
            )
        ).scalar() is None
        # Deleting the strategy turns its orders manual (SET NULL) ...
        order_with_strategy = (
            await conn.execute(
                s.orders.insert()
                .values(**graph.row(s.orders, strategy_id=ids["strategies"]))
                .returning(s.orders.c.id)
            )
        ).scalar()
        await conn.execute(s.positions.delete())
        await conn.execute(s.strategies.delete().where(s.strategies.c.id == ids["strategies"]))
        assert (
            await conn.execute(
                sa.select(s.orders.c.strategy_id).where(s.orders.c.id == order_with_strategy)
            )
        ).scalar() is None
        # ... and deleting the user removes everything they own (CASCADE).
        await conn.execute(s.users.delete().where(s.users.c.id == ids["users"]))
        for table in (s.accounts, s.portfolios, s.orders, s.trades, s.cash_movements, s.alerts):
            n = (await conn.execute(sa.select(sa.func.count()).select_from(table))).scalar()
            assert n == 0, table.name
        # The audit trail outlives the user (SET NULL).
        assert (
            await conn.execute(sa.select(sa.func.count()).select_from(s.audit_log))
        ).scalar() == 1


async def test_instrument_in_use_cannot_be_deleted(graph: Graph) -> None:
    with pytest.raises(IntegrityError):
        async with graph.engine.begin() as conn:
            await conn.execute(
                s.instruments.delete().where(s.instruments.c.id == graph.ids["instruments"])
            )
