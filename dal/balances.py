"""Balances per asset: what a portfolio holds, what its open orders reserve, what is free.

    total(asset) = the cash ledger in that asset
                 + Σ quantity bought − sold of instruments whose base asset it is
                 + Σ notional received − paid of instruments quoted in it
                 − Σ fees charged in it (a fee without a currency is charged in the quote)

The trade terms come from ``pnl_summary``'s MONTH rows (``net_quantity``, ``net_proceeds``,
``fees``), which the fill transaction keeps, so balances are exact, move with every fill in
that transaction and cannot drift; ``totals_from_trades`` adds the same up from the trades
themselves, which ``db verify`` compares.

An open order reserves what it may still take: a BUY its remaining quantity × its
``reserve_price`` in the quote asset (the limit price, or the mark with slippage for a market
order, plus the fee; fixed when it is placed), a SELL its remaining quantity of the base asset.
Free = total − reserved. Spot accounts refuse an order that needs more than is free and never
sell what they do not hold; margin accounts (``accounts.margin_leverage``) may go short and
hold positions worth up to that many times their equity (dal/valuation.py).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, localcontext
from typing import Any

import sqlalchemy as sa

from dal import schema as t
from dal.compiled import DriverStatement, row_type
from dal.decimals import DECIMAL_CONTEXT, quantize18
from dal.ownership import ACCOUNT_TERMS
from dal.position_math import ZERO, canonical_amount
from dal.scope import Tx
from dal.types import decimal_sum
from dal.vocabulary import OPEN_STATUSES

summary = t.pnl_summary
instruments = t.instruments
orders = t.orders

_FLOWS = (
    sa.select(
        instruments.c.base_asset,
        instruments.c.currency,
        summary.c.fee_currency,
        decimal_sum(summary.c.net_quantity).label("net_quantity"),
        decimal_sum(summary.c.net_proceeds).label("net_proceeds"),
        decimal_sum(summary.c.fees).label("fees"),
    )
    .join(instruments, instruments.c.id == summary.c.instrument_id)
    .where(summary.c.portfolio_id == sa.bindparam("portfolio_id"), summary.c.period == "MONTH")
    .group_by(instruments.c.base_asset, instruments.c.currency, summary.c.fee_currency)
)
_CASH = (
    sa.select(t.cash_movements.c.currency, decimal_sum(t.cash_movements.c.amount))
    .where(t.cash_movements.c.portfolio_id == sa.bindparam("portfolio_id"))
    .group_by(t.cash_movements.c.currency)
)


# Both in one statement: a cash row is (currency, NULL, NULL, its sum, NULL, NULL); a trade
# row always has a quote currency. The trade rows come first: their column types convert
# the amounts of every row.
def _cash_rows(*more: Any) -> sa.Select[Any]:
    return (
        sa.select(
            t.cash_movements.c.currency,
            sa.null(),
            sa.null(),
            decimal_sum(t.cash_movements.c.amount),
            sa.null(),
            sa.null(),
            *more,
        )
        .where(t.cash_movements.c.portfolio_id == sa.bindparam("portfolio_id"))
        .group_by(t.cash_movements.c.currency)
    )


def _open_orders(*columns: Any) -> sa.Select[Any]:
    return (
        sa.select(*columns)
        .join(instruments, instruments.c.id == orders.c.instrument_id)
        .where(
            orders.c.portfolio_id == sa.bindparam("portfolio_id"),
            orders.c.status.in_([sa.literal_column(f"'{s}'") for s in OPEN_STATUSES]),
        )
    )


_CASH_AND_FLOWS = sa.union_all(_FLOWS, _cash_rows())
_OPEN_ORDERS = _open_orders(
    orders.c.side,
    orders.c.type,
    orders.c.quantity,
    orders.c.filled_quantity,
    orders.c.price,
    orders.c.stop_price,
    orders.c.reserve_price,
    orders.c.instrument_id,
    instruments.c.base_asset,
    instruments.c.currency,
)
# An open order as ``open_order_reservation`` reads it.
_OpenOrderRow = row_type(list(_OPEN_ORDERS.selected_columns.keys()))


# The open orders' columns a reservation needs beyond an asset pair and two amounts.
_ORDER_TERMS = (
    orders.c.side,
    orders.c.type,
    orders.c.price,
    orders.c.stop_price,
    orders.c.reserve_price,
    orders.c.instrument_id,
)
# The totals and the open orders in one statement (one snapshot: after the balance lock, a
# placement reads both at once). Every row has the same columns: (asset, quote, fee currency,
# three amounts, the order terms); a cash row has no quote, a trade-flow row no side, an open
# order row is (base, quote, NULL, quantity, filled quantity, NULL, its terms). The first
# part's column types convert every row's values, as in _CASH_AND_FLOWS; its NULLs are cast,
# so PostgreSQL does not take the first two parts' NULL columns for text.
_NO_TERMS = [sa.cast(sa.null(), c.type).label(c.name) for c in _ORDER_TERMS]
_TOTALS_AND_OPEN_ORDERS = DriverStatement(
    sa.union_all(
        _FLOWS.add_columns(*_NO_TERMS),
        _cash_rows(*_NO_TERMS),
        _open_orders(
            instruments.c.base_asset,
            instruments.c.currency,
            sa.null(),
            orders.c.quantity,
            orders.c.filled_quantity,
            sa.null(),
            *_ORDER_TERMS,
        ),
    )
)


@dataclass(frozen=True)
class Terms:
    """What a BUY reserves beyond its price: the broker's fee and, for a market order, its
    slippage, as fractions (10 bps = 0.001)."""

    fee_rate: Decimal = ZERO
    slippage: Decimal = ZERO


NO_TERMS = Terms()


@dataclass(frozen=True)
class Balance:
    asset: str
    total: Decimal
    reserved: Decimal

    @property
    def free(self) -> Decimal:
        return DECIMAL_CONTEXT.subtract(self.total, self.reserved)


def cash_totals(conn: sa.Connection, portfolio_id: int) -> dict[str, Decimal]:
    """The cash ledger per currency: net deposits (deposits − withdrawals ± adjustments)."""
    rows = conn.execute(_CASH, {"portfolio_id": portfolio_id})
    return _canonical({currency: amount for currency, amount in rows})


def cash_and_totals(
    conn: sa.Connection, portfolio_id: int
) -> tuple[dict[str, Decimal], dict[str, Decimal]]:
    """``cash_totals`` and ``totals`` of the portfolio, read in one statement."""
    cash: dict[str, Decimal] = {}
    result: dict[str, Decimal] = defaultdict(Decimal)
    with localcontext(DECIMAL_CONTEXT):
        for row in conn.execute(_CASH_AND_FLOWS, {"portfolio_id": portfolio_id}):
            _add_flow(cash, result, *row)
    return _canonical(cash), _canonical(result)


def _add_flow(
    cash: dict[str, Decimal],
    result: dict[str, Decimal],
    base: str,
    quote: str | None,
    fee_currency: str | None,
    quantity: Decimal,
    proceeds: Decimal,
    fees: Decimal,
) -> None:
    """One row of _CASH_AND_FLOWS added to the cash and the totals."""
    if quote is None:  # the cash ledger in the currency ``base``
        cash[base] = quantity
        result[base] += quantity
    else:
        result[base] += quantity
        result[quote] += proceeds
        result[fee_currency or quote] -= fees


def cash_totals_and_reserved(
    conn: sa.Connection, portfolio_id: int, marks: Mapping[int, Decimal]
) -> tuple[dict[str, Decimal], dict[str, Decimal], dict[str, Decimal]]:
    """``cash_and_totals`` and ``reserved`` of the portfolio, read in one statement."""
    cash: dict[str, Decimal] = {}
    result: dict[str, Decimal] = defaultdict(Decimal)
    held_back: dict[str, Decimal] = defaultdict(Decimal)
    with localcontext(DECIMAL_CONTEXT):
        for row in _TOTALS_AND_OPEN_ORDERS.execute(conn, {"portfolio_id": portfolio_id}):
            base, quote, fee_currency, quantity, second, fees, side, *terms = row
            if side is not None:  # an open order: its quantity and filled quantity, its terms
                order = _OpenOrderRow(*(side, terms[0], quantity, second, *terms[1:], base, quote))
                asset, amount = open_order_reservation(order, marks)
                held_back[asset] += amount
            else:
                _add_flow(cash, result, base, quote, fee_currency, quantity, second, fees)
    return _canonical(cash), _canonical(result), _canonical(held_back)


def totals(conn: sa.Connection, portfolio_id: int) -> dict[str, Decimal]:
    """Each asset's total balance (assets that were never touched are absent)."""
    return cash_and_totals(conn, portfolio_id)[1]


