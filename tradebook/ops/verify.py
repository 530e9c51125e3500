"""`tradebook db verify`: integrity of the database and of every derived number.

* Integrity. SQLite: ``PRAGMA integrity_check`` and ``foreign_key_check``. PostgreSQL: no
  constraint left ``NOT VALID``. Both: no row whose foreign key points at a missing row (an
  explicit query per foreign key, so a copy is checked the same way on either engine).
* Positions: every portfolio's materialized positions, their checkpoints, per-trade realized
  PnL and PnL summary (day and month rows) equal the replay of its trades from the first
  (``dal.positions.verify_portfolio``).
* Order fills (the other summary the DAL keeps): an order's ``filled_quantity`` equals the sum
  of its trades' quantities.
* Balances: every portfolio's balance per asset (kept in its PnL summary) equals the sum of
  its cash movements, trades and fees; every equity snapshot equals the valuation of the
  trades and cash up to its moment at its stored marks.

SQLite is opened read-only; PostgreSQL is read in one transaction that is rolled back. Nothing
is ever written.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from decimal import Decimal

import sqlalchemy as sa

from dal import schema as t
from dal.balances import totals, totals_from_trades
from dal.decimals import NOTIONAL_CONTEXT, average_price
from dal.engine import create_engine
from dal.equity import rederive
from dal.positions import verify_portfolio
from tradebook.ops.sqlite_access import integrity_problems, readonly_engine, sqlite_path


@dataclass
class VerifyReport:
    integrity: list[str] = field(default_factory=list)
    positions: list[str] = field(default_factory=list)
    orders: list[str] = field(default_factory=list)
    balances: list[str] = field(default_factory=list)
    portfolios: int = 0

    @property
    def ok(self) -> bool:
        return not (self.integrity or self.positions or self.orders or self.balances)

    def lines(self) -> list[str]:
        positions = (
            "all equal to their trades"
            if not self.positions
            else f"{len(self.positions)} difference(s)"
        )
        out = [
            f"integrity: {'ok' if not self.integrity else f'{len(self.integrity)} problem(s)'}",
            *(f"  {p}" for p in self.integrity),
            f"positions: {self.portfolios} portfolio(s), {positions}",
            *(f"  {p}" for p in self.positions),
            "order fills: "
            + ("equal to their trades" if not self.orders else f"{len(self.orders)} difference(s)"),
            *(f"  {p}" for p in self.orders),
            "balances and equity snapshots: "
            + (
                "equal to their trades"
                if not self.balances
                else f"{len(self.balances)} difference(s)"
            ),
            *(f"  {p}" for p in self.balances),
        ]
        return out


def foreign_key_orphans(conn: sa.Connection) -> list[str]:
    """Rows whose (non-NULL) foreign key matches no row of the referenced table."""
    problems = []
    for table in t.metadata.sorted_tables:
        for fk in table.foreign_key_constraints:
            cols = list(fk.columns)
            parent = fk.referred_table
            refs = [e.column for e in fk.elements]
            p = parent.alias("p")
            match = sa.and_(*(p.c[r.name] == c for r, c in zip(refs, cols, strict=True)))
            query = (
                sa.select(sa.func.count())
                .select_from(table)
                .where(*(c.is_not(None) for c in cols), ~sa.exists().where(match))
            )
            count = conn.execute(query).scalar_one()
            if count:
                names = ", ".join(c.name for c in cols)
                problems.append(
                    f"foreign key: {count} {table.name} row(s) with ({names}) pointing at "
                    f"a missing {parent.name} row"
                )
    return problems


def unvalidated_constraints(conn: sa.Connection) -> list[str]:
    """PostgreSQL constraints left NOT VALID (their rows were never checked)."""
    rows = conn.exec_driver_sql(
        "SELECT c.conrelid::regclass::text, c.conname FROM pg_constraint c "
        "JOIN pg_namespace n ON n.oid = c.connamespace "
        "WHERE n.nspname = current_schema() AND NOT c.convalidated ORDER BY 1, 2"
    ).all()
    return [f"constraint {name} on {table} is NOT VALID" for table, name in rows]


def integrity_sync(conn: sa.Connection) -> list[str]:
    if conn.dialect.name == "sqlite":
        problems = integrity_problems(conn)
    else:
        problems = unvalidated_constraints(conn)
    # PRAGMA foreign_key_check already covers SQLite; the explicit query is the portable one.
    if conn.dialect.name != "sqlite":
        problems += foreign_key_orphans(conn)
    return problems


def positions_sync(conn: sa.Connection) -> tuple[int, list[str]]:
    ids = list(conn.execute(sa.select(t.portfolios.c.id).order_by(t.portfolios.c.id)).scalars())
    differences: list[str] = []
    for pid in ids:
        differences.extend(str(d) for d in verify_portfolio(conn, pid))
    return len(ids), differences


def order_fills_sync(conn: sa.Connection) -> list[str]:
    """Each order's filled quantity, notional and average fill price against its trades."""
    sums: dict[int, tuple[Decimal, Decimal]] = {}
    query = sa.select(t.trades.c.order_id, t.trades.c.quantity, t.trades.c.price).where(
        t.trades.c.order_id.is_not(None)
    )
    for order_id, quantity, price in conn.execute(query):
        filled, notional = sums.get(order_id, (Decimal(0), Decimal(0)))
        sums[order_id] = (
            NOTIONAL_CONTEXT.add(filled, quantity),
            NOTIONAL_CONTEXT.add(notional, NOTIONAL_CONTEXT.multiply(quantity, price)),
        )
    problems = []
    orders = t.orders
    query = sa.select(
        orders.c.id, orders.c.filled_quantity, orders.c.fill_notional, orders.c.avg_fill_price
    ).order_by(orders.c.id)
    for row in conn.execute(query):
        want_filled, want_notional = sums.get(row.id, (Decimal(0), Decimal(0)))
        wanted = {
            "filled_quantity": want_filled,
            "fill_notional": want_notional,
            "avg_fill_price": average_price(want_notional, want_filled) if want_filled else None,
        }
        for name, want in wanted.items():
            if getattr(row, name) != want:
                have = getattr(row, name)
                problems.append(f"order #{row.id}: {name} is {have}, trades say {want}")
    return problems


