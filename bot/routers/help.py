"""/help: the commands this user may use."""

from __future__ import annotations

from typing import Any

from aiogram import Router
from aiogram.filters import Command
from aiogram.types import Message

from bot.commands import help_text


def router() -> Router:
    r = Router(name="help")

    @r.message(Command("help"))
    async def help_(message: Message, user: Any) -> None:
        await message.answer(help_text(bool(user.is_admin)))

    return r
