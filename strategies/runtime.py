"""The strategy runtime: strategies as asyncio tasks in the bot's event loop.

One feed task reads bars, updates the marks, lets each paper gateway match its open orders on
the bar, then hands the bar to every running strategy. Each gateway has an event task that maps
its broker events onto orders and trades (strategies/mapping.py). Each running strategy is a
task with its own bar queue; an exception in it is logged, the run is marked CRASHED and its
owner told — the bot and the other strategies carry on. Run state lives in ``strategy_runs``,
so running strategies resume after a restart. Every order a strategy (or a user) sends goes
through ``submit_order``: pre-trade risk, then the DAL, then the portfolio's gateway.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from dal.database import Database, ScopedDal
from dal.errors import Conflict, TradebookError
from dal.scope import Actor
from dal.vocabulary import OPEN_STATUSES
from strategies.base import Strategy
from strategies.events import FillEvent
from strategies.feeds import MarkBook, PriceFeed
from strategies.mapping import apply_event
from strategies.paper import PaperGateway
from strategies.paper_engine import Bar, PaperConfig

log = logging.getLogger("tradebook.strategies")
Notifier = Callable[[int, str], Awaitable[None]]  # (user id, text)
_END = object()
CONFIRM_WITHIN = 600  # seconds a held order waits for its owner's Confirm


@dataclass
class StrategyContext:
    """What a running strategy sees: always (user_id, portfolio_id, strategy_id)."""

    user_id: int
    portfolio_id: int
    strategy_id: int
    dal: ScopedDal
    runtime: Runtime

    @property
    def marks(self) -> MarkBook:
        return self.runtime.marks

    async def position(self, symbol: str) -> Decimal:
        """This strategy's net quantity in ``symbol`` (its own positions only)."""
        rows = await self.dal.positions.snapshot(self.portfolio_id)
        return sum(
            (r.quantity for r in rows if r.symbol == symbol and r.strategy_id == self.strategy_id),
            Decimal(0),
        )

    async def buy(self, symbol: str, quantity: Decimal, **order: Any) -> Any:
        return await self.runtime.submit_order(self, symbol, "BUY", quantity, **order)

    async def sell(self, symbol: str, quantity: Decimal, **order: Any) -> Any:
        return await self.runtime.submit_order(self, symbol, "SELL", quantity, **order)


@dataclass
class _Run:
    strategy: Strategy
    ctx: StrategyContext
    queue: asyncio.Queue[Any]
    task: asyncio.Task[None] | None = None
    name: str = ""


