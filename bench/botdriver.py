"""Drive the real aiogram Dispatcher offline (as tests/botkit.py does): an update in through
``feed_update``, the replies recorded instead of sent."""

from __future__ import annotations

import datetime as dt
import itertools

from aiogram.types import Chat, Message, Update, User

from bot.app import build_bot, build_dispatcher
from bot.recording import RecordingSession
from dal.database import Database

_ids = itertools.count(1)


class BotDriver:
    def __init__(self, db: Database) -> None:
        self.session = RecordingSession()
        self.bot = build_bot("123456:BENCH-fake-token", self.session)
        self.dp = build_dispatcher(db)

    async def send(self, telegram_id: int, text: str) -> None:
        user = User(id=telegram_id, is_bot=False, first_name=f"u{telegram_id}")
        message = Message(
            message_id=next(_ids),
            date=dt.datetime.now(dt.UTC),
            chat=Chat(id=telegram_id, type="private"),
            from_user=user,
            text=text,
        )
        before = len(self.session.calls)
        await self.dp.feed_update(self.bot, Update(update_id=next(_ids), message=message))
        if len(self.session.calls) == before:
            raise AssertionError(f"the bot did not answer {text!r}")
