"""orders.fill_notional: Σ quantity × price of an order's fills, exact; avg_fill_price is
re-derived from it (rounded once, half-even, 18 places)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04
"""

from collections.abc import Sequence
from decimal import Decimal

import sqlalchemy as sa
from alembic import op

import dal.decimals
import dal.types

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("orders") as batch:
        batch.add_column(
            sa.Column("fill_notional", dal.types.Notional(), server_default="0", nullable=False)
        )
    # Existing orders: the notional from their trades, and the average derived from it.
    orders = sa.table(
        "orders",
        sa.column("id", sa.BigInteger()),
        sa.column("filled_quantity", dal.types.Money()),
        sa.column("avg_fill_price", dal.types.Money()),
        sa.column("fill_notional", dal.types.Notional()),
    )
    trades = sa.table(
        "trades",
        sa.column("order_id", sa.BigInteger()),
        sa.column("quantity", dal.types.Money()),
        sa.column("price", dal.types.Money()),
    )
    conn = op.get_bind()
    totals: dict[int, tuple[Decimal, Decimal]] = {}
    query = sa.select(trades.c.order_id, trades.c.quantity, trades.c.price).where(
        trades.c.order_id.is_not(None)
    )
    context = dal.decimals.NOTIONAL_CONTEXT
    for order_id, quantity, price in conn.execute(query):
        filled, notional = totals.get(order_id, (Decimal(0), Decimal(0)))
        totals[order_id] = (
            context.add(filled, quantity),
            context.add(notional, context.multiply(quantity, price)),
        )
    for order_id, (filled, notional) in sorted(totals.items()):
        conn.execute(
            orders.update()
            .where(orders.c.id == order_id)
            .values(
                fill_notional=notional,
                avg_fill_price=dal.decimals.average_price(notional, filled) if filled else None,
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("orders") as batch:
        batch.drop_column("fill_notional")
