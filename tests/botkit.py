"""Drive the real Dispatcher offline: updates in through ``feed_update``, replies out of the
recording session."""

from __future__ import annotations

import datetime as dt
import itertools
from dataclasses import dataclass, field

from aiogram import Bot, Dispatcher
from aiogram.types import CallbackQuery, Chat, Message, Update, User

from bot.app import build_bot, build_dispatcher
from bot.recording import BOT_USER, Call, RecordingSession, plain_text
from dal.database import Database
from dal.scope import Actor

_ids = itertools.count(1)


@dataclass
class BotHarness:
    db: Database
    session: RecordingSession = field(default_factory=RecordingSession)
    bot: Bot = field(init=False)
    dp: Dispatcher = field(init=False)

    def __post_init__(self) -> None:
        self.bot = build_bot("123456:TEST-fake-token", self.session)
        self.dp = build_dispatcher(self.db)

    async def send(
        self,
        telegram_id: int,
        text: str,
        username: str | None = None,
        message_id: int | None = None,
    ) -> list[Call]:
        """Feed a message from ``telegram_id``; return the API calls it caused."""
        user = User(id=telegram_id, is_bot=False, first_name=f"u{telegram_id}", username=username)
        message = Message(
            message_id=message_id or next(_ids),
            date=dt.datetime.now(dt.UTC),
            chat=Chat(id=telegram_id, type="private"),
            from_user=user,
            text=text,
        )
        return await self._feed(Update(update_id=next(_ids), message=message))

    async def press(self, telegram_id: int, data: str, message_id: int = 1) -> list[Call]:
        """Feed a callback query (an inline button press) carrying ``data``."""
        user = User(id=telegram_id, is_bot=False, first_name=f"u{telegram_id}")
        message = Message(
            message_id=message_id,
            date=dt.datetime.now(dt.UTC),
            chat=Chat(id=telegram_id, type="private"),
            from_user=User.model_validate(BOT_USER),
            text="...",
        )
        query = CallbackQuery(
            id=str(next(_ids)), from_user=user, chat_instance="test", data=data, message=message
        )
        return await self._feed(Update(update_id=next(_ids), callback_query=query))

    async def _feed(self, update: Update) -> list[Call]:
        before = len(self.session.calls)
        await self.dp.feed_update(self.bot, update)
        return self.session.calls[before:]


def texts(calls: list[Call]) -> list[str]:
    """What the user read (plain text) of each message, edit or toast."""
    out = []
    for call in calls:
        if call.name in ("SendMessage", "EditMessageText"):
            out.append(plain_text(call.params["text"]))
        elif call.name == "AnswerCallbackQuery" and call.params.get("text"):
            out.append(call.params["text"])
        elif call.name == "SendPhoto":
            out.append(f"[photo] {plain_text(call.params.get('caption', ''))}")
    return out


def joined(calls: list[Call]) -> str:
    return "\n".join(texts(calls))


async def approved_user(
    db: Database, telegram_id: int, admin: bool = False, username: str | None = None
) -> Actor:
    async with db.session(Actor.system()) as s:
        if admin:
            (row,) = await s.users.bootstrap_admins([telegram_id])
        else:
            await s.users.register(telegram_id, username, chat_id=telegram_id)
            row = await s.users.approve(telegram_id)
    return Actor.user(row.id)
