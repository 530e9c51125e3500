"""The cash ledger per portfolio: deposits, withdrawals (of the free balance) and adjustments."""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal, localcontext
from typing import Any

import sqlalchemy as sa

from dal import schema as t
from dal.accounts import broker_code_of
from dal.balances import amount_text, free, lock_portfolio_balances
from dal.decimals import DECIMAL_CONTEXT
from dal.errors import Conflict, InvalidInput
from dal.marks import stored_marks
from dal.models import NewCashMovement, parse
from dal.ownership import owned_portfolio
from dal.scope import Tx, read_only
from dal.types import new_uid

cash = t.cash_movements
ZERO = Decimal(0)


def insert_movement(
    tx: Tx,
    portfolio_id: int,
    kind: str,
    amount: Decimal,
    currency: str,
    note: str | None,
    *,
    user_id: int | None = None,
) -> int:
    movement_id: int = tx.conn.execute(
        cash.insert()
        .values(
            uid=new_uid(),
            portfolio_id=portfolio_id,
            kind=kind,
            amount=amount,
            currency=currency,
            note=note,
            created_at=tx.now(),
        )
        .returning(cash.c.id)
    ).scalar_one()
    tx.audit(
        "CASH",
        movement_id,
        "CREATE",
        {"portfolio_id": portfolio_id, "kind": kind, "amount": amount, "currency": currency},
        user_id=user_id,
    )
    return movement_id


def cash_balances(conn: sa.Connection, portfolio_id: int) -> dict[str, Decimal]:
    """Cash per currency, summed in Python (SQLite would sum decimal TEXT as float)."""
    totals: dict[str, Decimal] = defaultdict(Decimal)
    with localcontext(DECIMAL_CONTEXT):
        for currency, amount in conn.execute(
            sa.select(cash.c.currency, cash.c.amount).where(cash.c.portfolio_id == portfolio_id)
        ):
            totals[currency] += amount
    return dict(totals)


class CashService:
    def __init__(self, tx: Tx) -> None:
        self.tx = tx

    def record(self, data: NewCashMovement | dict[str, Any]) -> sa.Row[Any]:
        """A deposit (amount > 0), withdrawal (given as a positive amount) or adjustment."""
        new = parse(NewCashMovement, data)
        owned_portfolio(self.tx, new.portfolio_id, writable=True)
        amount = new.amount
        if new.kind == "DEPOSIT" and amount <= 0:
            raise InvalidInput("a deposit must be positive")
        if new.kind == "WITHDRAWAL":
            if amount <= 0:
                raise InvalidInput("give the withdrawal as a positive amount")
            amount = -amount
            if self._enforces_balances(new.portfolio_id):
                self._check_free(new.portfolio_id, new.currency, -amount)
        if new.kind == "ADJUSTMENT" and amount == 0:
            raise InvalidInput("an adjustment cannot be zero")
        movement_id = insert_movement(
            self.tx, new.portfolio_id, new.kind, amount, new.currency, new.note
        )
        return self.tx.conn.execute(sa.select(cash).where(cash.c.id == movement_id)).one()

    def _enforces_balances(self, portfolio_id: int) -> bool:
        """Paper accounts hold their balances like an exchange account; a portfolio whose
        trades are recorded from elsewhere (/fill) only keeps a record, which may be
        incomplete, so it refuses nothing."""
        return broker_code_of(self.tx.conn, portfolio_id) == "PAPER"

    def _check_free(self, portfolio_id: int, currency: str, amount: Decimal) -> None:
        lock_portfolio_balances(self.tx.conn, portfolio_id)
        free_now = free(self.tx.conn, portfolio_id, currency, stored_marks(self.tx.conn))
        if free_now - amount < 0:  # the account's state refuses it, not the input
            raise Conflict(
                f"cannot withdraw {amount_text(amount, currency)}: free balance "
                f"{amount_text(free_now, currency)}"
            )

    def deposit(
        self, portfolio_id: int, amount: Any, currency: str, note: str | None = None
    ) -> sa.Row[Any]:
        return self.record(
            {
                "portfolio_id": portfolio_id,
                "kind": "DEPOSIT",
                "amount": amount,
                "currency": currency,
                "note": note,
            }
        )

    def withdraw(
        self, portfolio_id: int, amount: Any, currency: str, note: str | None = None
    ) -> sa.Row[Any]:
        return self.record(
            {
                "portfolio_id": portfolio_id,
                "kind": "WITHDRAWAL",
                "amount": amount,
                "currency": currency,
                "note": note,
            }
        )

    def adjust(
        self, portfolio_id: int, amount: Any, currency: str, note: str | None = None
    ) -> sa.Row[Any]:
        return self.record(
            {
                "portfolio_id": portfolio_id,
                "kind": "ADJUSTMENT",
                "amount": amount,
                "currency": currency,
                "note": note,
            }
        )

    @read_only
    def balances(self, portfolio_id: int) -> dict[str, Decimal]:
        owned_portfolio(self.tx, portfolio_id)
        return cash_balances(self.tx.conn, portfolio_id)

    def movements(self, portfolio_id: int, limit: int = 100) -> list[sa.Row[Any]]:
        owned_portfolio(self.tx, portfolio_id)
        return list(
            self.tx.conn.execute(
                sa.select(cash)
                .where(cash.c.portfolio_id == portfolio_id)
                .order_by(cash.c.created_at.desc(), cash.c.id.desc())
                .limit(limit)
            )
        )
