"""/positions [portfolio]."""

from __future__ import annotations

from aiogram import Bot, Router
from aiogram.filters import Command, CommandObject
from aiogram.types import Message

from bot.reports import positions_report, send_reply
from bot.routers.common import name_of, resolve_portfolio
from dal.database import ScopedDal


def router() -> Router:
    r = Router(name="positions")

    @r.message(Command("positions", ignore_case=True))
    async def positions(message: Message, command: CommandObject, dal: ScopedDal, bot: Bot) -> None:
        portfolio = await resolve_portfolio(dal, name_of(command))
        await send_reply(bot, message.chat.id, await positions_report(dal, portfolio))

    return r
