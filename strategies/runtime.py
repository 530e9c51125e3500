"""The strategy runtime: strategies as asyncio tasks in the bot's event loop.

Each running strategy is a task with its own queue of bars (from the market) and of its
portfolio's fills (from the order desk); an exception in it is logged, the run is marked
CRASHED and its owner told — the bot and the other strategies carry on. Run state lives in
``strategy_runs``, so running strategies resume after a restart. A strategy's orders go
through the order desk (trading/desk.py) like the chat's: risk, order row, gateway.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from dal.database import Database, ScopedDal, Session
from dal.errors import TradebookError
from dal.scope import Actor
from dal.vocabulary import NotificationKind
from strategies.base import Strategy
from trading.desk import Notify as Notifier
from trading.desk import OrderDesk
from trading.events import FillEvent
from trading.market import Bar, MarkBook, Market

log = logging.getLogger("tradebook.strategies")
_END = object()


@dataclass
class StrategyContext:
    """What a running strategy sees: always (user_id, portfolio_id, strategy_id)."""

    user_id: int
    portfolio_id: int
    strategy_id: int
    dal: ScopedDal
    desk: OrderDesk
    market: Market

    @property
    def marks(self) -> MarkBook:
        return self.market.marks

    async def position(self, symbol: str) -> Decimal:
        """This strategy's net quantity in ``symbol`` (its own positions only)."""
        rows = await self.dal.positions.snapshot(self.portfolio_id)
        return sum(
            (r.quantity for r in rows if r.symbol == symbol and r.strategy_id == self.strategy_id),
            Decimal(0),
        )

    async def sellable(self, symbol: str, quantity: Decimal) -> Decimal:
        """What of ``quantity`` the account can sell now (a fee taken in the base asset
        leaves a little less than the position holds); see ``OrderDesk.sellable``."""
        return await self.desk.sellable(self.dal, self.portfolio_id, symbol, quantity)

    async def buy(self, symbol: str, quantity: Decimal, **order: Any) -> sa.Row[Any]:
        return await self._order(symbol, "BUY", quantity, order)

    async def sell(self, symbol: str, quantity: Decimal, **order: Any) -> sa.Row[Any]:
        return await self._order(symbol, "SELL", quantity, order)

    async def _order(
        self, symbol: str, side: str, quantity: Decimal, fields: dict[str, Any]
    ) -> sa.Row[Any]:
        order = {
            "portfolio_id": self.portfolio_id,
            "symbol": symbol,
            "side": side,
            "quantity": quantity,
            "strategy_id": self.strategy_id,
            **fields,
        }
        return await self.desk.place(self.dal, order)


@dataclass
class _Run:
    strategy: Strategy
    ctx: StrategyContext
    queue: asyncio.Queue[Any]
    task: asyncio.Task[None] | None = None
    name: str = ""


