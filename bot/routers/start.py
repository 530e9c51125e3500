"""/start registers a Telegram user (pending) and asks the admins for approval."""

from __future__ import annotations

import logging

from aiogram import Bot, Router
from aiogram.exceptions import TelegramAPIError
from aiogram.filters import CommandStart
from aiogram.types import Message
from aiogram.utils.keyboard import InlineKeyboardBuilder

from bot.callbacks import ApproveUser
from bot.middleware import WAITING, UserRow
from bot.text import q
from dal.database import Database
from dal.scope import Actor

log = logging.getLogger("tradebook.bot")


def router() -> Router:
    r = Router(name="start")

    @r.message(CommandStart())
    async def start(message: Message, bot: Bot, db: Database, user: UserRow | None) -> None:
        sender = message.from_user
        assert sender is not None
        async with db.session(Actor.system()) as s:
            row = await s.users.register(sender.id, sender.username, chat_id=message.chat.id)
            admins = await s.users.admins() if user is None else []
        if row.approved_at is not None and row.is_active:
            await message.answer(
                f"Welcome back, {q(sender.first_name)}. Send /help for the commands."
            )
            return
        await message.answer(WAITING if user is not None else f"Registered. {WAITING}")
        name = f"@{sender.username}" if sender.username else sender.first_name
        keyboard = InlineKeyboardBuilder()
        keyboard.button(
            text="Approve", callback_data=ApproveUser(action="approve", telegram_id=sender.id)
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
