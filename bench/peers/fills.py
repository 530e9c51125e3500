"""The fills both sides of the peer bench ingest: long-only spot positions, opened, added to,
partly closed and closed, so that freqtrade's model (one Trade per position, entry orders,
partial exits) and tradebook's (one position per portfolio and instrument, average cost) see
the same economic fills.

Each position opens with a buy and ends with a sell of all that is left; in between, in a
random order, 0–2 more buys and 0–2 partial sells (10–90 % of what is held), so a position has
2 to 6 fills and up to 3 exits. Quantities have 5 decimals and prices 2, as Binance's BTC/USDT
(step 0.00001, tick 0.01); prices walk around 60,000. No fees: freqtrade folds its fees into its
profit, tradebook keeps them apart, so with fees of zero both realize the same amount on each
exit, ``quantity × (price − average cost)``.
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

STEP = Decimal("0.00001")  # quantity step
BASE_TIME = dt.datetime(2026, 1, 5, 9, 0, tzinfo=dt.UTC)


@dataclass(frozen=True, slots=True)
class PeerFill:
    side: str  # "BUY" | "SELL"
    quantity: Decimal
    price: Decimal
    exec_time: dt.datetime
    trade_id: str  # the exchange's id of the fill (and of freqtrade's one-fill order)

    def for_dal(
        self, portfolio_id: int, instrument_id: int, order_id: int | None = None
    ) -> dict[str, Any]:
        """As ``trades.ingest_fill`` takes it (no fee: see the README's section 8)."""
        return {
            "portfolio_id": portfolio_id,
            "instrument_id": instrument_id,
            "order_id": order_id,
            "side": self.side,
            "quantity": self.quantity,
            "price": self.price,
            "fee": Decimal(0),
            "fee_currency": "USDT",
            "exec_time": self.exec_time,
            "broker_trade_id": self.trade_id,
        }

    def as_json(self) -> dict[str, Any]:
        """As the worker reads it: strings for the numbers, milliseconds since the epoch."""
        return {
            "id": self.trade_id,
            "side": self.side.lower(),
            "amount": str(self.quantity),
            "price": str(self.price),
            "timestamp": int(self.exec_time.timestamp() * 1000),
        }


def position_plan(rng: random.Random) -> list[str]:
    """The sides of one position's fills: a buy, more buys and partial sells, the closing sell."""
    middle = ["BUY"] * rng.randint(0, 2) + ["SELL"] * rng.randint(0, 2)
    rng.shuffle(middle)
    return ["BUY", *middle, "SELL"]


def make_sequence(n: int, seed: int = 7, tag: str = "peer") -> list[PeerFill]:
    """``n`` fills, one millisecond apart, the same for the same ``seed``; the last position is
    left open when ``n`` ends inside it."""
    rng = random.Random(seed)
    price = Decimal("60000.00")
    held = Decimal(0)
    plan: list[str] = []
    fills = []
    for i in range(n):
        if not plan:
            plan = position_plan(rng)
        side = plan.pop(0)
        price = max(Decimal("1000.00"), price + Decimal(rng.randint(-5000, 5000)) / 100)
        if side == "SELL" and plan and held < 2 * STEP:
            side = "BUY"  # too little left to sell a part of
        if side == "BUY":
            quantity = Decimal(rng.randint(100, 50000)) * STEP
            held += quantity
        elif not plan:
            quantity = held  # closes the position
            held = Decimal(0)
        else:
            part = (held * rng.randint(10, 90) / 100).quantize(STEP)
            quantity = min(max(part, STEP), held - STEP)
            held -= quantity
        fills.append(
            PeerFill(side, quantity, price, BASE_TIME + dt.timedelta(milliseconds=i), f"{tag}-{i}")
        )
    return fills