class Runtime:
    def __init__(
        self,
        db: Database,
        feed: PriceFeed,
        registry: Mapping[str, type[Strategy]],
        notify: Notifier,
        paper: PaperConfig,
        pace: Decimal | None = None,
        lockstep: bool = False,
    ) -> None:
        self.db = db
        self.feed = feed
        self.registry = registry
        self.notify = notify
        self.paper = paper
        self.pace = pace
        # Lockstep: the next bar waits until every strategy has handled this one and every
        # gateway event is applied (backtests and tests; live runs keep the feed's pace).
        self.lockstep = lockstep
        self.marks = MarkBook()
        self.instrument_ids: dict[str, int] = {}
        self.gateways: dict[int, PaperGateway] = {}  # portfolio id → gateway
        self.runs: dict[tuple[int, int], _Run] = {}  # (strategy id, portfolio id) → run
        self._tasks: list[asyncio.Task[None]] = []
        self.feed_done = asyncio.Event()
        self.last_bar_time: dt.datetime | None = None
        self._start_lock = asyncio.Lock()
        # Called after each bar and each applied fill (alerts and screeners hook in here).
        self.bar_listeners: list[Callable[[Bar], Awaitable[None]]] = []
        self.fill_listeners: list[Callable[[int, int, FillEvent], Awaitable[None]]] = []
        self._pending: dict[str, tuple[int, dict[str, Any], float]] = {}  # confirmations

    # --- life cycle -----------------------------------------------------------------------------
    async def start(self, feed: bool = True) -> None:
        """Create the feed's instruments (idempotent), resume running strategies and (unless
        ``feed=False``; call ``start_feed`` later) start the price feed."""
        async with self.db.session(Actor.system()) as s:
            for inst in self.feed.instruments:
                row = await s.instruments.ensure(inst.__dict__)
                self.instrument_ids[inst.symbol] = row.id
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
        if feed:
            self.start_feed()

    def start_feed(self) -> None:
        self._tasks.append(asyncio.create_task(self._pump_feed(), name="feed"))

    async def stop(self) -> None:
        """Stop the tasks without changing run state (they resume on the next start)."""
        tasks = [*self._tasks, *(r.task for r in self.runs.values() if r.task)]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()

    # --- strategies -------------------------------------------------------------------------
    async def start_strategy(
        self, actor: Actor, name: str, version: str | None = None, portfolio_id: int | None = None
    ) -> Any:
        """Start the named version (default: the latest active) on a portfolio (default: the
        user's current one); creates version 1.0 of a known example strategy on first use."""
        async with self._start_lock:  # two quick /strategy start must not launch twice
            return await self._start_strategy(actor, name, version, portfolio_id)

    async def _start_strategy(
        self, actor: Actor, name: str, version: str | None, portfolio_id: int | None
    ) -> Any:
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
            await s.strategy_runs.start(row.id, portfolio.id)
        await self._launch(actor, row.id, portfolio.id)
        return row

    async def stop_strategy(
        self, actor: Actor, name: str, version: str | None = None, portfolio_id: int | None = None
    ) -> Any:
        dal = self.db.scoped(actor)
        async with dal.session() as s:
            portfolio = await _portfolio(s, portfolio_id)
            row = await s.strategies.latest(name, version)
            await s.strategy_runs.stop(row.id, portfolio.id, "STOPPED")
        run = self.runs.pop((row.id, portfolio.id), None)
        if run is not None and run.task is not None:
            run.task.cancel()
        return row

    async def _launch(self, actor: Actor, strategy_id: int, portfolio_id: int) -> None:
        dal = self.db.scoped(actor)
        async with dal.session() as s:
            row = await s.strategies.get(strategy_id)
            await s.portfolios.get(portfolio_id)
        cls = self.registry.get(row.name)
        if cls is None:
            raise TradebookError(f"no code for strategy {row.name!r} in this tradebook")
        strategy = cls(dict(row.params_json or {}))
        ctx = StrategyContext(int(row.user_id), portfolio_id, strategy_id, dal, self)
        await self.gateway_for(portfolio_id, dal)
        run = _Run(strategy, ctx, asyncio.Queue(), name=f"{row.name} {row.version}")
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
            await self.notify(ctx.user_id, f"Strategy {run.name} crashed and was stopped: {error}")
            await self._end(ctx.strategy_id, ctx.portfolio_id, ctx.user_id, "CRASHED", error)
            _drain(run.queue)

    async def _handle(self, run: _Run, item: Any) -> None:
        ctx = run.ctx
        if item is _END:
            await self.notify(
                ctx.user_id, f"Strategy {run.name}: the price data ended; it stopped."
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

    # --- orders -------------------------------------------------------------------------------
    async def gateway_for(self, portfolio_id: int, dal: ScopedDal) -> PaperGateway:
        gateway = self.gateways.get(portfolio_id)
        if gateway is not None:
            return gateway
        async with dal.session() as s:
            portfolio = await s.portfolios.get(portfolio_id)
            account = await s.accounts.get(portfolio.account_id)
            broker = await s.portfolios.broker_code(portfolio_id)
            user = await s.users.me()
        if broker != "PAPER":
            raise TradebookError(f"no gateway for {broker} accounts in this tradebook yet")
        gateway = PaperGateway(
            self.paper,
            timezone=user.timezone,
            currency=account.base_currency,
            # Orders are stamped with the feed's time, so the next bar can fill them.
            clock=lambda: self.last_bar_time or dt.datetime.now(dt.UTC),
        )
        self.gateways[portfolio_id] = gateway
        # Orders still open from before a restart go back to the (new, empty) paper book.
        async with dal.session(readonly=True) as s:
            open_orders = await s.orders.list(portfolio_id, limit=1000)
        for row in reversed(open_orders):
            await gateway.place(_OrderForGateway(row, row.symbol))
        self._tasks.append(
            asyncio.create_task(
                self._pump_events(portfolio_id, dal, gateway), name=f"gateway-{portfolio_id}"
            )
        )
        return gateway

    async def submit_order(
        self, ctx: StrategyContext, symbol: str, side: str, quantity: Decimal, **fields: Any
    ) -> Any:
        """Pre-trade risk, then store the order, then hand it to the gateway. A BLOCK stores
        it REJECTED with the reason; BLOCK and WARN both write breaches and tell the owner."""
        order = {
            "portfolio_id": ctx.portfolio_id,
            "symbol": symbol,
            "side": side,
            "quantity": quantity,
            "strategy_id": ctx.strategy_id,
            "type": "MARKET",
            **fields,
        }
        return await self.place_checked(ctx.dal, order)

    async def place_checked(self, dal: ScopedDal, order: dict[str, Any]) -> Any:
        from dal.types import new_uid

        order.setdefault("client_order_id", f"tb-{new_uid()}")
        # No gateway, no order: refuse before anything is stored.
        await self.gateway_for(order["portfolio_id"], dal)
        async with dal.session() as s:
            verdict = await s.risk.evaluate(order, self.marks.marks)
            blocked = verdict.decision == "block"
            reason = "; ".join(b.message for b in verdict.breaches) or None
            row = await s.orders.place(
                order, status="REJECTED" if blocked else "NEW", reason=reason if blocked else None
            )
            if verdict.breaches:
                await s.risk.record_breach(verdict, row.portfolio_id, row.instrument_id, row.id)
            row = await s.orders.get(row.id)
            symbol = (await s.instruments.get(row.instrument_id)).symbol
            owner_zone = (await s.users.me()).timezone
        if verdict.breaches:
            word = "blocked" if blocked else "warning"
            await self.notify(
                dal.actor.user_id or 0,
                f"Risk {word} on order #{row.id} ({row.side} {row.quantity} {symbol}): {reason}",
            )
        if blocked:
            return row
        gateway = await self.gateway_for(row.portfolio_id, dal)
        gateway.timezone = owner_zone  # DAY orders end at the owner's midnight as of now (/tz)
        await gateway.place(_OrderForGateway(row, symbol))
        return row

    async def preview(self, dal: ScopedDal, order: dict[str, Any]) -> Any:
        """The risk verdict an order would get now (nothing is written)."""
        async with dal.session(readonly=True) as s:
            return await s.risk.evaluate(order, self.marks.marks)

    def hold(self, user_id: int, order: dict[str, Any]) -> str:
        """Keep an order waiting for its owner's confirmation; returns its token."""
        from dal.types import new_uid

        token = new_uid().replace("-", "")[:16]
        self._pending[token] = (user_id, order, time.monotonic())
        return token

    def release(self, user_id: int, token: str) -> dict[str, Any] | None:
        """The held order for ``token`` if it is this user's (each token works once)."""
        held = self._pending.get(token)
        if held is None or held[0] != user_id:
            return None
        del self._pending[token]
        if time.monotonic() - held[2] > CONFIRM_WITHIN:
            return None  # a stale Confirm must not place an order at today's prices
        return held[1]

    async def cancel_order(self, dal: ScopedDal, order_id: int) -> Any:
        """Ask the order's gateway to cancel it (the CANCELED event updates the order); an
        order of a portfolio without a gateway (trades recorded by hand) is canceled at once."""
        async with dal.session() as s:
            row = await s.orders.get(order_id)
            symbol = (await s.instruments.get(row.instrument_id)).symbol
            if row.status not in OPEN_STATUSES:
                raise Conflict(f"order #{row.id} is {row.status}; only open orders can be canceled")
            broker = await s.portfolios.broker_code(row.portfolio_id)
            if broker != "PAPER":
                return await s.orders.cancel(row.id, reason="canceled by its owner")
        gateway = await self.gateway_for(row.portfolio_id, dal)
        if not await gateway.cancel(_OrderForGateway(row, symbol)):
            async with dal.session() as s:  # the gateway does not hold it: settle it here
                return await s.orders.cancel(row.id, reason="canceled by its owner")
        return row

    # --- pumps ----------------------------------------------------------------------------------
    async def _pump_feed(self) -> None:
        async for bar in self.feed.stream(self.pace):
            await self.on_bar(bar)
            if self.lockstep:
                await self.settle()
        for run in list(self.runs.values()):
            run.queue.put_nowait(_END)
        self.feed_done.set()
        log.info("price feed ended")

    async def on_bar(self, bar: Bar) -> None:
        self.last_bar_time = bar.time
        self.marks.update(bar, self.instrument_ids.get(bar.symbol))
        for gateway in self.gateways.values():
            gateway.on_bar(bar)
        for run in list(self.runs.values()):
            run.queue.put_nowait(bar)
        for listener in self.bar_listeners:
            try:
                await listener(bar)
            except Exception:  # an alert check must never stop the feed
                log.exception("bar listener failed")

    async def _pump_events(self, portfolio_id: int, dal: ScopedDal, gateway: PaperGateway) -> None:
        async for event in gateway.events():
            try:
                await self._apply(dal, portfolio_id, event)
            except Exception:  # keep the stream alive whatever one event does
                log.exception("broker event %s failed", event)
            finally:
                gateway.event_done()

    async def _apply(self, dal: ScopedDal, portfolio_id: int, event: Any) -> None:
        try:
            row = await apply_event(dal, portfolio_id, event)
        except Exception:
            log.exception("could not apply broker event %s", event)
            return
        user_id = dal.actor.user_id or 0
        if isinstance(event, FillEvent):
            await self._route_fill(portfolio_id, event)
            what = f"{event.side} {event.quantity} {event.symbol} at {event.price}"
            order = f" (order #{row.order_id})" if row.order_id else ""
            await self.notify(user_id, f"Filled: {what}{order}")
            for listener in self.fill_listeners:
                try:
                    await listener(user_id, portfolio_id, event)
                except Exception:  # an alert check must never stop the event stream
                    log.exception("fill listener failed")
        elif event.status in ("REJECTED", "EXPIRED"):
            reason = f": {event.reason}" if event.reason else ""
            await self.notify(user_id, f"Order #{row.id} {event.status.lower()}{reason}")

    async def _route_fill(self, portfolio_id: int, event: FillEvent) -> None:
        for (_strategy_id, pid), run in list(self.runs.items()):
            if pid == portfolio_id:
                run.queue.put_nowait(event)

    async def idle(self) -> None:
        """Wait until every gateway's events are applied (tests, shutdown)."""
        for gateway in list(self.gateways.values()):
            await gateway.drained()

    async def settle(self) -> None:
        """Wait until the strategies have handled what they were given and the gateways'
        events (and the fills those routed back to strategies) are applied."""
        while True:
            await asyncio.gather(*(r.queue.join() for r in list(self.runs.values())))
            await self.idle()
            if not any(r.queue.qsize() for r in self.runs.values()):
                return


async def _portfolio(s: Any, portfolio_id: int | None) -> Any:
    """The given portfolio (owner-checked) or the user's current one."""
    return await s.portfolios.get(portfolio_id) if portfolio_id else await s.portfolios.current()


def _drain(queue: asyncio.Queue[Any]) -> None:
    """Mark everything left in a stopped strategy's queue as handled (lockstep never waits
    on a strategy that is gone)."""
    while not queue.empty():
        queue.get_nowait()
        queue.task_done()


class _OrderForGateway:
    """An orders row plus its symbol, as the gateways take it."""

    def __init__(self, row: Any, symbol: str) -> None:
        self._row = row
        self.symbol = symbol

    def __getattr__(self, name: str) -> Any:
        return getattr(self._row, name)
