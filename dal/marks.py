"""Marks: the latest price of each instrument as the market-data feed last gave it.

Kept so a restart continues prices from where they were instead of starting over. Marks are
market data, not anyone's: any approved user may read them; tradebook itself (the system
actor) writes them.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from dal import schema as t
from dal.errors import Forbidden
from dal.models import check_marks
from dal.scope import Tx

marks = t.marks
_UPSERT = {
    name: (
        lambda insert: insert.on_conflict_do_update(
            index_elements=[marks.c.instrument_id],
            set_={"price": insert.excluded.price, "as_of": insert.excluded.as_of},
        )
    )(dialect_insert(marks))
    for name, dialect_insert in (("sqlite", sqlite.insert), ("postgresql", postgresql.insert))
}


def stored_marks(conn: sa.Connection) -> dict[int, Decimal]:
    """Every stored mark: instrument id → price."""
    return {row.instrument_id: row.price for row in conn.execute(sa.select(marks))}


class MarkService:
    def __init__(self, tx: Tx) -> None:
        self.tx = tx

    def save(self, prices: dict[int, Decimal], as_of: dt.datetime) -> None:
        """Store the latest marks (instrument id → price); tradebook itself only."""
        self.tx.require_approved()
        if not self.tx.actor.is_system:
            raise Forbidden("marks are written by tradebook's market-data feed")
        checked = check_marks(prices)
        if checked:
            self.tx.conn.execute(
                _UPSERT[self.tx.dialect],
                [
                    {"instrument_id": i, "price": p, "as_of": as_of}
                    for i, p in sorted(checked.items())
                ],
            )

    def latest(self) -> list[sa.Row[Any]]:
        """Every stored mark with its instrument's symbol."""
        self.tx.require_approved()
        return list(
            self.tx.conn.execute(
                sa.select(marks, t.instruments.c.symbol)
                .join(t.instruments, t.instruments.c.id == marks.c.instrument_id)
                .order_by(marks.c.instrument_id)
            )
        )


def _by_instrument(row: dict[str, Any]) -> int:
    instrument_id: int = row["instrument_id"]
    return instrument_id
