"""Whose row is it: the one check every service runs before it reads or changes a row by id.

A row belongs to the acting user when its ``user_id`` is theirs, or — for rows without one
(orders) — when its portfolio's is. Another user's row and a row that does not exist give the
same ``NotFound``, so ids reveal nothing. The admin scope sees every row (``Tx.owned``).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from dal import schema as t
from dal.errors import NotFound
from dal.models import valid_id
from dal.scope import Tx


def owned_row(tx: Tx, table: sa.Table, row_id: int, noun: str) -> sa.Row[Any]:
    """The row ``row_id`` of ``table`` if the actor may see it, else NotFound("no <noun> #id")."""
    if not valid_id(row_id):
        raise NotFound(f"no {noun} #{row_id}")
    query = sa.select(table).where(table.c.id == row_id)
    if "user_id" in table.c:
        query = query.where(tx.owned(table.c.user_id))
    else:
        portfolios = t.portfolios
        query = query.join(portfolios, portfolios.c.id == table.c.portfolio_id).where(
            tx.owned(portfolios.c.user_id)
        )
    row = tx.conn.execute(query).one_or_none()
    if row is None:
        raise NotFound(f"no {noun} #{row_id}")
    return row
