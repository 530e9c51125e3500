"""The paper gateway: the OrderGateway of PAPER accounts, on the same schema as real ones.

It wraps the pure matching engine (trading/paper_engine.py, whose docstring has the fill
rules), matches on every bar of the market it subscribes to, and turns the engine's results
into the broker event stream the desk maps onto orders and trades — exactly as it would map a
real broker's. Its time is the market's: an order is accepted as of the latest bar and fills
on a later one, so a fill is never stamped before its order.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from typing import Any

from trading.events import BrokerEvent
from trading.market import Bar, Market
from trading.paper_engine import PaperConfig, PaperEngine, PaperOrder


class PaperGateway:
    broker = "PAPER"

    def __init__(self, config: PaperConfig, market: Market, currency: str = "USDT") -> None:
        # A fresh id prefix per gateway instance: ids never repeat across restarts.
        self.engine = PaperEngine(config, id_prefix=f"{uuid.uuid4().hex[:8]}-")
        self.market = market
        self.currency = currency
        self._queue: asyncio.Queue[BrokerEvent] = asyncio.Queue()
        self._name = f"paper-{id(self)}"
        market.subscribe(self._name, self.on_bar)

    def _now(self) -> dt.datetime:
        return self.market.last_bar_time or dt.datetime.now(dt.UTC)

    def _paper_order(self, order: Any, accepted_at: dt.datetime) -> PaperOrder:
        return PaperOrder(
            client_order_id=order.client_order_id,
            symbol=order.symbol,
            side=order.side,
            order_type=order.type,
            quantity=order.quantity,
            price=order.price,
            stop_price=order.stop_price,
            time_in_force=order.time_in_force,
            placed_at=accepted_at,
            day_ends_at=order.day_ends_at,
            fee_currency=self.currency,
        )

    async def adopt(self, orders: list[Any]) -> None:
        """Open orders from before a restart go back into the (new, empty) book as they
        stand: their broker order id and what is filled already. They match from the next
        bar on; no event is sent (nothing changed)."""
        # Open as of the latest bar seen; before the first bar since the start, any bar is next.
        as_of = self.market.last_bar_time or dt.datetime.min.replace(tzinfo=dt.UTC)
        for order in orders:
            broker_order_id = order.broker_order_id or f"{self.engine.id_prefix}adopted-{order.id}"
            paper = self._paper_order(order, order.placed_at)
            self.engine.adopt(paper, broker_order_id, order.filled_quantity, as_of)

    async def place(self, order: Any) -> None:
        now = self._now()
        self._emit(self.engine.submit(self._paper_order(order, now), now))

    async def cancel(self, order: Any) -> bool:
        """Cancel an open order; False when this engine does not hold it."""
        events = self.engine.cancel(order.client_order_id, self._now())
        self._emit(events)
        return bool(events)

    async def on_bar(self, bar: Bar) -> None:
        self._emit(self.engine.on_bar(bar))

    def _emit(self, events: list[Any]) -> None:
        for event in events:
            self._queue.put_nowait(event)

    async def events(self) -> AsyncIterator[BrokerEvent]:
        while True:
            yield await self._queue.get()

    def event_done(self) -> None:
        self._queue.task_done()

    async def drained(self) -> None:
        await self._queue.join()

    async def close(self) -> None:
        self.market.unsubscribe(self.on_bar)
