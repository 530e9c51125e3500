"""The composition root: everything a running tradebook is made of, wired in one place.

``build_trading`` puts the trading side together — market data (the feed and its marks), the
order desk with a gateway per broker, the strategy runtime and the alert engine — for either
front; ``run`` (what `tradebook run` calls) starts the scheduled database jobs, the trading
side and the front the settings ask for: Telegram when a bot token is set, else the console.
Nothing else constructs these pieces.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import gc
import logging
import signal
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from aiogram import Bot, Dispatcher
from aiogram.client.session.base import BaseSession

from bot.app import announce_commands, build_bot, build_dispatcher
from bot.confirmations import Confirmations
from bot.console import Console
from bot.notify import Notifier as ChatNotifier
from bot.scheduler import Scheduler
from dal.balances import Terms
from dal.database import Database
from dal.scope import Actor
from strategies.alerts import AlertEngine
from strategies.base import Strategy
from strategies.examples import REGISTRY
from strategies.runtime import StrategyRuntime
from tradebook.ops.jobs import run_scheduled_jobs
from tradebook.settings import Settings
from trading.desk import AccountCheck, GatewayFactory, OrderDesk
from trading.desk import Notify as Notifier
from trading.events import OrderGateway
from trading.feeds import CsvReplayFeed, PriceFeed, RandomWalkFeed, market_data_setting
from trading.market import Bar, Market
from trading.paper import PaperGateway
from trading.paper_engine import PaperConfig

log = logging.getLogger("tradebook")
SAVE_MARKS_EVERY_S = 10.0
# Each snapshot rewrites the owner's current day, so the day keeps its last one: its close.
EQUITY_SNAPSHOT_EVERY_S = 900.0
DEFAULT_STRATEGY = "sma_cross"  # what `make run` starts for the local user in console mode


@dataclass
class Trading:
    """The trading side of a running tradebook."""

    db: Database
    feed: PriceFeed
    market: Market
    desk: OrderDesk
    strategies: StrategyRuntime
    alerts: AlertEngine
    # Paced: steps come ``feed.interval`` apart (running); unpaced: as fast as they are taken.
    paced: bool = True
    # Lockstep: the next bar waits until every strategy has handled this one and every broker
    # event is applied (tests and backtests).
    lockstep: bool = False
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def start(self, feed: bool = True) -> None:
        """The feed's instruments (created if new), the desk (gateways for open orders), the
        strategies that were running, then (unless ``feed=False``) the feed."""
        async with self.db.session(Actor.system()) as s:
            for inst in self.feed.instruments:
                row = await s.instruments.ensure(inst.__dict__)
                self.market.instrument_ids[inst.symbol] = row.id
            real = getattr(self.feed, "prices_of", None)  # real prices: that exchange's too
            if real is not None:
                self.market.priced_exchange = real
                for row in await s.instruments.list():
                    if row.symbol in self.market.instrument_ids:
                        self.market.alias(row.symbol, row.id, row.exchange)
        self.market.stale_since = lambda: getattr(self.feed, "stale_since", None)
        await self.desk.start()
        await self.strategies.start()
        self.alerts.attach()
        if feed:
            self.start_feed()

    def start_feed(self) -> None:
        self._tasks.append(asyncio.create_task(self._pump(), name="feed"))
        if self.paced:
            self._tasks.append(asyncio.create_task(self._keep_marks(), name="marks"))

    async def stop(self) -> None:
        """Stop the feed, the strategies and the desk; the latest marks are saved."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        await self.strategies.stop()
        await self.desk.stop()
        await self.save_marks()
        await self.snapshot_equity()

    async def on_bar(self, bar: Bar) -> None:
        """One bar through everything (the feed does this; tests hand bars in)."""
        await self.market.on_bar(bar)
        if self.lockstep:
            await self.settle()

    async def settle(self) -> None:
        await self.strategies.settle()

    async def _pump(self) -> None:
        async for bar in self.feed.stream(self.paced):
            await self.on_bar(bar)
        log.info("price feed ended")
        self.market.ended.set()
        self.strategies.price_data_ended()

    async def _keep_marks(self) -> None:
        loop = asyncio.get_running_loop()
        snapshot_at = loop.time()  # the first equity snapshot once marks have settled
        while True:
            await asyncio.sleep(SAVE_MARKS_EVERY_S)
            await self.save_marks()
            if loop.time() >= snapshot_at:
                await self.snapshot_equity()
                snapshot_at = loop.time() + EQUITY_SNAPSHOT_EVERY_S

    async def snapshot_equity(self) -> None:
        """Every live portfolio's equity at the feed's marks, for today (owners' days)."""
        marks = self.market.marks.marks
        if not marks:
            return
        try:
            async with self.db.session(Actor.system()) as s:
                count = await s.equity.snapshot_all(dt.datetime.now(dt.UTC), dict(marks))
            log.info("equity snapshot of %s portfolio(s)", count)
        except Exception:  # retried at the next interval; a missing day only thins the curve
            log.warning("could not take the equity snapshot", exc_info=True)

    async def save_marks(self) -> None:
        marks = self.market.marks.marks
        if not marks or self.market.last_bar_time is None:
            return
        try:
            async with self.db.session(Actor.system()) as s:
                await s.marks.save(dict(marks), self.market.last_bar_time)
        except Exception:  # the marks are a convenience for the next start, never fatal
            log.warning("could not save the latest marks", exc_info=True)


