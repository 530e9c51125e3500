"""Instruments: the shared reference list (admins create them; every user reads them)."""

from __future__ import annotations

import builtins
from decimal import Decimal, localcontext
from typing import Any

import sqlalchemy as sa

from dal import schema as t
from dal.decimals import DECIMAL_CONTEXT, canonical_decimal
from dal.errors import Conflict, InvalidInput, NotFound
from dal.models import NewInstrument, parse, valid_id
from dal.scope import Tx
from dal.types import new_uid

instruments = t.instruments
_INSTRUMENT = sa.select(instruments).where(instruments.c.id == sa.bindparam("instrument_id"))


def resolve_instrument(
    tx: Tx,
    instrument_id: int | None = None,
    symbol: str | None = None,
    exchange: str | None = None,
) -> sa.Row[Any]:
    """An instrument by id or by symbol (+ exchange). Unknown → NotFound with the symbol."""
    conn = tx.conn
    if instrument_id is not None:
        if not valid_id(instrument_id):
            raise NotFound(f"unknown instrument #{instrument_id}")
        cache: dict[int, sa.Row[Any]] = tx.cache.setdefault("instruments", {})
        row = cache.get(instrument_id)
        if row is None:
            row = conn.execute(_INSTRUMENT, {"instrument_id": instrument_id}).one_or_none()
            if row is None:
                raise NotFound(f"unknown instrument #{instrument_id}")
            cache[instrument_id] = row  # instruments are never updated or deleted
        if symbol is not None and row.symbol != symbol.upper():
            raise InvalidInput(f"instrument #{instrument_id} is {row.symbol}, not {symbol}")
        return row
    if not symbol:
        raise InvalidInput("give an instrument id or symbol")
    key = (symbol.upper(), exchange.upper() if exchange else None)
    by_symbol: dict[tuple[str, str | None], sa.Row[Any]] = tx.cache.setdefault(
        "instruments_by_symbol", {}
    )
    if key in by_symbol:  # an order's checks and its row resolve the same symbol
        return by_symbol[key]
    query = sa.select(instruments).where(instruments.c.symbol == symbol.upper())
    if exchange:
        query = query.where(instruments.c.exchange == exchange.upper())
    rows = list(conn.execute(query.limit(5)))
    if not rows:
        where = f" on {exchange.upper()}" if exchange else ""
        raise NotFound(f"unknown symbol {symbol.upper()}{where}; an admin can add it")
    if len(rows) > 1:
        places = ", ".join(r.exchange or "-" for r in rows)
        raise InvalidInput(f"{symbol.upper()} trades on several exchanges ({places}); name one")
    by_symbol[key] = rows[0]
    return rows[0]


def check_increments(instrument: sa.Row[Any], quantity: Decimal, *prices: Decimal | None) -> None:
    """Quantities must be lot-size multiples and prices tick-size multiples, when defined."""
    with localcontext(DECIMAL_CONTEXT):
        if instrument.lot_size and quantity % instrument.lot_size:
            raise InvalidInput(
                f"quantity {canonical_decimal(quantity)} is not a multiple of "
                f"{instrument.symbol}'s lot size {canonical_decimal(instrument.lot_size)}"
            )
        for price in prices:
            if price is not None and instrument.tick_size and price % instrument.tick_size:
                raise InvalidInput(
                    f"price {canonical_decimal(price)} is not a multiple of "
                    f"{instrument.symbol}'s tick size {canonical_decimal(instrument.tick_size)}"
                )


def check_min_notional(instrument: sa.Row[Any], quantity: Decimal, price: Decimal | None) -> None:
    """An order worth less than the exchange's minimum order value is refused (at its limit
    or stop price, a MARKET order at the mark; unknown without a price)."""
    minimum = instrument.min_notional
    if not minimum or price is None:
        return
    with localcontext(DECIMAL_CONTEXT):
        value = quantity * price
        if value < minimum:
            raise InvalidInput(
                f"order value {value.normalize():f} {instrument.currency} is below "
                f"{instrument.symbol}'s minimum of {minimum.normalize():f} {instrument.currency}"
            )


class InstrumentService:
    def __init__(self, tx: Tx) -> None:
        self.tx = tx

    def list(self, asset_type: str | None = None) -> list[sa.Row[Any]]:
        self.tx.require_approved()
        query = sa.select(instruments).order_by(instruments.c.symbol, instruments.c.exchange)
        if asset_type:
            query = query.where(instruments.c.asset_type == asset_type.upper())
        return list(self.tx.conn.execute(query))

    def get(
        self,
        instrument_id: int | None = None,
        symbol: str | None = None,
        exchange: str | None = None,
    ) -> sa.Row[Any]:
        self.tx.require_approved()
        return resolve_instrument(self.tx, instrument_id, symbol, exchange)

    def create(self, data: NewInstrument | dict[str, Any]) -> sa.Row[Any]:
        self.tx.require_admin()
        new = parse(NewInstrument, data)
        return self._insert(new)

    def ensure(self, data: NewInstrument | dict[str, Any]) -> sa.Row[Any]:
        """Create the instrument unless one with the same symbol and exchange exists (used by
        price feeds on first run; the system actor may call it)."""
        self.tx.require_admin()
        new = parse(NewInstrument, data)
        existing = self._find(new.symbol, new.exchange)
        return existing if existing is not None else self._insert(new)

    def apply_exchange_rules(
        self, rules: builtins.list[NewInstrument | dict[str, Any]]
    ) -> builtins.list[sa.Row[Any]]:
        """An exchange's own rules for its symbols (tick size, lot step, min notional): the
        instrument is created when missing, its rules updated when they changed (audited)."""
        self.tx.require_admin()
        rows = []
        for data in rules:
            new = parse(NewInstrument, data)
            row = self._find(new.symbol, new.exchange)
            if row is None:
                rows.append(self._insert(new))
                continue
            changed = {
                name: getattr(new, name)
                for name in ("tick_size", "lot_size", "min_notional")
                if getattr(new, name) != getattr(row, name)
            }
            if changed:
                self.tx.conn.execute(
                    instruments.update().where(instruments.c.id == row.id).values(**changed)
                )
                self.tx.cache.get("instruments", {}).pop(row.id, None)
                self.tx.cache.pop("instruments_by_symbol", None)
                self.tx.audit(
                    "INSTRUMENT", row.id, "UPDATE", {k: str(v) for k, v in changed.items()}
                )
                row = resolve_instrument(self.tx, row.id)
            rows.append(row)
        return rows

    def _find(self, symbol: str, exchange: str | None) -> sa.Row[Any] | None:
        exchange_match = (
            instruments.c.exchange.is_(None)
            if exchange is None
            else instruments.c.exchange == exchange
        )
        return self.tx.conn.execute(
            sa.select(instruments).where(instruments.c.symbol == symbol, exchange_match)
        ).one_or_none()

    def _insert(self, new: NewInstrument) -> sa.Row[Any]:
        if self._find(new.symbol, new.exchange) is not None:
            raise Conflict(f"{new.symbol} on {new.exchange or 'no exchange'} already exists")
        instrument_id = self.tx.conn.execute(
            instruments.insert()
            .values(uid=new_uid(), **new.model_dump())
            .returning(instruments.c.id)
        ).scalar_one()
        self.tx.audit("INSTRUMENT", instrument_id, "CREATE", new.model_dump(mode="json"))
        return resolve_instrument(self.tx, instrument_id)
