"""/risk [portfolio]: policies in effect and the latest breaches."""

from __future__ import annotations

from aiogram import Bot, Router
from aiogram.filters import Command, CommandObject
from aiogram.types import Message

from bot.middleware import UserRow
from bot.reports import risk_report, send_reply
from bot.routers.common import name_of, resolve_portfolio
from dal.database import ScopedDal


def router() -> Router:
    r = Router(name="risk")

    @r.message(Command("risk", ignore_case=True))
    async def risk(
        message: Message, command: CommandObject, dal: ScopedDal, user: UserRow, bot: Bot
    ) -> None:
        portfolio = await resolve_portfolio(dal, name_of(command))
        await send_reply(bot, message.chat.id, await risk_report(dal, portfolio, user.timezone))

    return r
