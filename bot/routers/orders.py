"""/orders [status] [portfolio] and its page buttons."""

from __future__ import annotations

from typing import Any

from aiogram import Bot, Router
from aiogram.exceptions import TelegramBadRequest
from aiogram.filters import Command, CommandObject
from aiogram.types import CallbackQuery, Message

from bot.callbacks import OrdersPage
from bot.middleware import UserRow
from bot.reports import orders_report, send_reply
from bot.routers.common import UsageError, args_of, resolve_portfolio
from dal.database import ScopedDal
from dal.orders import MAX_OFFSET
from dal.vocabulary import ORDER_STATUSES

STATUS_WORDS = {s.lower(): s for s in ORDER_STATUSES} | {"open": "OPEN", "all": "ALL"}


def router() -> Router:
    r = Router(name="orders")

    @r.message(Command("orders", ignore_case=True))
    async def orders(
        message: Message, command: CommandObject, dal: ScopedDal, user: UserRow, bot: Bot
    ) -> None:
        args = args_of(command)
        status = "OPEN"
        if args and args[0].lower() in STATUS_WORDS:
            status = STATUS_WORDS[args.pop(0).lower()]
        elif len(args) == 1 and args[0].isupper() and args[0].replace("_", "").isalpha():
            known = ", ".join(ORDER_STATUSES)
            raise UsageError("orders", f"Unknown status {args[0]}; use {known}.")
        portfolio = await resolve_portfolio(dal, " ".join(args) or None)
        reply = await orders_report(dal, portfolio, status, 0, user.timezone)
        await send_reply(bot, message.chat.id, reply)

    @r.callback_query(OrdersPage.filter())
    async def orders_page(
        query: CallbackQuery, callback_data: OrdersPage, dal: ScopedDal, user: Any
    ) -> None:
        status = callback_data.status
        if status not in ("OPEN", "ALL") and status not in ORDER_STATUSES:
            await query.answer("Unknown page.")
            return
        portfolio = await dal.portfolios.get(callback_data.portfolio_id)  # owner-checked
        offset = min(max(0, callback_data.offset), MAX_OFFSET)  # forged data: the last page
        reply = await orders_report(dal, portfolio, status, offset, user.timezone)
        await query.answer()
        if isinstance(query.message, Message):
            try:
                await query.message.edit_text(reply.texts[0], reply_markup=reply.markup)
            except TelegramBadRequest as exc:
                if "message is not modified" not in str(exc):
                    raise

    return r