def build_trading(
    db: Database,
    notify: Notifier,
    feed: PriceFeed,
    registry: Mapping[str, type[Strategy]],
    paper: PaperConfig,
    *,
    paced: bool = True,
    lockstep: bool = False,
    alert_cooldown_s: float = 0.0,
    exchanges: ExchangeSettings | None = None,
) -> Trading:
    market = Market()
    factories = gateway_factories(paper, market)
    checks: dict[str, AccountCheck] = {}
    if exchanges is not None:
        factories["BINANCE"], checks["BINANCE"] = binance_entry(db, notify, exchanges)
    desk = OrderDesk(db, market, notify, factories, terms=paper_terms(paper), account_checks=checks)
    strategies = StrategyRuntime(db, market, desk, registry, notify)
    alerts = AlertEngine(db, market, desk, notify, cooldown_s=alert_cooldown_s)
    return Trading(db, feed, market, desk, strategies, alerts, paced, lockstep)


@dataclass(frozen=True)
class ExchangeSettings:
    """Where exchange accounts find their keys and their exchange."""

    secrets_dir: Path
    binance_base_url: str | None = None
    reconcile_every_s: float = 60.0


def binance_entry(
    db: Database, notify: Notifier, exchanges: ExchangeSettings
) -> tuple[GatewayFactory, AccountCheck]:
    """Binance's gateway factory and key check. ccxt (≈ 70 MB resident) is imported when a
    Binance account is first used, not by every bot that has none."""

    def factory(portfolio: sa.Row[Any], account: sa.Row[Any]) -> OrderGateway:
        from trading.binance_gateway import binance_gateways

        make = binance_gateways(
            db,
            notify,
            exchanges.secrets_dir,
            exchanges.binance_base_url,
            reconcile_every_s=exchanges.reconcile_every_s,
        )
        return make(portfolio, account)

    async def check(account: sa.Row[Any]) -> str:
        from trading.binance_client import binance_account_check

        return await binance_account_check(exchanges.secrets_dir, exchanges.binance_base_url)(
            account
        )

    return factory, check


def gateway_factories(paper: PaperConfig, market: Market) -> dict[str, GatewayFactory]:
    """The paper gateway (brokers.code → factory); exchanges are added by ``build_trading``."""

    def paper_gateway(portfolio: sa.Row[Any], account: sa.Row[Any]) -> OrderGateway:
        return PaperGateway(paper, market, currency=account.base_currency)

    return {"PAPER": paper_gateway}


def paper_terms(paper: PaperConfig) -> Terms:
    """What a paper BUY reserves beyond its price: the paper broker's fee and slippage."""
    return Terms(fee_rate=paper.fee_bps / 10000, slippage=paper.slippage_bps / 10000)


def paper_config(settings: Settings) -> PaperConfig:
    return PaperConfig(
        fee_bps=settings.paper_fee_bps,
        slippage_bps=settings.paper_slippage_bps,
        max_fill_quantity=settings.paper_max_fill_quantity,
    )


async def build_feed(settings: Settings, db: Database) -> PriceFeed:
    """The configured feed; the random walk continues from the last stored marks."""
    interval = dt.timedelta(seconds=float(1 / settings.paper_speed))
    kind, path = market_data_setting(settings.market_data or "random")
    if settings.market_data is None and settings.paper_feed != "random":
        kind, path = "csv", settings.paper_feed
    if kind == "csv":
        return CsvReplayFeed(Path(path or ""), interval=interval)
    if kind == "binance":
        from trading.binance_feed import BinanceFeed  # ccxt: only when Binance is used

        feed = BinanceFeed(settings.market_symbols, base_url=settings.binance_base_url)
        await feed.load()  # exchange info and the warm-up minutes
        return feed
    return RandomWalkFeed(interval=interval, seed=None, start_prices=await stored_prices(db))


