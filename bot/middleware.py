"""Resolve the Telegram user to a tradebook user and inject the user-scoped DAL.

Every handler receives ``dal`` (a ``ScopedDal`` for the sender: each call its own short
transaction, so no transaction stays open while the bot waits on Telegram) and ``user`` (the
sender's row). Unknown senders may only /start; pending ones get one clear reply.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import sqlalchemy as sa
from aiogram import BaseMiddleware
from aiogram.types import CallbackQuery, Message, TelegramObject, Update

from dal.database import Database
from dal.scope import Actor

log = logging.getLogger("tradebook.bot")
# The sender's ``users`` row, injected as ``user`` (None only for /start by a new sender).
UserRow = sa.Row[Any]

WAITING = (
    "Your account is waiting for approval by an admin. You will get a message here once approved."
)
UNKNOWN = "Welcome to tradebook. Send /start to register."
DEACTIVATED = "Your account is deactivated. Ask an admin."


def _is_start(event: TelegramObject) -> bool:
    if not isinstance(event, Message) or not event.text:
        return False
    command = event.text.split(maxsplit=1)[0].split("@", 1)[0]
    return command.lower() == "/start"


async def _tell(event: TelegramObject, text: str) -> None:
    if isinstance(event, Message):
        await event.answer(text)
    elif isinstance(event, CallbackQuery):
        await event.answer(text, show_alert=True)


class UserScopeMiddleware(BaseMiddleware):
    def __init__(self, db: Database) -> None:
        self.db = db

    async def __call__(
        self,
        handler: Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]],
        event: TelegramObject,
        data: dict[str, Any],
    ) -> Any:
        sender = data.get("event_from_user")
        update_id = event.update_id if isinstance(event, Update) else None
        data["correlation_id"] = f"u{update_id}" if update_id is not None else uuid.uuid4().hex[:8]
        if sender is None or sender.is_bot:
            return None
        async with self.db.session(Actor.system(), readonly=True) as s:
            user = await s.users.lookup(sender.id)
        inner = getattr(event, "message", None) or getattr(event, "callback_query", None)
        inner = inner or event
        approved = user is not None and user.is_active and user.approved_at is not None
        if not approved and not _is_start(inner):
            if user is None:
                await _tell(inner, UNKNOWN)
            elif not user.is_active:
                await _tell(inner, DEACTIVATED)
            else:
                await _tell(inner, WAITING)
            return None
        data["user"] = user
        data["dal"] = self.db.scoped(Actor.user(user.id)) if user is not None else None
        if isinstance(inner, Message) and inner.text:
            what = inner.text.split(maxsplit=1)[0][:64]
        elif isinstance(inner, CallbackQuery):
            what = f"button {(inner.data or '').split(':', 1)[0]}"
        else:
            what = type(inner).__name__
        log.info(
            "bot command %s",
            what,
            extra={
                "correlation_id": data["correlation_id"],
                "user_id": user.id if user is not None else None,
            },
        )
        return await handler(event, data)
