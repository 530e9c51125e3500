"""Broker events and the order-gateway protocol, broker-neutral.

A gateway (paper, Binance, …) turns what its broker says into these events; the order desk
maps every event onto ``orders`` and ``trades`` through the user-scoped DAL, idempotently (broker
order and trade ids), so replayed or out-of-order events never double-count.

Events name the instrument by symbol and exchange (what brokers send); the desk resolves
them. ``client_order_id`` is tradebook's order uid for orders tradebook placed; an event whose
order tradebook does not know (placed on the exchange by hand) lands in the account's default
portfolio as a manual order.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
from collections import deque
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
    broker_order_id: str | None  # None: refused before the broker gave it an id
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
    # the desk create an order it has not seen yet before linking the fill to it.
    order: OrderUpdate | None = None

    def __post_init__(self) -> None:
        # The trade id is what makes a fill sent twice one trade: no id, no fill.
        trade_id = self.broker_trade_id
        if not isinstance(trade_id, str) or not trade_id.strip() or trade_id.strip() == "-1":
            raise ValueError(
                f"a fill of {self.symbol} (order {self.broker_order_id}) has no broker trade "
                "id; it cannot be stored without one (it could be counted twice)"
            )


BrokerEvent = OrderUpdate | FillEvent


class OrderGateway(Protocol):
    """What a broker adapter offers the order desk. ``place`` and ``cancel`` only submit; the
    outcome (accepted, rejected, fills, cancel confirmed) arrives on ``events()``. Orders come
    as ``trading.desk.GatewayOrder``."""

    broker: str  # the brokers.code it serves, e.g. "PAPER", "BINANCE"

    async def adopt(self, orders: list[Any]) -> None:
        """Take back the portfolio's orders still open from before a restart (oldest first)."""

    async def place(self, order: Any) -> None:
        """Submit an order."""

    async def cancel(self, order: Any) -> bool:
        """Ask the broker to cancel an order; False when the broker does not hold it."""

    def events(self) -> AsyncIterator[BrokerEvent]:
        """The broker's events, in the order it sent them."""

    def event_done(self) -> None:
        """The desk has applied one event taken from ``events()``."""

    async def drained(self) -> None:
        """Every event emitted so far has been taken and applied."""

    async def close(self) -> None:
        """Stop: no more events, no more bars."""


def event_from_json(data: dict[str, Any]) -> BrokerEvent:
    """The inverse of ``trading.desk.event_to_json``."""
    fields = dict(data)
    kind = fields.pop("kind")
    if kind == "fill":
        order = fields.pop("order", None)
        return FillEvent(
            **_typed(fields, FillEvent),
            order=OrderUpdate(**_typed(order, OrderUpdate)) if order else None,
        )
    return OrderUpdate(**_typed(fields, OrderUpdate))


_DECIMALS = {"quantity", "price", "stop_price", "fee"}
_TIMES = {"event_time", "exec_time"}


def _typed(fields: dict[str, Any], cls: type) -> dict[str, Any]:
    out = {}
    for name, value in fields.items():
        if value is not None and name in _DECIMALS:
            value = Decimal(value)
        elif value is not None and name in _TIMES:
            value = dt.datetime.fromisoformat(value)
        out[name] = value
    return out


# Fill statuses an order update can carry (fills drive them), how far behind an update a fill
# of its order is looked for, and how long such an update waits for that fill before it is
# applied on its own: an exchange acknowledges a taker order (NEW) and reports its first trade
# within milliseconds, and a resting order loses nothing by having its broker id recorded a
# moment later.
FILL_STATUSES = ("NEW", "PARTIALLY_FILLED", "FILLED")
LOOK_AHEAD = 8
HOLD_S = 0.05


def _same_order(update: OrderUpdate, fill: FillEvent) -> bool:
    if update.client_order_id and fill.client_order_id:
        return update.client_order_id == fill.client_order_id
    return update.broker_order_id is not None and update.broker_order_id == fill.broker_order_id


def _fill_status(event: BrokerEvent) -> bool:
    return isinstance(event, OrderUpdate) and event.status in FILL_STATUSES


class EventQueue:
    """A gateway's broker events in arrival order, with what asyncio.Queue gives (``get``,
    ``task_done``, ``join``) plus ``take_fills``: the fills waiting right behind, so the desk
    can apply a burst of them in one transaction.

    An update of an order to NEW, PARTIALLY_FILLED or FILLED changes nothing a fill of the
    same order does not (fills drive those statuses and record the order's broker id), so
    it is held for up to ``hold_s``: a fill of its order that describes the order (Binance's
    do) drops it, and the fill no longer waits behind a transaction of its own. A fill that
    does not describe its order lets the update go first (it may create the order). Held
    updates count as unfinished (``join``)."""

    def __init__(self, hold_s: float = HOLD_S) -> None:
        self.hold_s = hold_s
        self._items: deque[BrokerEvent] = deque()
        self._held: deque[tuple[float, OrderUpdate]] = deque()  # (deadline, update), in order
        self._ready = asyncio.Event()
        self._unfinished = 0
        self._finished = asyncio.Event()
        self._finished.set()

    def put_nowait(self, event: BrokerEvent) -> None:
        self._unfinished += 1
        self._finished.clear()
        if isinstance(event, OrderUpdate) and _fill_status(event):
            deadline = asyncio.get_running_loop().time() + self.hold_s
            self._held.append((deadline, event))
        else:
            if isinstance(event, FillEvent):
                self._meet_held(event)
            self._items.append(event)
        self._ready.set()

    def _meet_held(self, fill: FillEvent) -> None:
        """The held updates of ``fill``'s order: dropped when the fill describes the order,
        else sent ahead of it."""
        kept: deque[tuple[float, OrderUpdate]] = deque()
        for deadline, update in self._held:
            if not _same_order(update, fill):
                kept.append((deadline, update))
            elif fill.order is not None:
                self.task_done()
            else:
                self._items.append(update)
        self._held = kept

    def _release_due(self) -> None:
        now = asyncio.get_running_loop().time()
        while self._held and self._held[0][0] <= now:
            self._items.append(self._held.popleft()[1])

    async def get(self) -> BrokerEvent:
        while True:
            self._release_due()
            if self._items:
                event = self._items.popleft()
                if not self._superseded(event):
                    return event
                self.task_done()
                continue
            self._ready.clear()
            if not self._held:
                await self._ready.wait()
                continue
            wait = self._held[0][0] - asyncio.get_running_loop().time()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), max(wait, 0))

    def _superseded(self, event: BrokerEvent) -> bool:
        """An update to a fill status let go with a fill of its order right behind it that
        describes the order (see the class): dropped."""
        if not isinstance(event, OrderUpdate) or not _fill_status(event):
            return False
        for later in itertools.islice(self._items, LOOK_AHEAD):
            if (
                isinstance(later, FillEvent)
                and later.order is not None
                and _same_order(event, later)
            ):
                return True
        return False

    def take_fills(self, limit: int) -> list[FillEvent]:
        """Up to ``limit`` fills from the head of the queue, stopping at anything else."""
        taken: list[FillEvent] = []
        while self._items and len(taken) < limit and isinstance(self._items[0], FillEvent):
            event = self._items.popleft()
            assert isinstance(event, FillEvent)
            taken.append(event)
        return taken

    def task_done(self) -> None:
        self._unfinished -= 1
        if self._unfinished <= 0:
            self._unfinished = 0
            self._finished.set()

    async def join(self) -> None:
        await self._finished.wait()