async def stored_prices(db: Database) -> dict[str, Decimal]:
    async with db.session(Actor.system(), readonly=True) as s:
        return {row.symbol: row.price for row in await s.marks.latest()}


# --- the fronts ---------------------------------------------------------------------------------
async def trading_for(settings: Settings, db: Database, bot: Bot) -> Trading:
    return build_trading(
        db,
        ChatNotifier(db, bot),
        await build_feed(settings, db),
        REGISTRY,
        paper_config(settings),
        alert_cooldown_s=settings.alert_cooldown_seconds,
        exchanges=ExchangeSettings(
            settings.secrets_dir,
            settings.binance_base_url,
            float(settings.binance_reconcile_seconds),
        ),
    )


def handler_data(trading: Trading) -> dict[str, Any]:
    """What the bot's handlers get injected besides their user-scoped DAL."""
    return {
        "desk": trading.desk,
        "strategies": trading.strategies,
        "confirmations": Confirmations(),
    }


async def _read_stdin_line() -> str:
    return await asyncio.to_thread(sys.stdin.readline)


async def run_console(settings: Settings, db: Database) -> int:
    console = Console(db, sys.stdout, Path("var") / "console", tuple(settings.admin_telegram_ids))
    trading = await trading_for(settings, db, console.bot)
    console.dp.workflow_data.update(handler_data(trading))
    print(
        "tradebook console: type commands (/help); #n presses button n; Ctrl-D quits.", flush=True
    )

    async def scheduler(bot: Bot) -> None:
        await Scheduler(db, bot).run()

    async def run_trading(bot: Bot) -> None:
        await trading.start(feed=False)
        if settings.strategies == "on":
            try:
                await trading.strategies.start_strategy(console.local_actor(), DEFAULT_STRATEGY)
            except Exception as exc:
                print(f"could not start {DEFAULT_STRATEGY}: {exc}", flush=True)
        trading.start_feed()
        try:
            await asyncio.Event().wait()
        finally:
            await trading.stop()

    return await console.run(_read_stdin_line, background=[scheduler, run_trading])


async def run_telegram(
    settings: Settings,
    db: Database,
    session: BaseSession | None = None,
    stop: asyncio.Event | None = None,
    retry_pause_s: float = 1.0,
) -> int:
    """Long-poll Telegram until SIGTERM or SIGINT (or until ``stop`` is set: tests, embedding;
    signals are then left alone). While Telegram cannot be reached at start-up it waits and
    tries again (1 s, doubling to a minute) instead of exiting: under a restart policy an exit
    would become a crash loop. The signals are handled from the start, so a SIGTERM during
    that wait ends it as cleanly (exit 0) as one while polling."""
    if stop is not None:
        return await _run_telegram(settings, db, session, stop, retry_pause_s)
    stop = asyncio.Event()
    with _stopped_by_signals(stop):
        return await _run_telegram(settings, db, session, stop, retry_pause_s)


async def _run_telegram(
    settings: Settings,
    db: Database,
    session: BaseSession | None,
    stop: asyncio.Event,
    retry_pause_s: float,
) -> int:
    assert settings.telegram_bot_token is not None
    bot = build_bot(
        settings.telegram_bot_token.get_secret_value(), session or api_session(settings)
    )
    try:
        trading = await trading_for(settings, db, bot)
        dp = build_dispatcher(db, **handler_data(trading))
        tasks: list[asyncio.Task[None]] = []

        async def on_startup() -> None:
            async with db.session(Actor.system()) as s:
                await s.users.bootstrap_admins(list(settings.admin_telegram_ids))
            await bot.delete_webhook(drop_pending_updates=False)
            await announce_commands(bot)
            tasks.append(asyncio.create_task(Scheduler(db, bot).run()))
            await trading.start()
            log.info("bot started")

        async def on_shutdown() -> None:
            await trading.stop()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        dp.startup.register(on_startup)
        dp.shutdown.register(on_shutdown)
        if not await until_telegram_answers(bot, stop, retry_pause_s):
            return 0  # stopped while Telegram was still unreachable
        polling = asyncio.create_task(dp.start_polling(bot, handle_signals=False))
        stopping = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({polling, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        await _stop_polling(dp, polling)
        return 0
    finally:
        await bot.session.close()  # polling closes it too; on the other ways out it is open


async def _stop_polling(dp: Dispatcher, polling: asyncio.Task[None]) -> None:
    """Stop ``polling`` however far it got (not begun yet, starting up, polling), then wait
    for it; what it raised is raised here."""
    while not polling.done():
        stopper = asyncio.ensure_future(dp.stop_polling())
        await asyncio.wait({stopper, polling}, return_when=asyncio.FIRST_COMPLETED)
        if not stopper.done():
            stopper.cancel()  # polling ended by itself (its start-up failed)
        elif stopper.exception() is not None:  # RuntimeError: polling has not begun yet
            await asyncio.sleep(0.01)
        else:
            break
    await polling


@contextlib.contextmanager
def _stopped_by_signals(stop: asyncio.Event) -> Iterator[None]:
    """Inside, SIGTERM and SIGINT set ``stop`` instead of ending the process at once."""
    loop = asyncio.get_running_loop()
    handled = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):  # no signal handlers on Windows
            loop.add_signal_handler(sig, _on_signal, sig, stop)
            handled.append(sig)
    try:
        yield
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)


