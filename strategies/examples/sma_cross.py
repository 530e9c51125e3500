"""SMA crossover, long only: buy when the fast average crosses above the slow one, sell the
whole position when it crosses back below."""

from __future__ import annotations

from decimal import Decimal
from typing import Any, ClassVar

from strategies.base import Strategy
from strategies.runtime import StrategyContext
from trading.market import Bar


class SmaCross(Strategy):
    name: ClassVar[str] = "sma_cross"
    default_version: ClassVar[str] = "1.0"
    default_params: ClassVar[dict[str, Any]] = {
        "symbol": "BTCUSDT",
        "fast": 5,
        "slow": 20,
        "quantity": "0.01",
    }

    def __init__(self, params: dict[str, Any]) -> None:
        super().__init__(params)
        self.fast = int(self.params["fast"])
        self.slow = int(self.params["slow"])
        if not 1 <= self.fast < self.slow:
            raise ValueError("sma_cross needs 1 <= fast < slow")
        self.quantity = Decimal(str(self.params["quantity"]))
        self._above: bool | None = None

    async def on_bar(self, ctx: StrategyContext, bar: Bar) -> None:
        symbol = self.params["symbol"]
        if bar.symbol != symbol:
            return
        closes = ctx.marks.closes(symbol, self.slow)
        if len(closes) < self.slow:
            return
        fast = sum(closes[-self.fast :], Decimal(0)) / self.fast
        slow = sum(closes, Decimal(0)) / self.slow
        above = fast > slow
        # The first reading counts as a cross: a flat strategy joins an uptrend at once.
        crossed = above != self._above
        self._above = above
        if not crossed:
            return
        held = await ctx.position(symbol)
        if above and held <= 0:
            await ctx.buy(symbol, self.quantity)
        elif not above and held > 0:
            await ctx.sell(symbol, await ctx.sellable(symbol, held))
