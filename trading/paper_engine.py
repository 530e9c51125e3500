"""The paper-trading matching engine: orders against OHLC bars, pure and deterministic.

No database, no asyncio, no I/O. A gateway feeds it orders (``submit``, ``cancel``) and bars
(``on_bar``) and forwards the broker events it returns (``OrderUpdate``, ``FillEvent`` from
``trading.events``) to the runtime. The same calls in the same order always return the same
events: broker order ids are ``P-1``, ``P-2``, … and trade ids ``PT-1``, ``PT-2``, …, from
counters of the engine instance (one counter per kind, starting at 1, used in call order).

Bars and time
    ``Bar.time`` is the bar's open time (aware datetime). An order accepted by ``submit(order,
    now)`` is matched only against bars whose time is strictly after ``now``: the bar that was
    current when the order was submitted never fills it (no look-ahead). Bars of one symbol must
    arrive in time order; a bar whose time is not after the last processed bar of its symbol is
    ignored (``on_bar`` returns ``[]``), so a replayed bar never matches twice. ``on_bar``
    processes the open orders of ``bar.symbol`` in submission order; each order is matched
    independently against the bar (orders do not consume each other's liquidity).

Fill prices (BUY / SELL)
    * MARKET: fills on the first bar after submission at that bar's open, moved against the
      trader by ``slippage_bps``: BUY pays ``open × (1 + bps/10000)``, SELL gets
      ``open × (1 − bps/10000)``.
    * LIMIT: BUY fills when ``low ≤ limit``, at ``min(open, limit)``; SELL fills when
      ``high ≥ limit``, at ``max(open, limit)``. A bar that opens through the limit fills at the
      open (the better price). No slippage on limit fills.
    * STOP: BUY triggers when ``high ≥ stop``, SELL when ``low ≤ stop``; it then fills in the
      same bar like a market order at ``max(open, stop)`` (BUY) / ``min(open, stop)`` (SELL),
      with slippage. A bar that opens through the stop fills at the open.
    * STOP_LIMIT: triggers like STOP, then is a LIMIT order at ``price``. In the trigger bar:
      if the bar opened through the stop (BUY ``open ≥ stop``, SELL ``open ≤ stop``) the whole
      bar is after the trigger and the LIMIT rule applies to it as is; if the stop was touched
      inside the bar, the path after the trigger is unknown, so the order fills at the stop
      price when the stop is within the limit (BUY ``stop ≤ limit``, SELL ``stop ≥ limit``) and
      otherwise rests. From the next bar on the LIMIT rule applies. No slippage.
    * TRAILING: refused at submit ("TRAILING orders are not supported by the paper gateway").

    Whatever the size cap leaves of a MARKET or triggered STOP order fills on the following
    bars at their open with slippage; what it leaves of a LIMIT or triggered STOP_LIMIT order
    keeps the LIMIT rule.

Amounts
    All arithmetic is ``decimal.Decimal`` in ``dal.types.DECIMAL_CONTEXT``; floats are refused.
    A price moved by slippage and every fee are rounded half-even to 18 fractional digits (the
    storage scale, ``dal.types.quantize18``); prices and fees are returned in canonical form
    (no trailing zeros). Quantities are never rounded. Fee of a fill =
    ``quantity × fill price × fee_bps / 10000``, in the order's ``fee_currency``, else
    ``PaperConfig.fee_currency``; with ``fee_bps > 0`` an order with neither is rejected.

Size cap
    With ``PaperConfig.max_fill_quantity`` set, at most that quantity of an order fills per bar:
    each fill that leaves a remainder is reported PARTIALLY_FILLED, the last one FILLED.

Time in force (None means GTC)
    * GTC: open until filled or canceled.
    * IOC: on its first eligible bar (MARKET/LIMIT: the first bar after submission;
      STOP/STOP_LIMIT: the bar that triggers it) whatever can fill fills, the rest EXPIRES in
      the same bar. A LIMIT IOC whose limit is not reached there expires unfilled.
    * FOK: on its first eligible bar the whole quantity fills at once, or nothing fills and the
      order EXPIRES. With a size cap smaller than the remaining quantity a FOK order expires.
    * DAY: needs ``day_ends_at`` (the user's next local midnight, computed by the caller; it
      must be after ``now``). The first bar of the symbol whose time is ``≥ day_ends_at``
      expires the order before any matching. Until such a bar arrives the order stays open.

Events
    * ``submit``: ``OrderUpdate`` NEW (``event_time = now``) or REJECTED with ``reason``. Every
      submit, rejected or not, takes the next ``P-<n>`` broker order id. Rejected: TRAILING,
      unknown side/type/time in force, empty symbol or client id, a quantity or price that is
      not a positive Decimal fitting 18 fractional digits, a price or stop price missing or
      given where the type takes none (LIMIT: price; STOP: stop_price; STOP_LIMIT: both;
      MARKET: neither), DAY without ``day_ends_at`` or with one not after ``now``,
      ``day_ends_at`` on another time in force, a naive ``placed_at``, a missing fee currency,
      and a ``client_order_id`` of an order already accepted by this engine (open or closed).
    * each fill: a ``FillEvent`` (``broker_trade_id`` ``PT-<n>``, ``exec_time = bar.time``)
      followed by an ``OrderUpdate`` PARTIALLY_FILLED or FILLED (``event_time = bar.time``).
    * expiry (IOC/FOK/DAY): ``OrderUpdate`` EXPIRED with ``reason``, ``event_time = bar.time``.
    * ``cancel`` of an open order: ``OrderUpdate`` CANCELED (``event_time = now``). Cancelling
      an unknown or already closed order returns ``[]``: nothing changed, and a REJECTED update
      would overwrite the order's final status.
    * ``OrderUpdate.quantity`` is the order's full quantity; ``raw`` holds
      ``filled_quantity`` and ``remaining_quantity`` (Decimals). ``FillEvent.raw`` holds
      ``reference_price``, the price before slippage.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from dal.decimals import DECIMAL_CONTEXT, AmountError, canonical_decimal, check_amount, quantize18
from dal.vocabulary import (
    ORDER_TYPES,
    SIDES,
    TIME_IN_FORCE,
    OrderStatusName,
    OrderTypeName,
    SideName,
    TimeInForceName,
)
from trading.events import FillEvent, OrderUpdate
from trading.market import Bar, aware, exact_decimal

TRAILING_REFUSED = "TRAILING orders are not supported by the paper gateway"

_BPS = Decimal(10000)
_ZERO = Decimal(0)


def _canonical(value: Decimal) -> Decimal:
    """Round half-even to 18 fractional digits; plain value without trailing zeros."""
    return Decimal(canonical_decimal(quantize18(value)))


@dataclass(frozen=True)
class PaperConfig:
    """How the paper broker fills: fee and slippage in basis points, an optional per-bar size
    cap, and a default fee currency (used when an order names none)."""

    fee_bps: Decimal = Decimal("10")
    slippage_bps: Decimal = Decimal("5")
    max_fill_quantity: Decimal | None = None
    fee_currency: str | None = None

    def __post_init__(self) -> None:
        if exact_decimal(self.fee_bps, "fee_bps") < 0:
            raise ValueError(f"fee_bps must not be negative, not {self.fee_bps}")
        slippage = exact_decimal(self.slippage_bps, "slippage_bps")
        if not 0 <= slippage < _BPS:
            raise ValueError(f"slippage_bps must be in [0, 10000), not {slippage}")
        if self.max_fill_quantity is not None:
            cap = exact_decimal(self.max_fill_quantity, "max_fill_quantity")
            if cap <= 0:
                raise ValueError(f"max_fill_quantity must be positive, not {cap}")
            check_amount(cap)
        if self.fee_currency is not None and (
            not isinstance(self.fee_currency, str) or not self.fee_currency
        ):
            raise ValueError("fee_currency must be a non-empty string or None")


@dataclass(frozen=True)
class PaperOrder:
    """An order for the paper broker. ``price`` is the limit price (LIMIT, STOP_LIMIT),
    ``stop_price`` the trigger (STOP, STOP_LIMIT). ``day_ends_at`` only for DAY orders."""

    client_order_id: str
    symbol: str
    side: SideName
    order_type: OrderTypeName
    quantity: Decimal
    price: Decimal | None
    stop_price: Decimal | None
    time_in_force: TimeInForceName | None
    placed_at: dt.datetime
    day_ends_at: dt.datetime | None = None
    fee_currency: str | None = None


@dataclass
class _OpenOrder:
    order: PaperOrder
    broker_order_id: str
    accepted_at: dt.datetime
    fee_currency: str | None
    filled: Decimal = _ZERO
    triggered: bool = False

    @property
    def remaining(self) -> Decimal:
        return DECIMAL_CONTEXT.subtract(self.order.quantity, self.filled)


class PaperEngine:
    """The paper broker's order book and matching; see the module docstring for the rules."""

    def __init__(self, config: PaperConfig, exchange: str = "PAPER", id_prefix: str = "") -> None:
        if not isinstance(config, PaperConfig):
            raise TypeError("config must be a PaperConfig")
        self.config = config
        self.exchange = exchange
        # Broker ids must stay unique across engine instances (restarts): the gateway passes a
        # prefix per instance, since the database treats a repeated broker trade id as a replay.
        self.id_prefix = id_prefix
        self._order_seq = 0
        self._trade_seq = 0
        self._open: dict[str, _OpenOrder] = {}  # by client_order_id, in submission order
        self._accepted_ids: set[str] = set()
        self._last_bar: dict[str, dt.datetime] = {}

    # --- orders ---------------------------------------------------------------------------
    def submit(self, order: PaperOrder, now: dt.datetime) -> list[OrderUpdate]:
        """Accept (NEW) or refuse (REJECTED with a reason) an order, as of ``now``."""
        aware(now, "now")
        self._order_seq += 1
        broker_order_id = f"{self.id_prefix}P-{self._order_seq}"
        reason = self._rejection(order, now)
        if reason is not None:
            return [self._update_for(order, broker_order_id, "REJECTED", now, _ZERO, reason)]
        fee_currency = order.fee_currency or self.config.fee_currency
        state = _OpenOrder(order, broker_order_id, now, fee_currency)
        self._open[order.client_order_id] = state
        self._accepted_ids.add(order.client_order_id)
        return [self._update(state, "NEW", now)]

    def adopt(
        self, order: PaperOrder, broker_order_id: str, filled: Decimal, accepted_at: dt.datetime
    ) -> None:
        """Take back an order this broker accepted earlier (before a restart) as it stands:
        same broker order id, ``filled`` of ``order.quantity`` already filled. No event: the
        order is open already; it matches from the next bar on."""
        aware(accepted_at, "accepted_at")
        fee_currency = order.fee_currency or self.config.fee_currency
        state = _OpenOrder(order, broker_order_id, accepted_at, fee_currency, filled=filled)
        state.triggered = filled > 0  # a stop order that has filled had triggered
        self._open[order.client_order_id] = state
        self._accepted_ids.add(order.client_order_id)

    def cancel(self, client_order_id: str, now: dt.datetime) -> list[OrderUpdate]:
        """CANCELED for an open order; ``[]`` for an unknown or already closed one."""
        aware(now, "now")
        state = self._open.pop(client_order_id, None)
        if state is None:
            return []
        return [self._update(state, "CANCELED", now, "canceled on request")]

    def open_orders(self) -> list[PaperOrder]:
        """The orders still open (NEW or PARTIALLY_FILLED), in submission order."""
        return [state.order for state in self._open.values()]

    # --- bars -----------------------------------------------------------------------------
    def on_bar(self, bar: Bar) -> list[OrderUpdate | FillEvent]:
        """Match the open orders of ``bar.symbol`` against ``bar``, in submission order."""
        if not isinstance(bar, Bar):
            raise TypeError("on_bar takes a Bar")
        last = self._last_bar.get(bar.symbol)
        if last is not None and bar.time <= last:
            return []
        self._last_bar[bar.symbol] = bar.time
        events: list[OrderUpdate | FillEvent] = []
        for state in [s for s in self._open.values() if s.order.symbol == bar.symbol]:
            closed = self._process(state, bar, events)
            if closed:
                del self._open[state.order.client_order_id]
        return events

    def _process(self, state: _OpenOrder, bar: Bar, events: list[OrderUpdate | FillEvent]) -> bool:
        """Match one order against one bar, appending events; True when the order closed."""
        order = state.order
        if bar.time <= state.accepted_at:
            return False
        if order.time_in_force == "DAY":
            assert order.day_ends_at is not None
            if bar.time >= order.day_ends_at:
                reason = f"DAY order expired at {order.day_ends_at.isoformat()}"
                events.append(self._update(state, "EXPIRED", bar.time, reason))
                return True

        trigger_bar = False
        if order.order_type in ("STOP", "STOP_LIMIT") and not state.triggered:
            if not self._stop_triggered(order, bar):
                return False
            state.triggered = True
            trigger_bar = True

        reference, fill_price = self._fill_price(state, bar, trigger_bar)
        remaining = state.remaining
        cap = self.config.max_fill_quantity
        quantity = remaining if cap is None else min(remaining, cap)
        tif = order.time_in_force

        if tif == "FOK":
            if fill_price is None:
                reason = "FOK: the order could not fill on its first eligible bar"
                events.append(self._update(state, "EXPIRED", bar.time, reason))
                return True
            if quantity < remaining:
                reason = (
                    f"FOK: only {quantity} of {remaining} could fill in one bar "
                    f"(max_fill_quantity {cap})"
                )
                events.append(self._update(state, "EXPIRED", bar.time, reason))
                return True

        if fill_price is not None:
            assert reference is not None
            self._fill(state, bar, quantity, reference, fill_price, events)

        if state.remaining == 0:
            return True
        if tif in ("IOC", "FOK"):
            reason = f"IOC: the unfilled {state.remaining} expired"
            events.append(self._update(state, "EXPIRED", bar.time, reason))
            return True
        return False

    @staticmethod
    def _stop_triggered(order: PaperOrder, bar: Bar) -> bool:
        assert order.stop_price is not None
        if order.side == "BUY":
            return bar.high >= order.stop_price
        return bar.low <= order.stop_price

    def _fill_price(
        self, state: _OpenOrder, bar: Bar, trigger_bar: bool
    ) -> tuple[Decimal | None, Decimal | None]:
        """(reference price, fill price) of this bar, or (None, None) when it does not fill."""
        order = state.order
        buy = order.side == "BUY"
        kind = order.order_type
        if kind == "MARKET" or (kind == "STOP" and not trigger_bar):
            return bar.open, self._slipped(bar.open, buy)
        if kind == "STOP":
            assert order.stop_price is not None
            stop = order.stop_price
            reference = max(bar.open, stop) if buy else min(bar.open, stop)
            return reference, self._slipped(reference, buy)
        assert order.price is not None
        limit = order.price
        if kind == "STOP_LIMIT" and trigger_bar:
            assert order.stop_price is not None
            stop = order.stop_price
            opened_through = bar.open >= stop if buy else bar.open <= stop
            if not opened_through:  # touched inside the bar: only the stop price is known
                within = stop <= limit if buy else stop >= limit
                return (stop, _canonical(stop)) if within else (None, None)
        # LIMIT (and STOP_LIMIT once the whole bar is after the trigger)
        if buy:
            if bar.low <= limit:
                price = min(bar.open, limit)
                return price, _canonical(price)
        elif bar.high >= limit:
            price = max(bar.open, limit)
            return price, _canonical(price)
        return None, None

    def _slipped(self, reference: Decimal, buy: bool) -> Decimal:
        ctx = DECIMAL_CONTEXT
        move = ctx.divide(self.config.slippage_bps, _BPS)
        factor = ctx.add(1, move) if buy else ctx.subtract(1, move)
        return _canonical(ctx.multiply(reference, factor))

    def _fill(
        self,
        state: _OpenOrder,
        bar: Bar,
        quantity: Decimal,
        reference: Decimal,
        price: Decimal,
        events: list[OrderUpdate | FillEvent],
    ) -> None:
        ctx = DECIMAL_CONTEXT
        order = state.order
        notional = ctx.multiply(quantity, price)
        fee = _canonical(ctx.divide(ctx.multiply(notional, self.config.fee_bps), _BPS))
        self._trade_seq += 1
        state.filled = ctx.add(state.filled, quantity)
        events.append(
            FillEvent(
                symbol=order.symbol,
                exchange=self.exchange,
                broker_order_id=state.broker_order_id,
                client_order_id=order.client_order_id,
                broker_trade_id=f"{self.id_prefix}PT-{self._trade_seq}",
                side=order.side,
                quantity=quantity,
                price=price,
                fee=fee,
                fee_currency=state.fee_currency,
                exec_time=bar.time,
                raw={"reference_price": _canonical(reference)},
            )
        )
        status: OrderStatusName = "FILLED" if state.remaining == 0 else "PARTIALLY_FILLED"
        events.append(self._update(state, status, bar.time))

    # --- validation and events ------------------------------------------------------------
    def _rejection(self, order: PaperOrder, now: dt.datetime) -> str | None:
        """Why ``order`` is refused, or None when it is accepted."""
        if not isinstance(order, PaperOrder):
            raise TypeError("submit takes a PaperOrder")
        if order.order_type == "TRAILING":
            return TRAILING_REFUSED
        if order.order_type not in ORDER_TYPES:
            return f"unknown order type {order.order_type!r}"
        if order.side not in SIDES:
            return f"unknown side {order.side!r}; give BUY or SELL"
        tif = order.time_in_force
        if tif is not None and tif not in TIME_IN_FORCE:
            return f"unknown time in force {tif!r}"
        if not isinstance(order.client_order_id, str) or not order.client_order_id:
            return "the order needs a client_order_id"
        if not isinstance(order.symbol, str) or not order.symbol:
            return "the order needs a symbol"
        for name in ("quantity", "price", "stop_price"):
            value = getattr(order, name)
            if value is None and name != "quantity":
                continue
            problem = _amount_problem(value)
            if problem is not None:
                return f"{name} {problem}"
        kind = order.order_type
        needs_price = kind in ("LIMIT", "STOP_LIMIT")
        needs_stop = kind in ("STOP", "STOP_LIMIT")
        if needs_price and order.price is None:
            return f"a {kind} order needs a price"
        if not needs_price and order.price is not None:
            return f"a {kind} order takes no limit price"
        if needs_stop and order.stop_price is None:
            return f"a {kind} order needs a stop price"
        if not needs_stop and order.stop_price is not None:
            return f"a {kind} order takes no stop price"
        if not _isaware(order.placed_at):
            return "placed_at must be an aware datetime"
        if tif == "DAY":
            if order.day_ends_at is None:
                return "a DAY order needs day_ends_at (the end of the user's trading day)"
            if not _isaware(order.day_ends_at):
                return "day_ends_at must be an aware datetime"
            if order.day_ends_at <= now:
                return f"the day of this DAY order ended at {order.day_ends_at.isoformat()}"
        elif order.day_ends_at is not None:
            return "day_ends_at is only for DAY orders"
        if self.config.fee_bps > 0 and not (order.fee_currency or self.config.fee_currency):
            return "no fee currency: give the order's fee_currency or PaperConfig.fee_currency"
        if order.client_order_id in self._accepted_ids:
            return f"duplicate client_order_id {order.client_order_id!r}"
        return None

    def _update(
        self, state: _OpenOrder, status: OrderStatusName, at: dt.datetime, reason: str | None = None
    ) -> OrderUpdate:
        return self._update_for(
            state.order, state.broker_order_id, status, at, state.filled, reason
        )

    def _update_for(
        self,
        order: PaperOrder,
        broker_order_id: str,
        status: OrderStatusName,
        at: dt.datetime,
        filled: Decimal,
        reason: str | None,
    ) -> OrderUpdate:
        raw: dict[str, Any] = {}
        if isinstance(order.quantity, Decimal) and order.quantity.is_finite():
            raw = {
                "filled_quantity": filled,
                "remaining_quantity": DECIMAL_CONTEXT.subtract(order.quantity, filled),
            }
        return OrderUpdate(
            symbol=order.symbol,
            exchange=self.exchange,
            broker_order_id=broker_order_id,
            client_order_id=order.client_order_id,
            status=status,
            side=order.side,
            order_type=order.order_type,
            quantity=order.quantity,
            price=order.price,
            stop_price=order.stop_price,
            time_in_force=order.time_in_force,
            event_time=at,
            reason=reason,
            raw=raw,
        )


def _isaware(value: object) -> bool:
    return (
        isinstance(value, dt.datetime)
        and value.tzinfo is not None
        and value.tzinfo.utcoffset(value) is not None
    )


def _amount_problem(value: object) -> str | None:
    """Why ``value`` is not a positive Decimal amount that fits the storage scale."""
    if not isinstance(value, Decimal):
        return f"must be a Decimal, not {type(value).__name__}"
    if not value.is_finite() or value <= 0:
        return f"must be positive, not {value}"
    try:
        check_amount(value)
    except AmountError as exc:
        return str(exc)
    return None
