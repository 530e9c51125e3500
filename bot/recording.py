"""A Telegram session that never touches the network: it records every API call and answers
like Telegram would (real aiogram validation and error mapping via ``check_response``).

Console mode drives the bot through it, and the tests read what the bot sent from it. It also
enforces what Telegram enforces and aiogram does not check locally: the 4,096-character text
limit (1,024 for captions) and well-formed HTML, so a forgotten escape fails here as it would
in production ("can't parse entities").
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any

from aiogram import Bot
from aiogram.client.session.base import BaseSession
from aiogram.methods import TelegramMethod

TEXT_LIMIT = 4096
CAPTION_LIMIT = 1024
BOT_USER = {"id": 1, "is_bot": True, "first_name": "tradebook", "username": "tradebook_bot"}
_ALLOWED_TAGS = {
    "b", "strong", "i", "em", "u", "ins", "s", "strike", "del", "a", "code", "pre", "span",
    "tg-spoiler", "blockquote", "tg-emoji",
}  # fmt: skip
_TRUE_METHODS = {
    "AnswerCallbackQuery",
    "SetMyCommands",
    "DeleteWebhook",
    "DeleteMyCommands",
    "SendChatAction",
    "DeleteMessage",
}


@dataclass
class Call:
    """One recorded API call."""

    name: str  # aiogram's method class name, e.g. "SendMessage"
    params: dict[str, Any]
    files: dict[str, Any] = field(default_factory=dict)
    method: Any = None
    message_id: int | None = None  # of the message this call sent or edited

    @property
    def text(self) -> str | None:
        return self.params.get("text") or self.params.get("caption")

    @property
    def chat_id(self) -> Any:
        return self.params.get("chat_id")

    def buttons(self) -> list[tuple[str, str | None]]:
        """(label, callback data) of every inline button, row by row."""
        markup = self.params.get("reply_markup")
        if isinstance(markup, str):
            markup = json.loads(markup)
        rows = (markup or {}).get("inline_keyboard") or []
        return [(b.get("text"), b.get("callback_data")) for row in rows for b in row]


class _HTMLCheck(HTMLParser):
    """Collects the visible text and the first reason Telegram would refuse the markup."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.error: str | None = None
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in _ALLOWED_TAGS:
            self.error = self.error or f'unsupported start tag "{tag}"'
        self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.error = self.error or f'unexpected end tag "{tag}"'
        else:
            self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _parse(text: str) -> _HTMLCheck:
    checker = _HTMLCheck()
    checker.feed(text)
    checker.close()
    return checker


def html_error(text: str) -> str | None:
    """Why Telegram would refuse ``text`` as HTML, or None."""
    checker = _parse(text)
    if checker.error:
        return checker.error
    if checker.stack:
        return f'unclosed tag "{checker.stack[-1]}"'
    # Telegram wants every literal <, > and & escaped; an unescaped one survives parsing as
    # text, so escaping the visible text again must reproduce the markup's text parts.
    bare = text
    for entity in ("&lt;", "&gt;", "&amp;", "&quot;", "&#"):
        bare = bare.replace(entity, "")
    visible = "".join(_parse(bare).text)
    if any(ch in visible for ch in "<>&"):
        return "unescaped <, > or & in text"
    return None


def plain_text(text: str) -> str:
    """What the user would read: tags removed, entities unescaped."""
    return "".join(_parse(text).text)


