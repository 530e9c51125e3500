"""Admin commands and the "Approve" / "Reject" buttons, guarded by the admin filter on
messages and callback queries. Handlers get ``admin``: the sender's DAL in the explicit admin
scope (which the DAL checks against the user's row on every call), injected by this router's
middleware; every action is audited by the DAL."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiogram import BaseMiddleware, Bot, Router
from aiogram.exceptions import TelegramAPIError
from aiogram.filters import Command, CommandObject
from aiogram.types import CallbackQuery, Message, TelegramObject

from bot.callbacks import ApproveUser
from bot.filters import IsAdmin
from bot.routers.common import UsageError, args_of
from bot.text import join_blocks, num, q
from dal.database import ScopedDal
from dal.errors import InvalidInput
from dal.users import DEFAULT_PORTFOLIO

log = logging.getLogger("tradebook.bot")


def _user_line(u: Any) -> str:
    state = (
        "deactivated"
        if not u.is_active
        else ("pending" if u.approved_at is None else ("admin" if u.is_admin else "approved"))
    )
    name = f"@{u.username}" if u.username else "-"
    return f"{q(u.telegram_user_id)} {q(name)} — {state}"


async def _tell_approved(bot: Bot, row: Any) -> None:
    try:
        await bot.send_message(
            row.telegram_chat_id or int(row.telegram_user_id),
            f"You are approved. Your paper portfolio <b>{DEFAULT_PORTFOLIO}</b> is ready; "
            "send /help for the commands.",
        )
    except TelegramAPIError as exc:
        log.warning("could not tell user %s about the approval: %s", row.id, exc)


class AdminScope(BaseMiddleware):
    """Give an admin's handlers their DAL in the admin scope, as ``admin``."""

    async def __call__(
        self,
        handler: Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]],
        event: TelegramObject,
        data: dict[str, Any],
    ) -> Any:
        data["admin"] = data["dal"].as_admin()
        return await handler(event, data)


