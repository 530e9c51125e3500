"""Delivering messages to a user's chat: respects /mute, Telegram's rate limits and users who
blocked the bot (403 marks them unreachable instead of failing again and again).

Rate limits are honoured for every call the bot makes (``HonourRetryAfter``, a session
middleware ``build_bot`` installs): replies, notifications and scheduled reports alike wait
the ``retry_after`` Telegram asks for and are sent again, instead of being lost.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiogram import Bot
from aiogram.client.session.middlewares.base import (
    BaseRequestMiddleware,
    NextRequestMiddlewareType,
)
from aiogram.exceptions import TelegramForbiddenError, TelegramRetryAfter
from aiogram.methods import GetMe, GetUpdates, Response, TelegramMethod
from aiogram.methods.base import TelegramType

from bot.text import q
from dal.database import Database
from dal.scope import Actor
from dal.vocabulary import NotificationKind

log = logging.getLogger("tradebook.notify")
MAX_RETRY_AFTER = 60  # seconds; longer waits drop the message (logged) instead of piling up
RETRY_AFTER_ATTEMPTS = 3  # sends of one call at most (the first and two after waiting)


class HonourRetryAfter(BaseRequestMiddleware):
    """429 "retry after N s": wait N s and make the same call again (at most
    ``RETRY_AFTER_ATTEMPTS`` times, and only while N <= ``MAX_RETRY_AFTER``); then the
    ``TelegramRetryAfter`` reaches the caller. Long polling and getMe are left alone: they
    have their own back-off (aiogram's, and the start-up wait)."""

    async def __call__(
        self,
        make_request: NextRequestMiddlewareType[TelegramType],
        bot: Bot,
        method: TelegramMethod[TelegramType],
    ) -> Response[TelegramType]:
        for attempt in range(1, RETRY_AFTER_ATTEMPTS + 1):
            try:
                return await make_request(bot, method)
            except TelegramRetryAfter as exc:
                last = attempt == RETRY_AFTER_ATTEMPTS or exc.retry_after > MAX_RETRY_AFTER
                if last or isinstance(method, GetUpdates | GetMe):
                    raise
                log.info(
                    "Telegram asked to wait %s s before %s; sending it again then",
                    exc.retry_after,
                    method.__api_method__,
                )
                await asyncio.sleep(exc.retry_after)
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises


def chat_of(user: Any) -> int:
    """Where ``user``'s notifications and reports go."""
    return int(user.telegram_chat_id or user.telegram_user_id)


async def deliver(db: Database, user: Any, send: Callable[[int], Awaitable[object]]) -> bool:
    """``await send(chat_id)`` to ``user``'s chat unless it is unreachable; returns whether it
    was sent. A 403 (the user blocked the bot) marks the chat unreachable, so nothing is tried
    again until the user sends /start; a rate limit beyond what ``HonourRetryAfter`` waits for
    drops the message (logged)."""
    if user.unreachable_at is not None:
        return False
    try:
        await send(chat_of(user))
        return True
    except TelegramForbiddenError:  # 403: blocked by the user
        async with db.session(Actor.system()) as s:
            await s.users.set_reachable(user.id, False)
        log.info("user #%s blocked the bot; marked unreachable", user.id)
    except TelegramRetryAfter:
        log.warning("dropped a message to user #%s after rate limiting", user.id)
    return False


async def send_text(
    bot: Bot, db: Database, user: Any, text: str, *, html: bool = False, force: bool = False
) -> bool:
    """Send ``text`` (plain unless ``html``) to ``user``'s chat. Returns whether it was sent.
    ``force`` ignores /mute (replies the user asked for, like scheduled reports)."""
    if user.notifications_muted and not force:
        return False
    body = text if html else q(text)
    return await deliver(db, user, lambda chat: bot.send_message(chat, body))


def wants(user: Any, kind: NotificationKind) -> bool:
    """Whether the user keeps this kind of notification on (/notify)."""
    return bool(getattr(user, f"notify_{kind.value}"))


class Notifier:
    """``await notifier(user_id, text)``: tell a user something (a fill, a breach, an alert)."""

    def __init__(self, db: Database, bot: Bot) -> None:
        self.db = db
        self.bot = bot

    async def __call__(self, user_id: int, text: str, kind: NotificationKind) -> None:
        try:
            async with self.db.session(Actor.system(), readonly=True) as s:
                user = await s.users.find_by_id(user_id)
            if wants(user, kind):
                await send_text(self.bot, self.db, user, text)
        except Exception:
            log.warning("could not notify user #%s", user_id, exc_info=True)
