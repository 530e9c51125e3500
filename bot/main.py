"""`tradebook run`: long-poll Telegram when a token is set, else console mode."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

from aiogram import Bot
from aiogram.client.session.base import BaseSession

from bot.app import announce_commands, build_bot, build_dispatcher
from bot.console import Console
from bot.scheduler import Scheduler
from dal.database import Database
from dal.scope import Actor
from tradebook.settings import Settings

log = logging.getLogger("tradebook")


async def _read_stdin_line() -> str:
    return await asyncio.to_thread(sys.stdin.readline)


async def run_console(settings: Settings, db: Database) -> int:
    console = Console(
        db,
        sys.stdout,
        Path("var") / "console",
        tuple(settings.admin_telegram_ids),
    )
    print(
        "tradebook console: type commands (/help); #n presses button n; Ctrl-D quits.", flush=True
    )

    async def scheduler(bot: Bot) -> None:
        await Scheduler(db, bot).run()

    return await console.run(_read_stdin_line, background=[scheduler])


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
    tasks: list[asyncio.Task[None]] = []

    async def on_startup() -> None:
        async with db.session(Actor.system()) as s:
            await s.users.bootstrap_admins(list(settings.admin_telegram_ids))
        await bot.delete_webhook(drop_pending_updates=False)
        await announce_commands(bot)
        tasks.append(asyncio.create_task(Scheduler(db, bot).run()))
        log.info("bot started")

    async def on_shutdown() -> None:
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
    try:
        if (
            settings.telegram_bot_token is not None
            and settings.telegram_bot_token.get_secret_value()
        ):
            return await run_telegram(settings, db)
        return await run_console(settings, db)
    finally:
        await db.dispose()
