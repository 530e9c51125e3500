"""Delivering messages to a user's chat: respects /mute, Telegram's rate limits and users who
blocked the bot (403 marks them unreachable instead of failing again and again)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiogram import Bot
from aiogram.exceptions import TelegramForbiddenError, TelegramRetryAfter

from bot.text import q
from dal.database import Database
from dal.scope import Actor
from dal.vocabulary import NotificationKind

log = logging.getLogger("tradebook.notify")
MAX_RETRY_AFTER = 60  # seconds; longer waits drop the message (logged) instead of piling up


async def send_text(
    bot: Bot, db: Database, user: Any, text: str, *, html: bool = False, force: bool = False
) -> bool:
    """Send ``text`` (plain unless ``html``) to ``user``'s chat. Returns whether it was sent.
    ``force`` ignores /mute (replies the user asked for, like scheduled reports)."""
    if user.unreachable_at is not None or (user.notifications_muted and not force):
        return False
    chat = user.telegram_chat_id or int(user.telegram_user_id)
    body = text if html else q(text)
    for _attempt in range(3):
        try:
            await bot.send_message(chat, body)
            return True
        except TelegramRetryAfter as exc:  # 429: wait as told, then try again
            if exc.retry_after > MAX_RETRY_AFTER:
                break
            await asyncio.sleep(exc.retry_after)
        except TelegramForbiddenError:  # 403: blocked by the user
            async with db.session(Actor.system()) as s:
                await s.users.set_reachable(user.id, False)
            log.info("user #%s blocked the bot; marked unreachable", user.id)
            return False
    log.warning("dropped a message to user #%s after rate limiting", user.id)
    return False


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
