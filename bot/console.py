"""Console mode: the same Dispatcher driven from a terminal.

Each stdin line becomes a message update from a local admin user (created and approved on
first run); replies are printed as plain text, photos are saved and their path printed, inline
buttons are listed as numbered options and ``#n`` presses button n of the last reply that had
buttons. EOF ends the session with exit status 0, so ``echo /positions | make run`` works in a
script. Nothing touches the network: the Bot talks to a RecordingSession.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO, Any

from aiogram import Bot, Dispatcher
from aiogram.types import CallbackQuery, Chat, Message, Update, User

from bot.app import announce_commands, build_bot, build_dispatcher
from bot.recording import BOT_USER, Call, RecordingSession, plain_text
from dal.database import Database
from dal.scope import Actor

log = logging.getLogger("tradebook.console")

LOCAL_TELEGRAM_ID = 10_000_001
CONSOLE_TOKEN = "123456:console-offline"  # never sent anywhere: the session is a recorder


class ConsolePrinter:
    """Turns recorded API calls into terminal output."""

    def __init__(self, out: IO[str], media_dir: Path, local_chat: int) -> None:
        self.out = out
        self.media_dir = media_dir
        self.local_chat = local_chat
        self.buttons: list[tuple[str, str, int | None, Any]] = []  # label, data, msg id, chat
        self._photos = itertools.count(1)

    def _print(self, text: str) -> None:
        self.out.write(text.rstrip("\n") + "\n")
        self.out.flush()

    def __call__(self, call: Call) -> None:
        prefix = "" if call.chat_id in (None, self.local_chat) else f"[to chat {call.chat_id}] "
        if call.name in ("SendMessage", "EditMessageText"):
            self._print(prefix + plain_text(call.params.get("text", "")))
            self._list_buttons(call)
        elif call.name == "SendPhoto":
            self._print(prefix + f"[photo] {self._save(call)}")
            if call.params.get("caption"):
                self._print(plain_text(call.params["caption"]))
        elif call.name == "SendDocument":
            self._print(prefix + f"[document] {self._save(call)}")
        elif call.name == "AnswerCallbackQuery" and call.params.get("text"):
            self._print(f"({call.params['text']})")

    def _list_buttons(self, call: Call) -> None:
        buttons = [(label, data) for label, data in call.buttons() if data]
        if not buttons:
            return
        self.buttons = [(lbl, data, call.message_id, call.chat_id) for lbl, data in buttons]
        self._print("  " + "   ".join(f"[#{i}] {b[0]}" for i, b in enumerate(buttons, 1)))

    def _save(self, call: Call) -> Path:
        self.media_dir.mkdir(parents=True, exist_ok=True)
        for value in call.files.values():
            name = getattr(value, "filename", None) or "file.bin"
            path = (
                self.media_dir
                / f"{dt.datetime.now(dt.UTC):%Y%m%d-%H%M%S}-{next(self._photos)}-{name}"
            )
            path.write_bytes(value.data)
            return path
        return self.media_dir


class Console:
    def __init__(
        self, db: Database, out: IO[str], media_dir: Path, admin_telegram_ids: tuple[int, ...] = ()
    ) -> None:
        self.db = db
        self.printer = ConsolePrinter(out, media_dir, LOCAL_TELEGRAM_ID)
        self.session = RecordingSession(on_call=self.printer)
        self.bot: Bot = build_bot(CONSOLE_TOKEN, self.session)
        self.dp: Dispatcher = build_dispatcher(db)
        self.admin_telegram_ids = admin_telegram_ids
        self._update_ids = itertools.count(1)
        # Unique across runs too: /fill uses chat + message id as its idempotency key.
        self._message_ids = itertools.count(time.time_ns() // 1_000_000)
        self.local = User(
            id=LOCAL_TELEGRAM_ID, is_bot=False, first_name="console", username="console"
        )
        self.chat = Chat(id=LOCAL_TELEGRAM_ID, type="private")
        self._local_user_id: int | None = None

    def local_actor(self) -> Actor:
        assert self._local_user_id is not None, "prepare() first"
        return Actor.user(self._local_user_id)

    async def prepare(self) -> None:
        async with self.db.session(Actor.system()) as s:
            await s.users.bootstrap_admins([LOCAL_TELEGRAM_ID, *self.admin_telegram_ids])
            row = await s.users.register(LOCAL_TELEGRAM_ID, "console", chat_id=LOCAL_TELEGRAM_ID)
        self._local_user_id = row.id
        await announce_commands(self.bot)

    def update_for(self, line: str) -> Update | None:
        now = dt.datetime.now(dt.UTC)
        if line.startswith("#") and line[1:].isdigit():
            n = int(line[1:])
            if not 1 <= n <= len(self.printer.buttons):
                self.printer._print(f"(no button #{n})")
                return None
            _, data, message_id, _chat = self.printer.buttons[n - 1]
            message = Message(
                message_id=message_id or 0,
                date=now,
                chat=self.chat,
                from_user=User.model_validate(BOT_USER),
                text="",
            )
            query = CallbackQuery(
                id=str(next(self._update_ids)),
                from_user=self.local,
                chat_instance="console",
                data=data,
                message=message,
            )
            return Update(update_id=next(self._update_ids), callback_query=query)
        message = Message(
            message_id=next(self._message_ids),
            date=now,
            chat=self.chat,
            from_user=self.local,
            text=line,
        )
        return Update(update_id=next(self._update_ids), message=message)

    async def feed(self, line: str) -> None:
        update = self.update_for(line)
        if update is None:
            return
        try:
            await self.dp.feed_update(self.bot, update)
        except Exception:  # the errors handler answers users; this is the last resort
            log.exception("update failed")
            self.printer._print("Something went wrong; see the log.")

    async def run(
        self,
        read_line: Callable[[], Awaitable[str]],
        background: list[Callable[[Bot], Awaitable[None]]] | None = None,
    ) -> int:
        await self.prepare()
        tasks = [asyncio.ensure_future(job(self.bot)) for job in background or []]
        try:
            while True:
                line = await read_line()
                if line == "":  # EOF
                    return 0
                line = line.strip()
                if line:
                    await self.feed(line)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.bot.session.close()
