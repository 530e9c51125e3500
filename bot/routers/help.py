"""/help: the commands this user may use."""

from __future__ import annotations

from aiogram import Router
from aiogram.filters import Command
from aiogram.types import Message

from bot.commands import help_text
from bot.middleware import UserRow
from bot.text import join_blocks


def router() -> Router:
    r = Router(name="help")

    @r.message(Command("help", ignore_case=True))
    async def help_(message: Message, user: UserRow) -> None:
        # Split at 4,096 characters, between commands, never inside one.
        lines = help_text(bool(user.is_admin)).split("\n")
        for text in join_blocks(lines, separator="\n"):
            await message.answer(text)

    return r
