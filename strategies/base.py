"""What a strategy is: a class with a name, versioned params and callbacks, run by the runtime
with a context that always carries (user_id, portfolio_id, strategy_id)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from trading.events import FillEvent
from trading.market import Bar

if TYPE_CHECKING:
    from strategies.runtime import StrategyContext


class Strategy:
    """Subclass it, give it a ``name`` and ``default_params``, override the callbacks.
    Everything it does goes through ``ctx`` (the user-scoped DAL, the order path with pre-trade
    risk, the latest marks); an exception stops it (CRASHED) without touching the bot."""

    name: ClassVar[str]
    default_version: ClassVar[str] = "1.0"
    default_params: ClassVar[dict[str, Any]] = {}

    def __init__(self, params: dict[str, Any]) -> None:
        unknown = set(params) - set(self.default_params)
        if unknown:
            raise ValueError(f"{self.name}: unknown params {', '.join(sorted(unknown))}")
        self.params = {**self.default_params, **params}

    async def on_start(self, ctx: StrategyContext) -> None:
        """Called once when the run starts (or resumes after a restart)."""

    async def on_bar(self, ctx: StrategyContext, bar: Bar) -> None:
        """Called for every bar of the feed."""

    async def on_fill(self, ctx: StrategyContext, fill: FillEvent) -> None:
        """Called after one of this strategy's orders filled (the trade is already stored)."""
