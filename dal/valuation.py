"""Valuation: a portfolio's balances and positions at marks, in one currency.

``value_portfolio`` is the one valuation: /balance, /status, /profit, equity snapshots and the
risk rules that use equity, exposure or leverage all read it. An asset is valued at the mark
of an instrument that trades it against the currency (BTC in USDT at BTCUSDT's mark), at the
inverse of one that trades the currency against it, or through one intermediate asset; an
asset that cannot be valued stays in ``unconverted`` in its own units, never dropped.
Marks are the market-data feed's, given by the caller, else the last stored ones.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, localcontext
from typing import Any

import sqlalchemy as sa

from dal import schema as t
from dal.balances import (
    NO_TERMS,
    Balance,
    Terms,
    amount_text,
    balance_list,
    balances,
    cash_and_totals,
    cash_totals,
    cash_totals_and_reserved,
    lock_portfolio_account,
    reserve_price,
    totals,
)
from dal.decimals import DECIMAL_CONTEXT, quantize18
from dal.instruments import check_increments, check_min_notional, resolve_instrument
from dal.marks import stored_marks
from dal.models import NewOrder, check_marks, parse
from dal.ownership import owned_portfolio, owned_portfolio_rows
from dal.position_math import ZERO, PositionState, canonical_amount, unrealized_pnl
from dal.scope import Tx, read_only

_PAIRS = sa.select(
    t.instruments.c.id, t.instruments.c.base_asset, t.instruments.c.currency, t.marks.c.price
).outerjoin(t.marks, t.marks.c.instrument_id == t.instruments.c.id)
_ACCOUNT_CURRENCY = sa.select(t.accounts.c.base_currency).join(
    t.portfolios, t.portfolios.c.account_id == t.accounts.c.id
)
_OPEN_POSITIONS = (
    sa.select(
        t.positions.c.instrument_id,
        t.positions.c.strategy_id,
        t.positions.c.quantity,
        t.positions.c.cost_basis,
        t.positions.c.avg_price,
        t.positions.c.opened_at,
        t.instruments.c.symbol,
        t.instruments.c.currency,
        t.instruments.c.base_asset,
    )
    .join(t.instruments, t.instruments.c.id == t.positions.c.instrument_id)
    .where(
        t.positions.c.portfolio_id == sa.bindparam("portfolio_id"),
        t.positions.c.quantity != "0",
    )
    .order_by(t.instruments.c.symbol, t.positions.c.strategy_id)
)


@dataclass(frozen=True)
class PositionValue:
    instrument_id: int
    symbol: str
    strategy_id: int | None
    quantity: Decimal
    avg_price: Decimal
    cost_basis: Decimal
    currency: str  # the instrument's quote currency: mark, value and PnL are in it
    opened_at: dt.datetime | None
    mark: Decimal | None
    unrealized: Decimal | None  # None without a mark

    @property
    def unrealized_pct(self) -> Decimal | None:
        if self.unrealized is None or not self.cost_basis:
            return None
        with localcontext(DECIMAL_CONTEXT):
            return self.unrealized / self.cost_basis * 100


@dataclass(frozen=True)
class Valuation:
    currency: str
    equity: Decimal  # every balance that could be valued in ``currency``
    balances: list[Balance]
    values: dict[str, Decimal]  # asset → its total in ``currency``
    unconverted: dict[str, Decimal]  # asset → its total, which has no price in ``currency``
    positions: list[PositionValue]
    gross_exposure: Decimal  # Σ |position| × mark in ``currency`` (positions that convert)
    marks: dict[int, Decimal] = field(repr=False)
    net_deposits: dict[str, Decimal]  # the cash ledger, per currency
    rates: Prices = field(repr=False, compare=False)  # the prices it was valued at

    def unrealized(self) -> dict[str, Decimal]:
        """Unrealized PnL per quote currency (positions with a mark)."""
        out: dict[str, Decimal] = {}
        with localcontext(DECIMAL_CONTEXT):
            for p in self.positions:
                if p.unrealized is not None:
                    out[p.currency] = out.get(p.currency, ZERO) + p.unrealized
        return out


class Prices:
    """Asset prices in other assets, from the instruments and their marks."""

    def __init__(self, pairs: list[tuple[int, str, str]], marks: Mapping[int, Decimal]) -> None:
        self.direct: dict[tuple[str, str], Decimal] = {}
        for instrument_id, base, quote in pairs:
            mark = marks.get(instrument_id)
            if mark is not None and base != quote:
                self.direct.setdefault((base, quote), mark)

    def price(self, asset: str, currency: str) -> Decimal | None:
        """One ``asset`` in ``currency``: direct, inverse, or through one other asset."""
        if asset == currency:
            return Decimal(1)
        found = self._one_step(asset, currency)
        if found is not None:
            return found
        for base, quote in sorted(self.direct):
            for middle in {base, quote} - {asset}:
                first = self._one_step(asset, middle)
                second = self._one_step(middle, currency) if first is not None else None
                if first is not None and second is not None:
                    return _exact(DECIMAL_CONTEXT.multiply(first, second))
        return None

    def _one_step(self, asset: str, currency: str) -> Decimal | None:
        direct = self.direct.get((asset, currency))
        if direct is not None:
            return direct
        inverse = self.direct.get((currency, asset))
        if inverse is not None:
            return _exact(DECIMAL_CONTEXT.divide(Decimal(1), inverse))
        return None


def _exact(value: Decimal) -> Decimal:
    return canonical_amount(quantize18(value))


def prices(conn: sa.Connection, marks: Mapping[int, Decimal]) -> Prices:
    return prices_and_stored_marks(conn, marks)[0]


def prices_and_stored_marks(
    conn: sa.Connection, marks: Mapping[int, Decimal] | None
) -> tuple[Prices, dict[int, Decimal]]:
    """Prices at ``marks`` (None: the stored marks), and the marks used; one statement."""
    rows = conn.execute(_PAIRS).all()
    if marks is None:
        marks = {r.id: r.price for r in rows if r.price is not None}
    return Prices([(r.id, r.base_asset, r.currency) for r in rows], marks), dict(marks)


def value_portfolio(
    conn: sa.Connection,
    portfolio_id: int,
    currency: str,
    marks: Mapping[int, Decimal] | None,
    held: list[Balance] | None = None,
    *,
    open_orders: bool = True,
) -> Valuation:
    """The portfolio's balances (``held``, default: now), positions and equity in
    ``currency`` at ``marks`` (None: the last stored marks). ``open_orders=False`` leaves out
    what open orders reserve (every balance's ``reserved`` is then 0): equity, exposure and
    PnL do not depend on it, and it is a statement less."""
    rates, marks = prices_and_stored_marks(conn, marks)
    if held is None:
        if open_orders:
            cash, held_totals, held_back = cash_totals_and_reserved(conn, portfolio_id, marks)
        else:
            (cash, held_totals), held_back = cash_and_totals(conn, portfolio_id), {}
        held = balance_list(held_totals, held_back)
    else:
        cash = cash_totals(conn, portfolio_id)
    values: dict[str, Decimal] = {}
    unconverted: dict[str, Decimal] = {}
    positions: list[PositionValue] = []
    with localcontext(DECIMAL_CONTEXT):
        equity = ZERO
        for balance in held:
            if not balance.total:
                continue
            rate = rates.price(balance.asset, currency)
            if rate is None:
                unconverted[balance.asset] = balance.total
            else:
                values[balance.asset] = _exact(balance.total * rate)
                equity += values[balance.asset]
        gross = ZERO
        for row in conn.execute(_OPEN_POSITIONS, {"portfolio_id": portfolio_id}):
            mark = marks.get(row.instrument_id)
            state = PositionState(row.quantity, row.cost_basis)
            positions.append(
                PositionValue(
                    row.instrument_id,
                    row.symbol,
                    row.strategy_id,
                    row.quantity,
                    row.avg_price,
                    row.cost_basis,
                    row.currency,
                    row.opened_at,
                    mark,
                    None if mark is None else unrealized_pnl(state, mark),
                )
            )
            rate = rates.price(row.base_asset, currency)
            if rate is not None:
                gross += abs(row.quantity) * rate
    return Valuation(
        currency,
        canonical_amount(equity),
        held,
        values,
        unconverted,
        positions,
        _exact(gross),
        dict(marks),
        cash,
        rates,
    )


@dataclass(frozen=True)
class OrderCheck:
    """What the account says of an order: ``refusal`` (None = it may go) and what it
    reserves per unit (``reserve_price``, stored on the order)."""

    refusal: str | None
    reserve_price: Decimal | None


def check_order(tx: Tx, order: NewOrder, marks: Mapping[int, Decimal], terms: Terms) -> OrderCheck:
    """An order against the portfolio's free balances, as a spot exchange checks it, or
    against its buying power on a margin account. Takes the portfolio's balance lock."""
    conn = tx.conn
    account = lock_portfolio_account(tx, order.portfolio_id)
    instrument = resolve_instrument(tx, order.instrument_id, order.symbol, order.exchange)
    check_increments(instrument, order.quantity, order.price, order.stop_price)  # before Confirm
    mark = marks.get(instrument.id)
    check_min_notional(instrument, order.quantity, order.price or order.stop_price or mark)
    per_unit = reserve_price(order.side, order.type, order.price, order.stop_price, mark, terms)
    held = {b.asset: b for b in balances(conn, order.portfolio_id, marks)}
    base, quote = instrument.base_asset, instrument.currency
    with localcontext(DECIMAL_CONTEXT):
        if account.margin_leverage is not None:
            return OrderCheck(
                _margin_refusal(conn, order, instrument, held, marks, account), per_unit
            )
        if order.side == "SELL":
            free = held[base].free if base in held else ZERO
            if order.quantity > free:
                return OrderCheck(
                    f"insufficient balance: needs {amount_text(order.quantity, base)}, "
                    f"free {amount_text(free, base)}",
                    per_unit,
                )
            return OrderCheck(None, per_unit)
        if per_unit is None:
            return OrderCheck(
                f"no price for {instrument.symbol} yet: cannot reserve the order", None
            )
        needed = _exact(order.quantity * per_unit)
        free = held[quote].free if quote in held else ZERO
        if needed > free:
            return OrderCheck(
                f"insufficient balance: needs {amount_text(needed, quote)}, "
                f"free {amount_text(free, quote)}",
                per_unit,
            )
    return OrderCheck(None, per_unit)


def _margin_refusal(
    conn: sa.Connection,
    order: NewOrder,
    instrument: Any,
    held: dict[str, Balance],
    marks: Mapping[int, Decimal],
    account: Any,
) -> str | None:
    """A margin account: an order that grows the position in its asset needs the buying
    power for the growth (equity × leverage − gross exposure, at marks)."""
    base = instrument.base_asset
    position = held[base].total if base in held else ZERO
    change = order.quantity if order.side == "BUY" else -order.quantity
    grows = abs(position + change) > abs(position)
    if not grows:
        return None
    growth = abs(position + change) - abs(position)
    price = order.price or order.stop_price or marks.get(instrument.id)
    if price is None:
        return f"no price for {instrument.symbol} yet: cannot check the margin"
    # The balances check_order read already: valued, not read again.
    valuation = value_portfolio(
        conn, order.portfolio_id, instrument.currency, marks, list(held.values())
    )
    power = _exact(valuation.equity * account.margin_leverage - valuation.gross_exposure)
    needed = _exact(growth * price)
    if needed > power:
        return (
            f"insufficient margin: needs {amount_text(needed, instrument.currency)} of buying "
            f"power, free {amount_text(max(power, ZERO), instrument.currency)} "
            f"({account.margin_leverage}x leverage)"
        )
    return None


class ValuationService:
    def __init__(self, tx: Tx) -> None:
        self.tx = tx

    def _marks(self, marks: Mapping[int, Decimal] | None) -> dict[int, Decimal]:
        return stored_marks(self.tx.conn) if marks is None else check_marks(dict(marks))

    @read_only
    def balances(
        self, portfolio_id: int, marks: Mapping[int, Decimal] | None = None
    ) -> list[Balance]:
        """Per asset: total, reserved by open orders, free."""
        owned_portfolio(self.tx, portfolio_id)
        return balances(self.tx.conn, portfolio_id, self._marks(marks))

    @read_only
    def totals(self, portfolio_id: int) -> dict[str, Decimal]:
        owned_portfolio(self.tx, portfolio_id)
        return totals(self.tx.conn, portfolio_id)

    @read_only
    def value(
        self,
        portfolio_id: int,
        marks: Mapping[int, Decimal] | None = None,
        currency: str | None = None,
    ) -> Valuation:
        """Equity, balances and positions at ``marks`` (default: the last stored marks) in
        ``currency`` (default: the account's)."""
        (account,) = owned_portfolio_rows(
            self.tx, portfolio_id, _ACCOUNT_CURRENCY.where(t.portfolios.c.id == portfolio_id)
        )
        return value_portfolio(
            self.tx.conn,
            portfolio_id,
            currency or account.base_currency,
            None if marks is None else check_marks(dict(marks)),
        )

    def check_order(
        self,
        order: NewOrder | dict[str, Any],
        marks: Mapping[int, Decimal] | None = None,
        terms: Terms = NO_TERMS,
    ) -> OrderCheck:
        """Whether the account can take the order now (writes nothing; locks the portfolio's
        balance checks until the transaction ends)."""
        new = parse(NewOrder, order)
        owned_portfolio(self.tx, new.portfolio_id, writable=True)
        return check_order(self.tx, new, self._marks(marks), terms)
