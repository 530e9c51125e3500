"""Last in line: anything no feature router took (unknown commands, admin commands from
non-admins, stale or foreign buttons) gets a short answer instead of silence."""

from __future__ import annotations

from aiogram import Router
from aiogram.types import CallbackQuery, Message


def router() -> Router:
    r = Router(name="fallback")

    @r.message()
    async def unknown(message: Message) -> None:
        await message.answer("Unknown command or not allowed. Send /help for the commands.")

    @r.callback_query()
    async def unknown_button(query: CallbackQuery) -> None:
        await query.answer("This button is not available to you (or has expired).")

    return r
