"""/start registers the sender (pending) and asks the admins for approval.

The handler gets ``registration``, injected by this router's middleware: it registers exactly
the sender of the update and lists the admins to ask, nothing else. No handler gets the
database itself.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiogram import BaseMiddleware, Bot, Router
from aiogram.exceptions import TelegramAPIError
from aiogram.filters import CommandStart
from aiogram.types import Message, TelegramObject
from aiogram.utils.keyboard import InlineKeyboardBuilder

from bot.callbacks import ApproveUser
from bot.middleware import WAITING, UserRow
from bot.text import q
from dal.database import Database
from dal.scope import Actor

log = logging.getLogger("tradebook.bot")


class Registration:
    """Registers the sender of one /start: their own Telegram id and chat, nobody else's."""

    def __init__(self, db: Database, message: Message) -> None:
        self._db = db
        self._message = message

    async def register_sender(self) -> tuple[Any, list[Any]]:
        """The sender's users row (created pending, or refreshed) and, for a new user, the
        admins to ask."""
        sender = self._message.from_user
        assert sender is not None  # the user-scope middleware drops updates without one
        async with self._db.session(Actor.system()) as s:
            known = await s.users.lookup(sender.id)
            row = await s.users.register(sender.id, sender.username, chat_id=self._message.chat.id)
            admins = await s.users.admins() if known is None else []
        return row, admins


class RegistrationMiddleware(BaseMiddleware):
    def __init__(self, db: Database) -> None:
        self.db = db

    async def __call__(
        self,
        handler: Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]],
        event: TelegramObject,
        data: dict[str, Any],
    ) -> Any:
        if isinstance(event, Message):
            data["registration"] = Registration(self.db, event)
        return await handler(event, data)


def router(db: Database) -> Router:
    r = Router(name="start")
    r.message.middleware(RegistrationMiddleware(db))

    @r.message(CommandStart(ignore_case=True))
    async def start(
        message: Message, bot: Bot, registration: Registration, user: UserRow | None
    ) -> None:
        sender = message.from_user
        assert sender is not None
        row, admins = await registration.register_sender()
        if row.approved_at is not None and row.is_active:
            await message.answer(
                f"Welcome back, {q(sender.first_name)}. Send /help for the commands."
            )
            return
        await message.answer(WAITING if user is not None else f"Registered. {WAITING}")
        name = f"@{sender.username}" if sender.username else sender.first_name
        keyboard = InlineKeyboardBuilder()
        for action in ("approve", "reject"):
            keyboard.button(
                text=action.capitalize(),
                callback_data=ApproveUser(action=action, telegram_id=sender.id),
            )
        for admin in admins:
            try:
                await bot.send_message(
                    admin.telegram_chat_id or int(admin.telegram_user_id),
                    f"New user {q(name)} (id {sender.id}) is waiting for approval.",
                    reply_markup=keyboard.as_markup(),
                )
            except TelegramAPIError as exc:  # one unreachable admin must not stop the rest
                log.warning("could not notify admin %s: %s", admin.id, exc)

    return r