def balances_sync(conn: sa.Connection) -> list[str]:
    """Each portfolio's balances and equity snapshots against its cash and trades."""
    problems = []
    ids = list(conn.execute(sa.select(t.portfolios.c.id).order_by(t.portfolios.c.id)).scalars())
    for pid in ids:
        kept, derived = totals(conn, pid), totals_from_trades(conn, pid)
        for asset in sorted(set(kept) | set(derived)):
            have, want = kept.get(asset, Decimal(0)), derived.get(asset, Decimal(0))
            if have != want:
                problems.append(
                    f"portfolio #{pid}: {asset} balance is {have}, trades and cash say {want}"
                )
    for snapshot in conn.execute(sa.select(t.equity_snapshots).order_by("portfolio_id", "day")):
        want = rederive(conn, snapshot)
        if snapshot.equity != want:
            problems.append(
                f"portfolio #{snapshot.portfolio_id}: equity on {snapshot.day} is "
                f"{snapshot.equity}, its trades and marks say {want}"
            )
    return problems


def verify_sync(conn: sa.Connection) -> VerifyReport:
    report = VerifyReport(integrity=integrity_sync(conn))
    report.portfolios, report.positions = positions_sync(conn)
    report.orders = order_fills_sync(conn)
    report.balances = balances_sync(conn)
    return report


async def verify_database(url: str) -> VerifyReport:
    """Verify the database at ``url`` without writing anything."""
    path = sqlite_path(url)
    if path is not None:
        engine = readonly_engine(path)

        def run() -> VerifyReport:
            try:
                with engine.connect() as conn:  # one read snapshot (BEGIN DEFERRED)
                    return verify_sync(conn)
            finally:
                engine.dispose()

        return await asyncio.to_thread(run)

    async_engine = create_engine(url, pool_size=1, max_overflow=0)
    try:
        async with async_engine.connect() as conn:
            await conn.execute(sa.text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
            report = await conn.run_sync(verify_sync)
            await conn.rollback()
            return report
    finally:
        await async_engine.dispose()