def totals_from_trades(conn: sa.Connection, portfolio_id: int) -> dict[str, Decimal]:
    """``totals`` added up from the cash movements and trades themselves (what verify
    compares them with)."""
    from dal.pnl_summary import trade_notional

    cash, trades = t.cash_movements, t.trades
    cash_query = sa.select(cash.c.currency, cash.c.amount).where(
        cash.c.portfolio_id == portfolio_id
    )
    trade_query = (
        sa.select(
            trades.c.side,
            trades.c.quantity,
            trades.c.price,
            trades.c.fee,
            trades.c.fee_currency,
            instruments.c.base_asset,
            instruments.c.currency,
        )
        .join(instruments, instruments.c.id == trades.c.instrument_id)
        .where(trades.c.portfolio_id == portfolio_id)
    )
    result: dict[str, Decimal] = defaultdict(Decimal)
    with localcontext(DECIMAL_CONTEXT):
        for currency, amount in conn.execute(cash_query):
            result[currency] += amount
        for side, quantity, price, fee, fee_currency, base, quote in conn.execute(trade_query):
            notional = trade_notional(quantity, price)
            if side == "BUY":
                result[base] += quantity
                result[quote] -= notional
            else:
                result[base] -= quantity
                result[quote] += notional
            result[fee_currency or quote] -= fee
    return _canonical(result)