def _on_signal(sig: signal.Signals, stop: asyncio.Event) -> None:
    log.info("received %s: stopping", sig.name)
    stop.set()


def api_session(settings: Settings) -> BaseSession | None:
    """An aiohttp session to the Bot API server ``TRADEBOOK_TELEGRAM_API_URL`` names (None:
    aiogram's default, Telegram's own)."""
    if settings.telegram_api_url is None:
        return None
    from aiogram.client.session.aiohttp import AiohttpSession
    from aiogram.client.telegram import TelegramAPIServer

    return AiohttpSession(api=TelegramAPIServer.from_base(settings.telegram_api_url))


TELEGRAM_RETRY_MAX_S = 60.0


async def until_telegram_answers(bot: Bot, stop: asyncio.Event, first_pause_s: float) -> bool:
    """Ask Telegram who the bot is until it answers (True) or ``stop`` is set (False). An
    invalid token is not retried: it raises."""
    from aiogram.exceptions import (
        ClientDecodeError,
        TelegramNetworkError,
        TelegramRetryAfter,
        TelegramServerError,
    )

    unreachable = (
        TelegramNetworkError,
        TelegramServerError,
        TelegramRetryAfter,
        ClientDecodeError,  # not JSON: e.g. a proxy's HTML "502 Bad Gateway" page
        OSError,
    )
    pause = first_pause_s
    while not stop.is_set():
        try:
            await bot.get_me()
            return True
        except unreachable as exc:
            wait = exc.retry_after if isinstance(exc, TelegramRetryAfter) else pause
            reason = " ".join(str(exc).split())[:200]
            log.warning("Telegram is not reachable (%s); trying again in %.0f s", reason, wait)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)
            pause = min(pause * 2, TELEGRAM_RETRY_MAX_S)
    return False


async def run(settings: Settings) -> int:
    """`tradebook run`: long-poll Telegram when a token is set, else console mode; trading
    runs in the same event loop, and so do backups and maintenance on their schedules."""
    # Everything imported so far lives as long as the process: the garbage collector's full
    # passes need not walk it again each time (they held the event loop, docs/performance.md).
    gc.freeze()
    db = Database.from_settings(settings)
    jobs = asyncio.create_task(run_scheduled_jobs(settings, db))
    beat = asyncio.create_task(heartbeat(settings.heartbeat_file))
    try:
        token = settings.telegram_bot_token
        if token is not None and token.get_secret_value():
            return await run_telegram(settings, db)
        return await run_console(settings, db)
    finally:
        for task in (jobs, beat):
            task.cancel()
        await asyncio.gather(jobs, beat, return_exceptions=True)
        await db.dispose()


HEARTBEAT_EVERY_S = 15.0
HEARTBEAT_STALE_S = 60.0  # `tradebook health` fails when the last beat is older


async def heartbeat(path: Path) -> None:
    """Write the time to ``path`` while the event loop runs: `tradebook health` (the
    container's healthcheck) reads it, so a stuck loop reads as unhealthy too."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        path.write_text(dt.datetime.now(dt.UTC).isoformat())
        await asyncio.sleep(HEARTBEAT_EVERY_S)


def health(path: Path, now: dt.datetime | None = None) -> str | None:
    """None when the running bot beat recently, else why not (one line)."""
    try:
        beat = dt.datetime.fromisoformat(path.read_text().strip())
    except (OSError, ValueError):
        return f"no heartbeat at {path}: tradebook is not running here"
    age = ((now or dt.datetime.now(dt.UTC)) - beat).total_seconds()
    if age > HEARTBEAT_STALE_S:
        return f"the last heartbeat is {age:.0f} s old: tradebook is stuck or stopped"
    return None