class StrategyRuntime:
    def __init__(
        self,
        db: Database,
        market: Market,
        desk: OrderDesk,
        registry: Mapping[str, type[Strategy]],
        notify: Notifier,
    ) -> None:
        self.db = db
        self.market = market
        self.desk = desk
        self.registry = registry
        self.notify = notify
        self.runs: dict[tuple[int, int], _Run] = {}  # (strategy id, portfolio id) → run
        self._start_lock = asyncio.Lock()
        market.subscribe("strategies", self.on_bar)
        desk.fill_listeners.append(self.on_fill)

    # --- life cycle -----------------------------------------------------------------------
    async def start(self) -> None:
        """Resume the runs that were running when tradebook stopped."""
        async with self.db.session(Actor.system(), readonly=True) as s:
            to_resume = await s.strategy_runs.running()
        for run in to_resume:
            try:
                await self._launch(Actor.user(run.user_id), run.strategy_id, run.portfolio_id)
            except Exception as exc:  # one broken run must not keep the others down
                log.exception("could not resume strategy #%s", run.strategy_id)
                await self._end(
                    run.strategy_id,
                    run.portfolio_id,
                    run.user_id,
                    "CRASHED",
                    f"could not resume: {exc}",
                )

    async def stop(self) -> None:
        """Stop the tasks without changing run state (they resume on the next start)."""
        tasks = [r.task for r in self.runs.values() if r.task]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def price_data_ended(self) -> None:
        """The feed ended (a CSV ran out): every run finishes and its owner is told."""
        for run in list(self.runs.values()):
            run.queue.put_nowait(_END)

    # --- strategies -----------------------------------------------------------------------
    async def start_strategy(
        self, actor: Actor, name: str, version: str | None = None, portfolio_id: int | None = None
    ) -> sa.Row[Any]:
        """Start the named version (default: the latest active) on a portfolio (default: the
        user's current one); creates version 1.0 of a known example strategy on first use."""
        async with self._start_lock:  # two quick /strategy start must not launch twice
            return await self._start_strategy(actor, name, version, portfolio_id)

    async def _start_strategy(
        self, actor: Actor, name: str, version: str | None, portfolio_id: int | None
    ) -> sa.Row[Any]:
        dal = self.db.scoped(actor)
        async with dal.session() as s:
            portfolio = await _portfolio(s, portfolio_id)
            try:
                row = await s.strategies.latest(name, version)
            except TradebookError:
                cls = self.registry.get(name)
                if cls is None or version not in (None, cls.default_version):
                    raise
                row = await s.strategies.create(
                    {"name": name, "version": cls.default_version, "params": cls.default_params}
                )
            if (row.id, portfolio.id) in self.runs:
                return row
        # Everything a run needs (its code, the portfolio's gateway) is checked before the run
        # is recorded RUNNING: a start that fails leaves no run to show or to resume.
        run = await self._prepare(actor, row.id, portfolio.id)
        await dal.strategy_runs.start(row.id, portfolio.id)
        self._go(row.id, portfolio.id, run)
        return row

    async def stop_strategy(
        self, actor: Actor, name: str, version: str | None = None, portfolio_id: int | None = None
    ) -> sa.Row[Any]:
        dal = self.db.scoped(actor)
        async with dal.session() as s:
            portfolio = await _portfolio(s, portfolio_id)
            row = await s.strategies.latest(name, version)
            await s.strategy_runs.stop(row.id, portfolio.id, "STOPPED")
        run = self.runs.pop((row.id, portfolio.id), None)
        if run is not None and run.task is not None:
            run.task.cancel()
            await asyncio.gather(run.task, return_exceptions=True)
        return row

    async def _launch(self, actor: Actor, strategy_id: int, portfolio_id: int) -> None:
        self._go(strategy_id, portfolio_id, await self._prepare(actor, strategy_id, portfolio_id))

    async def _prepare(self, actor: Actor, strategy_id: int, portfolio_id: int) -> _Run:
        """A run of the strategy on the portfolio, ready to go (TradebookError if it cannot
        run: no code for it, no gateway for the portfolio)."""
        dal = self.db.scoped(actor)
        async with dal.session() as s:
            row = await s.strategies.get(strategy_id)
            await s.portfolios.get(portfolio_id)
        cls = self.registry.get(row.name)
        if cls is None:
            raise TradebookError(f"no code for strategy {row.name!r} in this tradebook")
        strategy = cls(dict(row.params_json or {}))
        ctx = StrategyContext(
            int(row.user_id), portfolio_id, strategy_id, dal, self.desk, self.market
        )
        await self.desk.gateway_for(portfolio_id, dal)
        return _Run(strategy, ctx, asyncio.Queue(), name=f"{row.name} {row.version}")

    def _go(self, strategy_id: int, portfolio_id: int, run: _Run) -> None:
        self.runs[(strategy_id, portfolio_id)] = run
        run.task = asyncio.create_task(self._drive(run), name=f"strategy-{strategy_id}")

    async def _drive(self, run: _Run) -> None:
        ctx = run.ctx
        try:
            await run.strategy.on_start(ctx)
            while True:
                item = await run.queue.get()
                try:
                    await self._handle(run, item)
                finally:
                    run.queue.task_done()
                if item is _END:
                    return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception(
                "strategy %s crashed",
                run.name,
                extra={"correlation_id": f"strategy-{ctx.strategy_id}"},
            )
            error = f"{type(exc).__name__}: {exc}"
            await self.notify(
                ctx.user_id,
                f"Strategy {run.name} crashed and was stopped: {error}",
                NotificationKind.RISK,
            )
            await self._end(ctx.strategy_id, ctx.portfolio_id, ctx.user_id, "CRASHED", error)
            _drain(run.queue)

    async def _handle(self, run: _Run, item: Any) -> None:
        ctx = run.ctx
        if item is _END:
            await self.notify(
                ctx.user_id,
                f"Strategy {run.name}: the price data ended; it stopped.",
                NotificationKind.RISK,
            )
            await self._end(ctx.strategy_id, ctx.portfolio_id, ctx.user_id, "FINISHED")
        elif isinstance(item, FillEvent):
            await run.strategy.on_fill(ctx, item)
        else:
            await run.strategy.on_bar(ctx, item)

    async def _end(
        self,
        strategy_id: int,
        portfolio_id: int,
        user_id: int,
        status: str,
        error: str | None = None,
    ) -> None:
        try:
            async with self.db.session(Actor.user(user_id)) as s:
                await s.strategy_runs.stop(strategy_id, portfolio_id, status, error)
        except Exception:
            log.exception("could not record the end of strategy #%s", strategy_id)
        finally:
            # Leave the table of runs only once the end is on record.
            self.runs.pop((strategy_id, portfolio_id), None)

    # --- bars and fills -------------------------------------------------------------------
    async def on_bar(self, bar: Bar) -> None:
        for run in list(self.runs.values()):
            run.queue.put_nowait(bar)

    async def on_fill(self, user_id: int, portfolio_id: int, fill: FillEvent) -> None:
        for (_strategy_id, pid), run in list(self.runs.items()):
            if pid == portfolio_id:
                run.queue.put_nowait(fill)

    async def settle(self) -> None:
        """Wait until the strategies have handled what they were given and the desk's
        events (and the fills those routed back to strategies) are applied."""
        while True:
            await asyncio.gather(*(r.queue.join() for r in list(self.runs.values())))
            await self.desk.idle()
            if not any(r.queue.qsize() for r in self.runs.values()):
                return


async def _portfolio(s: Session, portfolio_id: int | None) -> sa.Row[Any]:
    """The given portfolio (owner-checked) or the user's current one."""
    return await s.portfolios.get(portfolio_id) if portfolio_id else await s.portfolios.current()


def _drain(queue: asyncio.Queue[Any]) -> None:
    """Mark everything left in a stopped strategy's queue as handled (lockstep never waits
    on a strategy that is gone)."""
    while not queue.empty():
        queue.get_nowait()
        queue.task_done()
