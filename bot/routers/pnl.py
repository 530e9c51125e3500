"""/pnl [period] [portfolio]: realized PnL per currency, fees, trades, and a chart."""

from __future__ import annotations

from aiogram import Bot, Router
from aiogram.filters import Command, CommandObject
from aiogram.types import Message

from bot.middleware import UserRow
from bot.reports import pnl_report, send_reply
from bot.routers.common import args_of, period_and_portfolio
from dal.database import ScopedDal


def router() -> Router:
    r = Router(name="pnl")

    @r.message(Command("pnl", ignore_case=True))
    async def pnl(
        message: Message, command: CommandObject, dal: ScopedDal, user: UserRow, bot: Bot
    ) -> None:
        period, _, portfolio = await period_and_portfolio(
            dal, args_of(command), user.timezone, "pnl", "today"
        )
        reply = await pnl_report(dal, portfolio, period, user.timezone)
        await send_reply(bot, message.chat.id, reply)

    return r