class RecordingSession(BaseSession):
    def __init__(self, on_call: Callable[[Call], None] | None = None) -> None:
        super().__init__()
        self.calls: list[Call] = []
        self._on_call = on_call
        self._failures: dict[str, list[tuple[int, str, int | None]]] = {}
        self._message_id = 0
        self._updates: list[dict[str, Any]] = []  # answers to getUpdates (long polling)

    def queue_update(self, update: dict[str, Any]) -> None:
        """Hand ``update`` (Telegram's JSON shape) to the next getUpdates call."""
        self._updates.append(update)

    def fail_next(
        self, name: str, status: int, description: str, retry_after: int | None = None
    ) -> None:
        """Make the next call of ``name`` (e.g. "SendMessage") fail like Telegram would."""
        self._failures.setdefault(name, []).append((status, description, retry_after))

    def sent(self, name: str | None = None) -> list[Call]:
        return [c for c in self.calls if name is None or c.name == name]

    def clear(self) -> None:
        self.calls.clear()

    async def make_request(
        self, bot: Bot, method: TelegramMethod[Any], timeout: int | None = None
    ) -> Any:
        name = type(method).__name__
        if name == "GetUpdates" and not self._updates:
            await asyncio.sleep(0.01)  # an idle long poll; polling just asks again
        files: dict[str, Any] = {}
        params: dict[str, Any] = {}
        for key, value in method.model_dump(warnings=False).items():
            prepared = self.prepare_value(value, bot=bot, files=files, _dumps_json=False)
            if prepared is not None:
                params[key] = prepared
        call = Call(name, params, files, method)
        status, payload = self._answer(call)
        result = payload.get("result")
        if isinstance(result, dict):
            call.message_id = result.get("message_id")
        if status == 200:
            self.calls.append(call)
            if self._on_call is not None:
                self._on_call(call)
        response = self.check_response(
            bot=bot, method=method, status_code=status, content=json.dumps(payload)
        )
        return response.result

    def _answer(self, call: Call) -> tuple[int, dict[str, Any]]:
        queued = self._failures.get(call.name)
        if queued:
            status, description, retry_after = queued.pop(0)
            payload: dict[str, Any] = {
                "ok": False,
                "error_code": status,
                "description": description,
            }
            if retry_after is not None:
                payload["parameters"] = {"retry_after": retry_after}
            return status, payload
        problem = self._check_limits(call)
        if problem:
            return 400, {"ok": False, "error_code": 400, "description": f"Bad Request: {problem}"}
        return 200, {"ok": True, "result": self._result(call)}

    def _check_limits(self, call: Call) -> str | None:
        text = call.params.get("text")
        caption = call.params.get("caption")
        if text is not None and len(text) > TEXT_LIMIT:
            return "message is too long"
        if caption is not None and len(caption) > CAPTION_LIMIT:
            return "message caption is too long"
        if call.params.get("parse_mode") == "HTML":
            for body in (text, caption):
                if body and (err := html_error(body)):
                    return f"can't parse entities: {err}"
        return None

    def _result(self, call: Call) -> Any:
        if call.name in _TRUE_METHODS:
            return True
        if call.name == "GetMe":
            return BOT_USER
        if call.name == "GetUpdates":
            updates, self._updates = self._updates, []
            return updates
        if call.name in (
            "SendMessage",
            "SendPhoto",
            "SendDocument",
            "EditMessageText",
            "EditMessageReplyMarkup",
        ):
            self._message_id += 1
            message: dict[str, Any] = {
                "message_id": call.params.get("message_id") or self._message_id,
                "date": int(dt.datetime.now(dt.UTC).timestamp()),
                "chat": {"id": call.params.get("chat_id") or 0, "type": "private"},
                "from": BOT_USER,
            }
            if call.name == "SendPhoto":
                message["photo"] = [
                    {
                        "file_id": f"photo{self._message_id}",
                        "file_unique_id": f"u{self._message_id}",
                        "width": 800,
                        "height": 400,
                    }
                ]
                if call.params.get("caption"):
                    message["caption"] = call.params["caption"]
            elif call.name == "SendDocument":
                message["document"] = {
                    "file_id": f"doc{self._message_id}",
                    "file_unique_id": f"d{self._message_id}",
                }
            else:
                message["text"] = call.params.get("text", "")
            return message
        raise NotImplementedError(f"the recording session does not answer {call.name}")

    async def stream_content(
        self,
        url: str,
        headers: dict[str, Any] | None = None,
        timeout: int = 30,
        chunk_size: int = 65536,
        raise_for_status: bool = True,
    ) -> AsyncGenerator[bytes, None]:
        raise NotImplementedError("no downloads offline")
        yield b""  # pragma: no cover - makes this an async generator

    async def close(self) -> None:
        return None
