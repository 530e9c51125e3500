"""/portfolios, /portfolio [name] (with a switcher keyboard), /tz."""

from __future__ import annotations

from typing import Any

from aiogram import Router
from aiogram.filters import Command, CommandObject
from aiogram.types import CallbackQuery, Message
from aiogram.utils.keyboard import InlineKeyboardBuilder

from bot.callbacks import PortfolioPick
from bot.middleware import UserRow
from bot.routers.common import UsageError, args_of, name_of
from bot.text import q
from dal.database import ScopedDal
from dal.vocabulary import venue


def _describe(p: Any, current_id: int) -> str:
    marks = []
    if p.id == current_id:
        marks.append("current")
    if p.is_default:
        marks.append("default")
    tail = f" ({', '.join(marks)})" if marks else ""
    where = venue(p.broker_code, p.trading_mode)  # PAPER, TESTNET, LIVE or the broker
    broker = "" if where == p.broker_code else f" {q(p.broker_code)}"
    return f"{q(p.name)} — {where}{broker} account {q(p.account_name)}{tail}"


def router() -> Router:
    r = Router(name="portfolios")

    @r.message(Command("portfolios", ignore_case=True))
    async def portfolios(message: Message, dal: ScopedDal) -> None:
        current = await dal.portfolios.current()
        rows = await dal.portfolios.list()
        lines = ["<b>Your portfolios</b>"] + [f"• {_describe(p, current.id)}" for p in rows]
        await message.answer("\n".join(lines))

    @r.message(Command("portfolio", ignore_case=True))
    async def portfolio(message: Message, command: CommandObject, dal: ScopedDal) -> None:
        args = args_of(command)
        if args and args[0].lower() == "add":
            if len(args) != 3:
                raise UsageError("portfolio")
            account = await dal.accounts.by_name(args[2])
            row = await dal.portfolios.create({"name": args[1], "account_id": account.id})
            await message.answer(f"Added portfolio <b>{q(row.name)}</b> on {q(account.name)}.")
            return
        name = name_of(command)
        if name:
            chosen = await dal.portfolios.by_name(name)
            await dal.portfolios.set_current(chosen.id)
            await message.answer(f"Current portfolio: <b>{q(chosen.name)}</b>")
            return
        current = await dal.portfolios.current()
        keyboard = InlineKeyboardBuilder()
        for p in await dal.portfolios.list():
            label = f"• {p.name}" if p.id == current.id else p.name
            keyboard.button(text=label[:64], callback_data=PortfolioPick(portfolio_id=p.id))
        keyboard.adjust(2)
        await message.answer(
            f"Current portfolio: <b>{q(current.name)}</b>. Switch to:",
            reply_markup=keyboard.as_markup(),
        )

    @r.callback_query(PortfolioPick.filter())
    async def pick(query: CallbackQuery, callback_data: PortfolioPick, dal: ScopedDal) -> None:
        chosen = await dal.portfolios.set_current(callback_data.portfolio_id)  # owner-checked
        await query.answer(f"Switched to {chosen.name}")
        if isinstance(query.message, Message):
            await query.message.edit_text(f"Current portfolio: <b>{q(chosen.name)}</b>")

    @r.message(Command("tz", ignore_case=True))
    async def tz(message: Message, command: CommandObject, dal: ScopedDal, user: UserRow) -> None:
        zone = (command.args or "").strip()
        if not zone:
            raise UsageError("tz", f"Your time zone is {user.timezone}.")
        zone = await dal.users.set_timezone(zone)
        await message.answer(f"Time zone set to {q(zone)}.")

    return r
