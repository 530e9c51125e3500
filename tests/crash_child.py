"""Child process of tests/test_crash_safety.py: ingests fills forever until it is SIGKILLed.

Usage: ``python tests/crash_child.py '<json config>'`` (url, user_id, portfolio_id,
instrument_ids, strategy_id, run, seed). Every new fill gets the broker trade id
``r<run>-<seq>`` with ``seq`` counting from 0 in this run. Protocol on stdout, one line each:

* ``READY`` once the DAL is open and the orders' remaining quantities are read;
* ``B <lo> <hi>`` just before a transaction that ingests the new fills lo..hi starts;
* ``C <lo> <hi> <monotonic>`` just after that transaction has committed.

Transactions are a mix of: one ``ingest_fill``; a batch ``ingest_fills`` of 10; and three
separate ``ingest_fill`` calls in one session (several writer-thread hops). Fills are linked
to the orders (never overfilling them) or unlinked; buys and sells of random sizes make the
positions cross zero often; some fills are late (older exec_time) and some transactions also replay
an already committed fill, which must come back as ``replayed``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import random
import sys
import time
from collections import defaultdict, deque
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from dal import schema as t
from dal.database import Database
from dal.models import Fill
from dal.scope import Actor, Tx

T0 = dt.datetime(2024, 5, 1, 9, 0, tzinfo=dt.UTC)
BATCH = 10
MULTI_CALLS = 3


def emit(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _state(tx: Tx, portfolio_id: int) -> tuple[list[sa.Row], list[sa.Row], dt.datetime | None]:
    orders = list(
        tx.conn.execute(
            sa.select(t.orders).where(t.orders.c.portfolio_id == portfolio_id).order_by("id")
        )
    )
    positions = list(
        tx.conn.execute(sa.select(t.positions).where(t.positions.c.portfolio_id == portfolio_id))
    )
    last = tx.conn.execute(
        sa.select(sa.func.max(t.trades.c.exec_time)).where(t.trades.c.portfolio_id == portfolio_id)
    ).scalar()
    return orders, positions, last


class FillMaker:
    def __init__(
        self,
        cfg: dict[str, Any],
        orders: list[sa.Row],
        positions: list[sa.Row],
        clock: dt.datetime,
    ) -> None:
        self.rng = random.Random(cfg["seed"])
        self.run = cfg["run"]
        self.portfolio_id = cfg["portfolio_id"]
        self.instrument_ids = cfg["instrument_ids"]
        self.strategy_id = cfg["strategy_id"]
        self.orders = {o.id: o for o in orders}
        self.remaining = {o.id: o.quantity - o.filled_quantity for o in orders}
        self.position: dict[tuple[int, int | None], Decimal] = defaultdict(Decimal)
        for row in positions:
            self.position[(row.instrument_id, row.strategy_id)] = row.quantity
        self.clock = clock
        self.seq = 0

    def _quantity(self) -> Decimal:
        rng = self.rng
        if rng.random() < 0.1:  # an awkward amount with many fractional digits
            return Decimal(rng.randint(1, 10**12)).scaleb(-11)
        return Decimal(rng.randint(1, 300_000)).scaleb(-3)

    def _price(self) -> Decimal:
        rng = self.rng
        if rng.random() < 0.1:
            return Decimal(rng.randint(9 * 10**10, 11 * 10**10)).scaleb(-8)
        return Decimal(rng.randint(90_000, 110_000)).scaleb(-2)

    def _exec_time(self) -> dt.datetime:
        rng = self.rng
        if rng.random() < 0.05:  # late: older than what the position has already seen
            return self.clock - dt.timedelta(seconds=rng.randint(1, 3600))
        # Sometimes the same time as the previous fill (ties are ordered by trade id).
        self.clock += dt.timedelta(milliseconds=rng.choice([0, 1, 250, 1000, 2500]))
        return self.clock

    def next_fill(
        self, remaining: dict[int, Decimal], position: dict[tuple[int, int | None], Decimal]
    ) -> dict[str, Any]:
        """A new fill; ``remaining`` and ``position`` are this transaction's tentative state
        (order id → quantity left; (instrument, strategy) → position quantity)."""
        rng = self.rng
        fill: dict[str, Any] = {
            "portfolio_id": self.portfolio_id,
            "price": self._price(),
            "exec_time": self._exec_time(),
            "broker_trade_id": f"r{self.run:02d}-{self.seq:07d}",
        }
        self.seq += 1
        open_orders = [oid for oid, left in remaining.items() if left > 0]
        if open_orders and rng.random() < 0.5:
            order = self.orders[rng.choice(open_orders)]
            quantity = min(self._quantity(), remaining[order.id])
            if remaining[order.id] <= 100 and rng.random() < 0.2:
                quantity = remaining[order.id]  # fill a small order completely
            remaining[order.id] -= quantity
            fill.update(
                order_id=order.id,
                instrument_id=order.instrument_id,
                side=order.side,
                quantity=quantity,
            )
            key = (order.instrument_id, order.strategy_id)
        else:
            key = (rng.choice(self.instrument_ids), None)
            if rng.random() < 0.2:
                key = (key[0], self.strategy_id)
                fill["strategy_id"] = self.strategy_id
            # Mostly towards zero and often past it: longs become shorts and back.
            toward_zero = "SELL" if position[key] > 0 else "BUY"
            side = toward_zero if rng.random() < 0.7 else rng.choice(["BUY", "SELL"])
            quantity = self._quantity()
            if side == toward_zero and rng.random() < 0.5:
                quantity += abs(position[key])  # cross zero
            fill.update(instrument_id=key[0], side=side, quantity=quantity)
        position[key] += fill["quantity"] if fill["side"] == "BUY" else -fill["quantity"]
        if rng.random() < 0.3:
            fill.update(fee=Decimal(rng.randint(1, 10**6)).scaleb(-8), fee_currency="USDT")
        return fill


async def main(cfg: dict[str, Any]) -> None:
    db = Database(cfg["url"])
    actor = Actor.user(cfg["user_id"])
    async with db.session(actor, readonly=True) as s:
        orders, positions, last = await s.run(_state, cfg["portfolio_id"])
    maker = FillMaker(cfg, orders, positions, last or T0)
    rng = maker.rng
    committed: deque[dict[str, Any]] = deque(maxlen=200)
    emit("READY")
    while True:
        kind = rng.random()
        size = 1 if kind < 0.6 else BATCH if kind < 0.8 else MULTI_CALLS
        remaining, position = dict(maker.remaining), defaultdict(Decimal, maker.position)
        fills = [maker.next_fill(remaining, position) for _ in range(size)]
        replay = rng.choice(committed) if committed and rng.random() < 0.1 else None
        lo, hi = maker.seq - size, maker.seq - 1
        emit(f"B {lo} {hi}")
        async with db.session(actor) as s:
            if replay is not None:
                result = await s.trades.ingest_fill(replay)
                if not result.replayed:
                    raise AssertionError(f"replay of {replay['broker_trade_id']} was new")
            if size == BATCH:
                batch: list[Fill | dict[str, Any]] = [*fills]  # the list type ingest_fills takes
                results = await s.trades.ingest_fills(batch)
            else:
                results = [await s.trades.ingest_fill(f) for f in fills]
            if any(r.replayed for r in results):
                raise AssertionError(f"a new fill of {lo}..{hi} came back as a replay")
        emit(f"C {lo} {hi} {time.monotonic():.6f}")
        maker.remaining, maker.position = remaining, position
        committed.extend(fills)


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))
