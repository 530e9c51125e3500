"""/export trades|orders|pnl [period]: a CSV document for accounting."""

from __future__ import annotations

import datetime as dt

from aiogram import Router
from aiogram.filters import Command, CommandObject
from aiogram.types import BufferedInputFile, Message

from bot.middleware import UserRow
from bot.routers.common import UsageError, args_of
from bot.text import q
from dal.database import ScopedDal
from dal.periods import PeriodError, parse_period
from tradebook.exports import KINDS, export_csv


def router() -> Router:
    r = Router(name="exports")

    @r.message(Command("export", ignore_case=True))
    async def export(
        message: Message, command: CommandObject, dal: ScopedDal, user: UserRow
    ) -> None:
        args = args_of(command)
        if not 1 <= len(args) <= 2 or args[0].lower() not in KINDS:
            raise UsageError("export")
        kind = args[0].lower()
        try:
            period = parse_period(
                args[1] if len(args) == 2 else "all", user.timezone, dt.datetime.now(dt.UTC)
            )
        except PeriodError as exc:
            raise UsageError("export", str(exc)) from None
        portfolio = await dal.portfolios.current()
        text = await export_csv(dal, kind, portfolio, period.since, period.until, user.timezone)
        rows = text.count("\n") - 1
        filename = f"{kind}-{portfolio.name}-{period.label}.csv".replace(" ", "_")
        await message.answer_document(
            BufferedInputFile(text.encode(), filename=filename),
            caption=f"{q(kind.capitalize())} of {q(portfolio.name)}, {q(period.label)}: "
            f"{rows} row(s).",
        )

    return r
