"""Broker events and the order-gateway protocol, broker-neutral.

A gateway (paper, Binance, …) turns what its broker says into these events; the runtime maps
every event onto ``orders`` and ``trades`` through the user-scoped DAL, idempotently (broker
order and trade ids), so replayed or out-of-order events never double-count.

Events name the instrument by symbol and exchange (what brokers send); the runtime resolves
them. ``client_order_id`` is tradebook's order uid for orders tradebook placed; an event whose
order tradebook does not know (placed on the exchange by hand) lands in the account's default
portfolio as a manual order.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal, Protocol

from dal.vocabulary import OrderStatusName


@dataclass(frozen=True)
class OrderUpdate:
    """The broker's view of an order changed (accepted, rejected, canceled, expired, or a
    status that came with a fill). ``status`` is the order's status after the event."""

    symbol: str
    exchange: str | None
    broker_order_id: str
    client_order_id: str | None
    status: OrderStatusName
    side: Literal["BUY", "SELL"]
    order_type: str
    quantity: Decimal
    price: Decimal | None
    stop_price: Decimal | None
    time_in_force: str | None
    event_time: dt.datetime
    reason: str | None = None
    raw: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FillEvent:
    """One execution: ``quantity`` at ``price`` (the last fill, never a cumulative amount)."""

    symbol: str
    exchange: str | None
    broker_order_id: str
    client_order_id: str | None
    broker_trade_id: str
    side: Literal["BUY", "SELL"]
    quantity: Decimal
    price: Decimal
    fee: Decimal
    fee_currency: str | None
    exec_time: dt.datetime
    raw: dict[str, Any] = field(default_factory=dict)
    # The order as the broker describes it, when the broker sends that with each fill: lets
    # the runtime create an order it has not seen yet before linking the fill to it.
    order: OrderUpdate | None = None


BrokerEvent = OrderUpdate | FillEvent


class OrderGateway(Protocol):
    """What a broker adapter offers the runtime. ``place`` and ``cancel`` only submit; the
    outcome (accepted, rejected, fills, cancel confirmed) arrives on ``events()``."""

    broker: str  # the brokers.code it serves, e.g. "PAPER", "BINANCE"

    async def place(self, order: Any) -> None:
        """Submit an order (an ``orders`` row: uid, side, type, quantity, price, …)."""

    async def cancel(self, order: Any) -> None:
        """Ask the broker to cancel an order."""

    def events(self) -> AsyncIterator[BrokerEvent]:
        """The stream of broker events, in the order the broker sent them."""
        ...
