"""/help: the commands this user may use."""

from __future__ import annotations

from aiogram import Router
from aiogram.filters import Command
from aiogram.types import Message

from bot.commands import help_text
from bot.middleware import UserRow


def router() -> Router:
    r = Router(name="help")

    @r.message(Command("help", ignore_case=True))
    async def help_(message: Message, user: UserRow) -> None:
        await message.answer(help_text(bool(user.is_admin)))

    return r
