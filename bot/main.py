"""`tradebook run`: long-poll Telegram when a token is set, else console mode; the strategy
runtime runs in the same event loop unless TRADEBOOK_STRATEGIES=off."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import sys
from pathlib import Path

from aiogram import Bot
from aiogram.client.session.base import BaseSession

from bot.app import announce_commands, build_bot, build_dispatcher
from bot.console import Console
from bot.notify import Notifier
from bot.scheduler import Scheduler
from dal.database import Database
from dal.scope import Actor
from strategies.alerts import AlertEngine
from strategies.examples import REGISTRY
from strategies.feeds import CsvReplayFeed, PriceFeed, RandomWalkFeed
from strategies.paper_engine import PaperConfig
from strategies.runtime import Runtime
from tradebook.ops.jobs import run_scheduled_jobs
from tradebook.settings import Settings

log = logging.getLogger("tradebook")
DEFAULT_STRATEGY = "sma_cross"  # what `make run` starts for the local user in console mode


def build_runtime(settings: Settings, db: Database, bot: Bot) -> Runtime:
    """The runtime: price feed, paper gateways, strategies. TRADEBOOK_STRATEGIES=off only
    keeps console mode from starting the example strategy."""
    feed: PriceFeed = (
        RandomWalkFeed(interval=dt.timedelta(seconds=float(1 / settings.paper_speed)))
        if settings.paper_feed == "random"
        else CsvReplayFeed(Path(settings.paper_feed))
    )
    paper = PaperConfig(
        fee_bps=settings.paper_fee_bps,
        slippage_bps=settings.paper_slippage_bps,
        max_fill_quantity=settings.paper_max_fill_quantity,
    )

    notify = Notifier(db, bot)
    runtime = Runtime(db, feed, REGISTRY, notify, paper, pace=settings.paper_speed)
    AlertEngine(db, runtime, notify).attach()
    return runtime


async def _read_stdin_line() -> str:
    return await asyncio.to_thread(sys.stdin.readline)


async def run_console(settings: Settings, db: Database) -> int:
    console = Console(db, sys.stdout, Path("var") / "console", tuple(settings.admin_telegram_ids))
    runtime = build_runtime(settings, db, console.bot)
    console.dp["runtime"] = runtime
    print(
        "tradebook console: type commands (/help); #n presses button n; Ctrl-D quits.", flush=True
    )

    async def scheduler(bot: Bot) -> None:
        await Scheduler(db, bot).run()

    async def strategies(bot: Bot) -> None:
        await runtime.start(feed=False)
        if settings.strategies == "on":
            try:
                await runtime.start_strategy(console.local_actor(), DEFAULT_STRATEGY)
            except Exception as exc:
                print(f"could not start {DEFAULT_STRATEGY}: {exc}", flush=True)
        runtime.start_feed()
        try:
            await asyncio.Event().wait()
        finally:
            await runtime.stop()

    return await console.run(_read_stdin_line, background=[scheduler, strategies])


async def run_telegram(
    settings: Settings,
    db: Database,
    session: BaseSession | None = None,
    stop: asyncio.Event | None = None,
) -> int:
    """Long-poll Telegram until interrupted (or until ``stop`` is set: tests, embedding)."""
    assert settings.telegram_bot_token is not None
    bot = build_bot(settings.telegram_bot_token.get_secret_value(), session)
    dp = build_dispatcher(db)
    runtime = build_runtime(settings, db, bot)
    dp["runtime"] = runtime
    tasks: list[asyncio.Task[None]] = []

    async def on_startup() -> None:
        async with db.session(Actor.system()) as s:
            await s.users.bootstrap_admins(list(settings.admin_telegram_ids))
        await bot.delete_webhook(drop_pending_updates=False)
        await announce_commands(bot)
        tasks.append(asyncio.create_task(Scheduler(db, bot).run()))
        await runtime.start()
        log.info("bot started")

    async def on_shutdown() -> None:
        await runtime.stop()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    dp.startup.register(on_startup)
    dp.shutdown.register(on_shutdown)
    if stop is None:
        await dp.start_polling(bot)
        return 0
    polling = asyncio.create_task(dp.start_polling(bot, handle_signals=False))
    await stop.wait()
    await dp.stop_polling()
    await polling
    return 0


async def run(settings: Settings) -> int:
    db = Database.from_settings(settings)
    # Backups and maintenance on their schedules (settings), in the same event loop.
    jobs = asyncio.create_task(run_scheduled_jobs(settings, db))
    try:
        token = settings.telegram_bot_token
        if token is not None and token.get_secret_value():
            return await run_telegram(settings, db)
        return await run_console(settings, db)
    finally:
        jobs.cancel()
        await asyncio.gather(jobs, return_exceptions=True)
        await db.dispose()
