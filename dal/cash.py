"""The cash ledger per portfolio, and equity at given marks."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal, localcontext
from typing import Any

import sqlalchemy as sa

from dal import schema as t
from dal.decimals import DECIMAL_CONTEXT
from dal.errors import InvalidInput
from dal.models import NewCashMovement, check_marks, parse
from dal.ownership import owned_portfolio
from dal.position_math import PositionState, unrealized_pnl
from dal.scope import Tx
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


@dataclass
class Equity:
    """Equity per currency: cash + realized PnL − fees + unrealized PnL at the marks."""

    by_currency: dict[str, Decimal] = field(default_factory=dict)
    cash: dict[str, Decimal] = field(default_factory=dict)
    realized: dict[str, Decimal] = field(default_factory=dict)
    fees: dict[str, Decimal] = field(default_factory=dict)
    unrealized: dict[str, Decimal] = field(default_factory=dict)
    missing_marks: list[str] = field(default_factory=list)  # symbols valued at cost

    def get(self, currency: str) -> Decimal:
        return self.by_currency.get(currency, ZERO)


def compute_equity(conn: sa.Connection, portfolio_id: int, marks: dict[int, Decimal]) -> Equity:
    result = Equity(cash=cash_balances(conn, portfolio_id))
    realized: dict[str, Decimal] = defaultdict(Decimal)
    fees: dict[str, Decimal] = defaultdict(Decimal)
    unrealized: dict[str, Decimal] = defaultdict(Decimal)
    with localcontext(DECIMAL_CONTEXT):
        for row in conn.execute(
            sa.select(
                t.positions.c.instrument_id,
                t.positions.c.quantity,
                t.positions.c.cost_basis,
                t.positions.c.realized_pnl,
                t.instruments.c.currency,
                t.instruments.c.symbol,
            )
            .join(t.instruments, t.instruments.c.id == t.positions.c.instrument_id)
            .where(t.positions.c.portfolio_id == portfolio_id)
        ):
            realized[row.currency] += row.realized_pnl
            if row.quantity:
                mark = marks.get(row.instrument_id)
                if mark is None:
                    result.missing_marks.append(row.symbol)
                else:
                    state = PositionState(row.quantity, row.cost_basis)
                    unrealized[row.currency] += unrealized_pnl(state, mark)
        for currency, fee in conn.execute(
            sa.select(t.trades.c.fee_currency, t.trades.c.fee).where(
                t.trades.c.portfolio_id == portfolio_id, t.trades.c.fee_currency.is_not(None)
            )
        ):
            fees[currency] += fee
        currencies = set(result.cash) | set(realized) | set(fees) | set(unrealized)
        result.by_currency = {
            c: result.cash.get(c, ZERO) + realized[c] - fees[c] + unrealized[c]
            for c in sorted(currencies)
        }
    result.realized, result.fees, result.unrealized = dict(realized), dict(fees), dict(unrealized)
    return result


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
            balance = cash_balances(self.tx.conn, new.portfolio_id).get(new.currency, ZERO)
            if balance + amount < 0:
                raise InvalidInput(
                    f"cannot withdraw {-amount} {new.currency}: the cash balance is {balance}"
                )
        if new.kind == "ADJUSTMENT" and amount == 0:
            raise InvalidInput("an adjustment cannot be zero")
        movement_id = insert_movement(
            self.tx, new.portfolio_id, new.kind, amount, new.currency, new.note
        )
        return self.tx.conn.execute(sa.select(cash).where(cash.c.id == movement_id)).one()

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

    def equity(self, portfolio_id: int, marks: dict[int, Decimal] | None = None) -> Equity:
        """cash + realized PnL − fees + unrealized PnL at ``marks`` (instrument id → price),
        per currency. Open positions without a mark are valued at cost and listed."""
        owned_portfolio(self.tx, portfolio_id)
        return compute_equity(self.tx.conn, portfolio_id, check_marks(marks))
