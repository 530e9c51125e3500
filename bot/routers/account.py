"""/balance, /status, /profit, /daily, /weekly, /monthly and /performance."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from aiogram import Bot, Router
from aiogram.filters import Command, CommandObject
from aiogram.types import CallbackQuery, Message

from bot.account_reports import (
    DEFAULT_PERIODS,
    MAX_PERIODS,
    PERIOD_UNITS,
    balance_report,
    equity_chart,
    performance_report,
    periodic_report,
    profit_report,
    status_report,
)
from bot.args import parse_count
from bot.callbacks import EquityChart
from bot.middleware import UserRow
from bot.reports import send_reply
from bot.routers.common import UsageError, args_of, name_of, period_and_portfolio, resolve_portfolio
from dal.database import ScopedDal
from dal.periods import PeriodError, parse_period
from trading.desk import OrderDesk


def live_marks(desk: OrderDesk | None) -> dict[int, Decimal] | None:
    """The market-data feed's marks when it runs here, else (None) the last stored ones."""
    return dict(desk.market.marks.marks) if desk is not None else None


def router() -> Router:
    r = Router(name="account")

    @r.message(Command("balance", ignore_case=True))
    async def balance(
        message: Message,
        command: CommandObject,
        dal: ScopedDal,
        bot: Bot,
        desk: OrderDesk | None = None,
    ) -> None:
        portfolio = await resolve_portfolio(dal, name_of(command))
        reply = await balance_report(dal, portfolio, live_marks(desk))
        await send_reply(bot, message.chat.id, reply)

    @r.message(Command("status", ignore_case=True))
    async def status(
        message: Message,
        command: CommandObject,
        dal: ScopedDal,
        bot: Bot,
        desk: OrderDesk | None = None,
    ) -> None:
        portfolio = await resolve_portfolio(dal, name_of(command))
        now = dt.datetime.now(dt.UTC)
        report = await status_report(dal, portfolio, now, live_marks(desk))
        stale = desk.market.stale_since() if desk is not None else None
        if stale is not None:
            report.texts[0] = (
                f"⚠ Prices are stale since {stale:%Y-%m-%d %H:%M} UTC: the price feed sent "
                f"nothing new; paper orders wait for fresh prices.\n{report.texts[0]}"
            )
        await send_reply(bot, message.chat.id, report)

    @r.message(Command("profit", "performance", ignore_case=True))
    async def profit(
        message: Message,
        command: CommandObject,
        dal: ScopedDal,
        user: UserRow,
        bot: Bot,
        desk: OrderDesk | None = None,
    ) -> None:
        name = command.command
        period, word, portfolio = await period_and_portfolio(
            dal, args_of(command), user.timezone, name, "all"
        )
        if name == "profit":
            marks = live_marks(desk)
            reply = await profit_report(dal, portfolio, period, user.timezone, marks, word)
        else:
            reply = await performance_report(dal, portfolio, period, user.timezone)
        await send_reply(bot, message.chat.id, reply)

    @r.callback_query(EquityChart.filter())
    async def chart(
        query: CallbackQuery, callback_data: EquityChart, dal: ScopedDal, user: UserRow, bot: Bot
    ) -> None:
        portfolio = await dal.portfolios.get(callback_data.portfolio_id)  # owner-checked
        try:
            period = parse_period(callback_data.period, user.timezone, dt.datetime.now(dt.UTC))
        except PeriodError:
            await query.answer("Unknown period.")
            return
        await query.answer()
        reply = await equity_chart(dal, portfolio, period, user.timezone)
        chat = query.message.chat.id if query.message is not None else query.from_user.id
        await send_reply(bot, chat, reply)

    @r.message(Command(*PERIOD_UNITS, ignore_case=True))
    async def per_period(
        message: Message, command: CommandObject, dal: ScopedDal, user: UserRow, bot: Bot
    ) -> None:
        args = args_of(command)
        if len(args) > 1:
            raise UsageError(command.command)
        count = (
            parse_count(args[0], command.command, 1, MAX_PERIODS)
            if args
            else DEFAULT_PERIODS[command.command]
        )
        portfolio = await dal.portfolios.current()
        now = dt.datetime.now(dt.UTC)
        unit = PERIOD_UNITS[command.command]
        reply = await periodic_report(dal, portfolio, unit, count, user.timezone, now)
        await send_reply(bot, message.chat.id, reply)

    return r
