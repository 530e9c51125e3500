"""The gateway's event queue: arrival order, fills taken in bursts, and an order's update to a
fill status held a moment and dropped when a fill of the order that describes it comes."""

from __future__ import annotations

import asyncio
import datetime as dt
from decimal import Decimal
from typing import Any

from trading.events import EventQueue, FillEvent, OrderUpdate

AT = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)


def update(status: str, client_id: str = "tb-1", broker_id: str | None = "7") -> OrderUpdate:
    return OrderUpdate(
        "BTCUSDT", "BINANCE", broker_id, client_id, status, "BUY", "MARKET",  # type: ignore[arg-type]  # a status name from the test's list
        Decimal(1), None, None, "GTC", AT,
    )  # fmt: skip


def trade(trade_id: str, client_id: str = "tb-1", describes: bool = True) -> FillEvent:
    return FillEvent(
        "BTCUSDT", "BINANCE", "7", client_id, trade_id, "BUY", Decimal("0.5"), Decimal(100),
        Decimal(0), None, AT, order=update("PARTIALLY_FILLED", client_id) if describes else None,
    )  # fmt: skip


async def drain(queue: EventQueue) -> list[Any]:
    got: list[Any] = []
    while True:
        try:
            event = await asyncio.wait_for(queue.get(), 0.3)
        except TimeoutError:
            return got
        got.append(event)
        queue.task_done()


async def test_a_new_update_with_its_fill_right_behind_is_left_to_the_fill() -> None:
    queue = EventQueue()
    first, second = trade("1"), trade("2")
    for event in (update("NEW"), first, update("PARTIALLY_FILLED"), second):
        queue.put_nowait(event)
    assert await drain(queue) == [first, second]
    await asyncio.wait_for(queue.join(), 1)  # the dropped updates count as done


async def test_updates_a_fill_cannot_stand_for_are_kept() -> None:
    queue = EventQueue(hold_s=0.02)
    other_order, its_fill = update("NEW", "tb-2"), trade("3", "tb-3")
    undescribed, bare_fill = update("NEW", "tb-4"), trade("4", "tb-4", describes=False)
    canceled, after_cancel = update("CANCELED", "tb-5"), trade("5", "tb-5")
    alone = update("NEW", "tb-6")
    for event in (other_order, its_fill, undescribed, bare_fill, canceled, after_cancel, alone):
        queue.put_nowait(event)
    got = await drain(queue)
    # A fill that does not describe its order lets the update go first (it may create the
    # order); an update to an ended status is never held; the others wait out their hold.
    assert got == [its_fill, undescribed, bare_fill, canceled, after_cancel, other_order, alone]
    await asyncio.wait_for(queue.join(), 1)


async def test_a_held_update_is_applied_on_its_own_after_the_hold() -> None:
    queue = EventQueue(hold_s=0.05)
    loop = asyncio.get_running_loop()
    started = loop.time()
    acknowledged = update("NEW", "tb-7")
    queue.put_nowait(acknowledged)
    assert await asyncio.wait_for(queue.get(), 1) is acknowledged
    assert loop.time() - started >= 0.05
    queue.task_done()
    await asyncio.wait_for(queue.join(), 1)
