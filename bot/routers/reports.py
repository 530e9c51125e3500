"""/orders, /positions, /pnl, /risk: parse → DAL → format (the formatting is bot/reports.py)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from aiogram import Bot, Router
from aiogram.exceptions import TelegramBadRequest
from aiogram.filters import Command, CommandObject
from aiogram.types import CallbackQuery, Message

from bot.callbacks import OrdersPage
from bot.periods import PeriodError, parse_period
from bot.reports import orders_report, pnl_report, positions_report, risk_report, send_reply
from bot.routers.common import UsageError, args_of, resolve_portfolio
from dal.database import ScopedDal
from dal.errors import NotFound
from dal.schema import ORDER_STATUSES

STATUS_WORDS = {s.lower(): s for s in ORDER_STATUSES} | {"open": "OPEN"}


async def _has_portfolio(dal: ScopedDal, name: str) -> bool:
    try:
        await dal.portfolios.by_name(name)
    except NotFound:
        return False
    return True


def router() -> Router:
    r = Router(name="reports")

    @r.message(Command("orders"))
    async def orders(
        message: Message, command: CommandObject, dal: ScopedDal, user: Any, bot: Bot
    ) -> None:
        args = args_of(command)
        status = "OPEN"
        if args and args[0].lower() in STATUS_WORDS:
            status = STATUS_WORDS[args.pop(0).lower()]
        elif args and args[0].isupper() and args[0].isalpha() and len(args) == 1:
            raise UsageError(
                "orders", f"Unknown status {args[0]}; use {', '.join(ORDER_STATUSES)}."
            )
        portfolio = await resolve_portfolio(dal, " ".join(args) or None)
        reply = await orders_report(dal, portfolio, status, 0, user.timezone)
        await send_reply(bot, message.chat.id, reply)

    @r.callback_query(OrdersPage.filter())
    async def orders_page(
        query: CallbackQuery, callback_data: OrdersPage, dal: ScopedDal, user: Any
    ) -> None:
        status = callback_data.status
        if status != "OPEN" and status not in ORDER_STATUSES:
            await query.answer("Unknown page.")
            return
        portfolio = await dal.portfolios.get(callback_data.portfolio_id)  # owner-checked
        reply = await orders_report(
            dal, portfolio, status, max(0, callback_data.offset), user.timezone
        )
        await query.answer()
        if query.message is not None:
            try:
                await query.message.edit_text(reply.texts[0], reply_markup=reply.markup)
            except TelegramBadRequest as exc:
                if "message is not modified" not in str(exc):
                    raise

    @r.message(Command("positions"))
    async def positions(message: Message, command: CommandObject, dal: ScopedDal, bot: Bot) -> None:
        portfolio = await resolve_portfolio(dal, (command.args or "").strip() or None)
        await send_reply(bot, message.chat.id, await positions_report(dal, portfolio))

    @r.message(Command("pnl"))
    async def pnl(
        message: Message, command: CommandObject, dal: ScopedDal, user: Any, bot: Bot
    ) -> None:
        args = args_of(command)
        now = dt.datetime.now(dt.UTC)
        try:
            period, name = parse_period(args[0] if args else None, user.timezone, now), args[1:]
        except PeriodError as exc:
            # "/pnl Main": no period given, the whole argument is a portfolio name.
            period, name = parse_period(None, user.timezone, now), args
            if not await _has_portfolio(dal, " ".join(args)):
                raise UsageError("pnl", str(exc)) from None
        portfolio = await resolve_portfolio(dal, " ".join(name) or None)
        reply = await pnl_report(dal, portfolio, period, user.timezone)
        await send_reply(bot, message.chat.id, reply)

    @r.message(Command("risk"))
    async def risk(
        message: Message, command: CommandObject, dal: ScopedDal, user: Any, bot: Bot
    ) -> None:
        portfolio = await resolve_portfolio(dal, (command.args or "").strip() or None)
        await send_reply(bot, message.chat.id, await risk_report(dal, portfolio, user.timezone))

    return r
