"""Build the Dispatcher (routers, middleware, error handling) and the Bot."""

from __future__ import annotations

import contextlib
import logging
import uuid
from typing import Any

from aiogram import Bot, Dispatcher
from aiogram.client.default import DefaultBotProperties
from aiogram.client.session.base import BaseSession
from aiogram.enums import ParseMode
from aiogram.methods import (
    AnswerCallbackQuery,
    EditMessageText,
    Response,
    SendDocument,
    SendMessage,
    SendPhoto,
)
from aiogram.types import ErrorEvent

from bot.commands import bot_commands
from bot.middleware import UserScopeMiddleware
from bot.notify import HonourRetryAfter
from bot.routers import (
    account,
    admin,
    alerts,
    configure,
    exports,
    fallback,
    help,
    orders,
    pnl,
    portfolios,
    positions,
    risk,
    start,
    strategies,
    trade,
)
from bot.routers.common import UsageError
from bot.text import q
from dal.database import Database
from dal.errors import TradebookError

log = logging.getLogger("tradebook.bot")

# aiogram reads every Bot API answer as ``Response[<the method's result type>]``, a generic
# pydantic class that pydantic caches only weakly: in the running bot the garbage collector
# frees it every so often, and the next answer builds it again, validator and all, which
# costs more than the rest of the command. Held here for the calls every command makes.
_ANSWER_TYPES = tuple(
    Response[method.__returning__]  # type: ignore[name-defined]  # a class made at run time
    for method in (SendMessage, SendPhoto, SendDocument, AnswerCallbackQuery, EditMessageText)
)


def build_dispatcher(db: Database, **workflow_data: Any) -> Dispatcher:
    """A new Dispatcher with fresh routers (a router can belong to one Dispatcher only)."""
    dp = Dispatcher(**workflow_data)
    dp.update.outer_middleware(UserScopeMiddleware(db))
    dp.include_router(start.router(db))
    for feature in (
        help,
        admin,
        portfolios,
        orders,
        positions,
        pnl,
        account,
        risk,
        alerts,
        trade,
        configure,
        exports,
        strategies,
        fallback,
    ):
        dp.include_router(feature.router())
    dp.errors.register(_on_error)
    return dp


async def _on_error(event: ErrorEvent, **data: Any) -> bool:
    """DAL and usage errors are the user's to read; anything else is logged with a reference
    the user can quote."""
    exc = event.exception
    update = event.update
    target = update.message or (update.callback_query.message if update.callback_query else None)
    if isinstance(exc, UsageError):
        text = exc.reply()
    elif isinstance(exc, TradebookError):
        text = f"⚠️ {exc}"
    else:
        ref = uuid.uuid4().hex[:8]
        log.error(
            "unhandled error (ref %s) in update %s",
            ref,
            update.update_id,
            exc_info=exc,
            extra={"correlation_id": f"u{update.update_id}", "ref": ref},
        )
        text = f"Something went wrong (ref {ref})."
    text = shortened(text)
    try:
        if update.callback_query is not None:
            await update.callback_query.answer(text[:200], show_alert=True)  # plain text
        elif target is not None:
            await target.answer(q(text))
    except Exception:  # the reply itself failed: a short one, never silence
        log.warning("the error reply failed; sending the short one", exc_info=True)
        if target is not None:
            with contextlib.suppress(Exception):
                await target.answer("That did not work, and the reason could not be shown.")
    return True


ERROR_REPLY_LIMIT = 1000  # characters: a reply quotes at most a short part of the input


def shortened(text: str, limit: int = ERROR_REPLY_LIMIT) -> str:
    """An error reply within ``limit`` characters: each line that echoes a long argument is
    cut (with "…"), so a 10 kB argument never makes the reply too long to send."""
    lines = [line if len(line) <= 300 else line[:299] + "…" for line in text.splitlines()]
    joined = "\n".join(lines)
    return joined if len(joined) <= limit else joined[: limit - 1] + "…"


def build_bot(token: str, session: BaseSession | None = None) -> Bot:
    """A Bot on ``session`` (None: aiohttp to Telegram) that waits out Telegram's rate limits
    (``HonourRetryAfter``) instead of losing the message."""
    bot = Bot(
        token,
        session=session,
        default=DefaultBotProperties(parse_mode=ParseMode.HTML),
    )
    if not any(isinstance(m, HonourRetryAfter) for m in bot.session.middleware):
        bot.session.middleware(HonourRetryAfter())
    return bot


async def announce_commands(bot: Bot) -> None:
    await bot.set_my_commands(bot_commands())