def router() -> Router:
    r = Router(name="admin")
    r.message.filter(IsAdmin())
    r.callback_query.filter(IsAdmin())
    r.message.middleware(AdminScope())
    r.callback_query.middleware(AdminScope())

    @r.message(Command("pending", ignore_case=True))
    async def pending(message: Message, admin: ScopedDal) -> None:
        rows = await admin.users.pending()
        if not rows:
            await message.answer("Nobody is waiting for approval.")
            return
        lines = ["<b>Waiting for approval</b>"] + [_user_line(u) for u in rows]
        lines.append("Approve with /approve &lt;telegram_id|@username&gt;")
        await message.answer("\n".join(lines))

    @r.message(Command("approve", ignore_case=True))
    async def approve(message: Message, command: CommandObject, admin: ScopedDal, bot: Bot) -> None:
        args = args_of(command)
        if len(args) != 1:
            raise UsageError("approve")
        row = await admin.users.approve(args[0])
        await message.answer(f"Approved {_user_line(row)}.")
        await _tell_approved(bot, row)

    @r.callback_query(ApproveUser.filter())
    async def approve_button(
        query: CallbackQuery, callback_data: ApproveUser, admin: ScopedDal, bot: Bot
    ) -> None:
        if callback_data.action == "reject":
            row = await admin.users.deactivate(callback_data.telegram_id)
            await query.answer("Rejected")
            if isinstance(query.message, Message):
                await query.message.edit_text(
                    f"Rejected {_user_line(row)} (/reactivate lets them in later)."
                )
            return
        row = await admin.users.approve(callback_data.telegram_id)
        await query.answer("Approved")
        if isinstance(query.message, Message):
            await query.message.edit_text(f"Approved {_user_line(row)}.")
        await _tell_approved(bot, row)

    @r.message(Command("deactivate", "reactivate", "promote", "demote", ignore_case=True))
    async def change_user(message: Message, command: CommandObject, admin: ScopedDal) -> None:
        args = args_of(command)
        if len(args) != 1:
            raise UsageError(command.command)
        action = {
            "deactivate": admin.users.deactivate,
            "reactivate": admin.users.reactivate,
            "promote": admin.users.promote,
            "demote": admin.users.demote,
        }[command.command]
        row = await action(args[0])
        done = {
            "deactivate": "Deactivated",
            "reactivate": "Reactivated",
            "promote": "Promoted",
            "demote": "Demoted",
        }[command.command]
        await message.answer(f"{done} {_user_line(row)}.")

    @r.message(Command("revoke", ignore_case=True))
    async def revoke(message: Message, command: CommandObject, admin: ScopedDal) -> None:
        args = args_of(command)
        if len(args) != 1:
            raise UsageError("revoke")
        row = await admin.users.revoke(args[0])
        await message.answer(f"Revoked {_user_line(row)}.")

    @r.message(Command("users", ignore_case=True))
    async def users(message: Message, admin: ScopedDal) -> None:
        rows = await admin.users.list_all()
        for text in join_blocks(["<b>Users</b>"] + [_user_line(u) for u in rows]):
            await message.answer(text)

    @r.message(Command("brokers", ignore_case=True))
    async def brokers(message: Message, admin: ScopedDal) -> None:
        rows = await admin.brokers.list()
        await message.answer(
            "\n".join(["<b>Brokers</b>"] + [f"{q(b.code)} — {q(b.name)}" for b in rows])
        )

    @r.message(Command("addbroker", ignore_case=True))
    async def addbroker(message: Message, command: CommandObject, admin: ScopedDal) -> None:
        args = args_of(command)
        if len(args) < 2:
            raise UsageError("addbroker")
        row = await admin.brokers.create(args[0], " ".join(args[1:]))
        await message.answer(f"Added broker {q(row.code)} — {q(row.name)}.")

    @r.message(Command("instruments", ignore_case=True))
    async def instruments(message: Message, admin: ScopedDal) -> None:
        rows = await admin.instruments.list()
        lines = [
            f"{q(i.symbol)} {q(i.exchange or '-')} {i.asset_type} {q(i.currency)}"
            f" tick {num(i.tick_size)} lot {num(i.lot_size)}"
            for i in rows
        ]
        for text in join_blocks(["<b>Instruments</b>"] + (lines or ["None yet."])):
            await message.answer(text)

    @r.message(Command("addinstrument", ignore_case=True))
    async def addinstrument(message: Message, command: CommandObject, admin: ScopedDal) -> None:
        args = args_of(command)
        if not 4 <= len(args) <= 6:
            raise UsageError("addinstrument")
        values: dict[str, Any] = dict(
            zip(("symbol", "exchange", "asset_type", "currency"), args[:4], strict=True)
        )
        for key, text in zip(("tick_size", "lot_size"), args[4:], strict=False):
            values[key] = text
        try:
            row = await admin.instruments.create(values)
        except InvalidInput as exc:
            raise UsageError("addinstrument", str(exc)) from None
        await message.answer(
            f"Added {q(row.symbol)} on {q(row.exchange or '-')} ({row.asset_type}, "
            f"{q(row.currency)}, tick {num(row.tick_size)}, lot {num(row.lot_size)})."
        )

    @r.message(Command("accounts", ignore_case=True))
    async def accounts(message: Message, command: CommandObject, admin: ScopedDal) -> None:
        args = args_of(command)
        if len(args) != 1:
            raise UsageError("accounts")
        target = await admin.users.find(args[0])
        rows = await admin.accounts.list_for_user(target.id)
        lines = [f"<b>Accounts of {_user_line(target)}</b>"] + [
            f"{q(a.name)} — {q(a.broker_code)} {q(a.account_uid or '')} {q(a.base_currency)}"
            for a in rows
        ]
        await message.answer("\n".join(lines))

    return r
