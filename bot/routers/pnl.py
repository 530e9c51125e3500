"""/pnl [period] [portfolio]: realized PnL per currency, fees, trades, and a chart."""

from __future__ import annotations

import datetime as dt

from aiogram import Bot, Router
from aiogram.filters import Command, CommandObject
from aiogram.types import Message

from bot.middleware import UserRow
from bot.reports import pnl_report, send_reply
from bot.routers.common import UsageError, args_of, resolve_portfolio
from dal.database import ScopedDal
from dal.errors import NotFound
from dal.periods import PeriodError, parse_period


async def has_portfolio(dal: ScopedDal, name: str) -> bool:
    try:
        await dal.portfolios.by_name(name)
    except NotFound:
        return False
    return True


def router() -> Router:
    r = Router(name="pnl")

    @r.message(Command("pnl", ignore_case=True))
    async def pnl(
        message: Message, command: CommandObject, dal: ScopedDal, user: UserRow, bot: Bot
    ) -> None:
        args = args_of(command)
        now = dt.datetime.now(dt.UTC)
        try:
            period, name = parse_period(args[0] if args else None, user.timezone, now), args[1:]
        except PeriodError as exc:
            # "/pnl Main": no period given, the whole argument is a portfolio name.
            period, name = parse_period(None, user.timezone, now), args
            if not await has_portfolio(dal, " ".join(args)):
                raise UsageError("pnl", str(exc)) from None
        portfolio = await resolve_portfolio(dal, " ".join(name) or None)
        reply = await pnl_report(dal, portfolio, period, user.timezone)
        await send_reply(bot, message.chat.id, reply)

    return r
