"""The paper gateway: the OrderGateway of PAPER accounts, on the same schema as real ones.

It wraps the pure matching engine (strategies/paper_engine.py, whose docstring has the fill
rules) and turns its results into the broker event stream the runtime maps onto orders and
trades — exactly as it would map a real broker's."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from typing import Any

from dal.types import local_midnight
from strategies.events import BrokerEvent
from strategies.paper_engine import Bar, PaperConfig, PaperEngine, PaperOrder


class PaperGateway:
    broker = "PAPER"

    def __init__(
        self, config: PaperConfig, timezone: str = "UTC", currency: str = "USDT", clock: Any = None
    ) -> None:
        # A fresh id prefix per gateway instance: ids never repeat across restarts.
        self.engine = PaperEngine(config, id_prefix=f"{uuid.uuid4().hex[:8]}-")
        self.timezone = timezone
        self.currency = currency
        self._queue: asyncio.Queue[BrokerEvent] = asyncio.Queue()
        self._clock = clock or (lambda: dt.datetime.now(dt.UTC))
        self.last_bar_time: dt.datetime | None = None

    def _now(self) -> dt.datetime:
        return self.last_bar_time or self._clock()

    async def place(self, order: Any) -> None:
        now = self._now()
        paper = PaperOrder(
            client_order_id=order.client_order_id,
            symbol=order.symbol,
            side=order.side,
            order_type=order.type,
            # After a restart an order is handed back with what is left of it.
            quantity=order.quantity - (getattr(order, "filled_quantity", None) or 0),
            price=order.price,
            stop_price=order.stop_price,
            time_in_force=order.time_in_force,
            placed_at=now,
            day_ends_at=local_midnight(now, self.timezone, days=1)  # DAY ends
            if order.time_in_force == "DAY"
            else None,
            fee_currency=self.currency,
        )
        self._emit(self.engine.submit(paper, now))

    async def cancel(self, order: Any) -> bool:
        """Cancel an open order; False when this engine does not hold it (e.g. placed before
        a restart and never handed back), so the caller can settle it itself."""
        events = self.engine.cancel(order.client_order_id, self._now())
        self._emit(events)
        return bool(events)

    def on_bar(self, bar: Bar) -> None:
        self.last_bar_time = bar.time
        self._emit(self.engine.on_bar(bar))

    def _emit(self, events: list[Any]) -> None:
        for event in events:
            self._queue.put_nowait(event)

    async def events(self) -> AsyncIterator[BrokerEvent]:
        while True:
            yield await self._queue.get()

    def pending(self) -> int:
        return self._queue.qsize()

    def event_done(self) -> None:
        """The runtime has applied one event taken from ``events()``."""
        self._queue.task_done()

    async def drained(self) -> None:
        """Every event emitted so far has been taken and applied."""
        await self._queue.join()