def _canonical(amounts: Mapping[str, Decimal]) -> dict[str, Decimal]:
    return {asset: canonical_amount(amounts[asset]) for asset in sorted(amounts)}


def reserve_price(
    side: str,
    order_type: str,
    price: Decimal | None,
    stop_price: Decimal | None,
    mark: Decimal | None,
    terms: Terms,
) -> Decimal | None:
    """What a BUY reserves per unit (None for a SELL, or when nothing prices it yet): the
    limit price, else the stop or mark with slippage, each plus the fee."""
    if side != "BUY":
        return None
    with localcontext(DECIMAL_CONTEXT):
        if price is not None:
            per_unit = price
        else:
            reference = stop_price if stop_price is not None else mark
            if reference is None:
                return None
            per_unit = reference * (1 + terms.slippage)
        return canonical_amount(quantize18(per_unit * (1 + terms.fee_rate)))


def open_order_reservation(
    row: Any, marks: Mapping[int, Decimal], terms: Terms = NO_TERMS
) -> tuple[str, Decimal]:
    """(asset, amount) an open order holds back."""
    with localcontext(DECIMAL_CONTEXT):
        remaining = row.quantity - row.filled_quantity
        if row.side == "SELL":
            return row.base_asset, remaining
        per_unit = row.reserve_price or reserve_price(
            "BUY", row.type, row.price, row.stop_price, marks.get(row.instrument_id), terms
        )
        return row.currency, quantize18(remaining * per_unit) if per_unit else ZERO


def reserved(
    conn: sa.Connection, portfolio_id: int, marks: Mapping[int, Decimal]
) -> dict[str, Decimal]:
    """What the portfolio's open orders reserve, per asset."""
    result: dict[str, Decimal] = defaultdict(Decimal)
    with localcontext(DECIMAL_CONTEXT):
        for row in conn.execute(_OPEN_ORDERS, {"portfolio_id": portfolio_id}):
            asset, amount = open_order_reservation(row, marks)
            result[asset] += amount
    return _canonical(result)


def balances(
    conn: sa.Connection,
    portfolio_id: int,
    marks: Mapping[int, Decimal],
    held: Mapping[str, Decimal] | None = None,
) -> list[Balance]:
    """Every asset the portfolio holds or reserves, by name; ``held`` is the portfolio's
    ``totals`` when the caller has read them already."""
    if held is None:
        _, held, held_back = cash_totals_and_reserved(conn, portfolio_id, marks)
        return balance_list(held, held_back)
    return balance_list(held, reserved(conn, portfolio_id, marks))


def balance_list(held: Mapping[str, Decimal], held_back: Mapping[str, Decimal]) -> list[Balance]:
    """Balances from the totals and the reservations per asset: every asset with either."""
    return [
        Balance(asset, held.get(asset, ZERO), held_back.get(asset, ZERO))
        for asset in sorted(set(held) | set(held_back))
        if held.get(asset) or held_back.get(asset)
    ]


def free(
    conn: sa.Connection, portfolio_id: int, asset: str, marks: Mapping[int, Decimal]
) -> Decimal:
    """The free balance of one asset."""
    with localcontext(DECIMAL_CONTEXT):
        return totals(conn, portfolio_id).get(asset, ZERO) - reserved(
            conn, portfolio_id, marks
        ).get(asset, ZERO)


def lock_portfolio_balances(conn: sa.Connection, portfolio_id: int) -> None:
    """Hold the portfolio's balance checks one at a time (PostgreSQL): two orders or a
    withdrawal checked at once could each see the same free balance. The portfolios row is
    locked FOR NO KEY UPDATE, which fills (whose inserts only take KEY SHARE on it) never wait
    for. SQLite runs one write transaction at a time anyway."""
    if conn.dialect.name == "postgresql":
        conn.execute(
            sa.select(t.portfolios.c.id)
            .where(t.portfolios.c.id == portfolio_id)
            .with_for_update(key_share=True)
        )


def lock_portfolio_account(tx: Tx, portfolio_id: int) -> Any:
    """``lock_portfolio_balances`` and the portfolio's account terms (margin leverage, base
    currency) in one statement; nothing to do when this transaction's policy read took them
    (``ownership.PortfolioWith``)."""
    terms = tx.state.get("balance_locks", {}).get(portfolio_id)
    if terms is None:
        (terms,) = _LOCK_PORTFOLIO_ACCOUNT.execute(tx.conn, {"portfolio_id": portfolio_id})
    return terms


_LOCK_PORTFOLIO_ACCOUNT = DriverStatement(
    sa.select(*ACCOUNT_TERMS)
    .join(t.portfolios, t.portfolios.c.account_id == t.accounts.c.id)
    .where(t.portfolios.c.id == sa.bindparam("portfolio_id"))
    .with_for_update(key_share=True, of=t.portfolios)
)


def amount_text(value: Decimal, asset: str) -> str:
    """An amount as refusals show it: written plainly, as the chat takes it (no grouping,
    no exponent, no trailing zeros), so it can be copied into a command."""
    text = f"{canonical_amount(value):f}"
    return f"{text} {asset}"
