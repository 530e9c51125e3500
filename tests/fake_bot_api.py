"""A fake Telegram Bot API server on 127.0.0.1, for end-to-end runs of `tradebook run`.

The real aiogram ``AiohttpSession`` talks HTTP to it (``TRADEBOOK_TELEGRAM_API_URL``). It speaks
the documented shapes (https://core.telegram.org/bots/api#making-requests): ``POST
/bot<token>/<method>`` with urlencoded, multipart or JSON fields; answers ``{"ok": true,
"result": ...}`` or ``{"ok": false, "error_code": ..., "description": ..., "parameters":
{"retry_after": N}}``; long-polls ``getUpdates`` with ``offset`` (updates below the offset are
confirmed and dropped). It enforces what Telegram enforces and aiogram does not check locally
(text and caption lengths, well-formed HTML), answers unknown methods with 404, records every
call with the time it came, and fails calls on request (``fail``, ``block``).

Before ``listen()`` its port is bound but not listening: connecting is refused, as when
Telegram (or the way to it) is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import json
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from bot.recording import CAPTION_LIMIT, TEXT_LIMIT, html_error, plain_text

TOKEN = "123456:TEST-e2e-token"
BOT_USER = {
    "id": 123456,
    "is_bot": True,
    "first_name": "tradebook",
    "username": "tradebook_bot",
    "can_join_groups": True,
    "can_read_all_group_messages": False,
    "supports_inline_queries": False,
}
SENDS = {"sendmessage", "sendphoto", "senddocument"}
_TRUE = {
    "answercallbackquery",
    "deletewebhook",
    "setmycommands",
    "deletemycommands",
    "sendchataction",
    "deletemessage",
}
_INT_FIELDS = {"chat_id", "message_id", "offset", "limit", "timeout", "reply_to_message_id"}
_TEXT_FIELDS = {"text", "caption", "parse_mode", "callback_query_id", "inline_message_id"}
LONG_POLL_CAP_S = 1.0  # a getUpdates waits at most this long (Telegram: up to ``timeout``)


@dataclass
class ApiCall:
    """One request the bot made, and what the fake answered."""

    method: str  # as requested, e.g. "sendMessage"
    params: dict[str, Any]
    files: dict[str, tuple[str, bytes]]  # parameter (e.g. "photo") → (file name, content)
    at: float  # time.monotonic() when it arrived
    status: int = 0  # the HTTP status answered
    result: Any = None  # the "result" answered (ok calls)

    @property
    def name(self) -> str:
        return self.method.lower()

    @property
    def ok(self) -> bool:
        return self.status == 200

    @property
    def chat_id(self) -> int | None:
        chat = self.params.get("chat_id")
        return chat if isinstance(chat, int) else None

    @property
    def text(self) -> str:
        """The visible text of a message, edit or caption ('' when none)."""
        body = self.params.get("text") or self.params.get("caption") or ""
        return plain_text(body) if self.params.get("parse_mode") == "HTML" else str(body)

    def buttons(self) -> list[tuple[str, str | None]]:
        """(label, callback data) of every inline button, row by row."""
        markup = self.params.get("reply_markup")
        rows = (markup.get("inline_keyboard") if isinstance(markup, dict) else None) or []
        return [(b.get("text"), b.get("callback_data")) for row in rows for b in row]


@dataclass
class _Failure:
    method: str  # lower case
    status: int
    description: str
    retry_after: int | None
    match: Callable[[ApiCall], bool] | None
    times: int | None  # None: every matching call
    html: bool  # answer an HTML page (a proxy's 502), not Telegram's JSON


@dataclass
class FakeBotApi:
    token: str = TOKEN
    calls: list[ApiCall] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)  # methods the fake does not know

    def __post_init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._runner: web.AppRunner | None = None
        self._failures: list[_Failure] = []
        self._blocked: set[int] = set()
        self._block_when: dict[int, Callable[[ApiCall], bool]] = {}
        self._updates: list[dict[str, Any]] = []
        self._update_ids = itertools.count(1)
        self._ids = itertools.count(1)
        self._new_update = asyncio.Event()
        self.messages: dict[tuple[int, int], dict[str, Any]] = {}  # (chat, id) → Message

    # --- serving ---------------------------------------------------------------------------
    async def listen(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/bot{token}/{method}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        await web.SockSite(self._runner, self._sock).start()

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        self._sock.close()

    async def _handle(self, request: web.Request) -> web.Response:
        call = ApiCall(request.match_info["method"], {}, {}, time.monotonic())
        await self._read(request, call)
        self.calls.append(call)
        if request.match_info["token"] != self.token:
            return self._answer(call, 401, {"description": "Unauthorized"})
        failure = self._failure_for(call)
        if failure is not None:
            if failure.html:
                call.status = failure.status
                body = f"<html><body><h1>{failure.status} {failure.description}</h1></body></html>"
                return web.Response(status=failure.status, text=body, content_type="text/html")
            extra: dict[str, Any] = {"description": failure.description}
            if failure.retry_after is not None:
                extra["parameters"] = {"retry_after": failure.retry_after}
            return self._answer(call, failure.status, extra)
        if call.name in SENDS and call.chat_id is not None:
            when = self._block_when.get(call.chat_id)
            if when is not None and when(call):
                self._blocked.add(call.chat_id)
            if call.chat_id in self._blocked:
                forbidden = {"description": "Forbidden: bot was blocked by the user"}
                return self._answer(call, 403, forbidden)
        problem = self._check_limits(call)
        if problem is not None:
            return self._answer(call, 400, {"description": f"Bad Request: {problem}"})
        if call.name == "getupdates":
            return self._answer(call, 200, {"result": await self._get_updates(call)})
        try:
            result = self._result(call)
        except KeyError:
            self.unknown.append(call.method)
            return self._answer(call, 404, {"description": "Not Found: method not found"})
        return self._answer(call, 200, {"result": result})

    async def _read(self, request: web.Request, call: ApiCall) -> None:
        raw: dict[str, Any] = dict(request.query)
        if request.content_type == "application/json":
            raw.update(await request.json())
        elif request.can_read_body:
            for key, value in (await request.post()).items():
                if isinstance(value, web.FileField):
                    call.files[key] = (value.filename, value.file.read())
                else:
                    raw[key] = value
        for key, value in raw.items():
            call.params[key] = _decode(key, value)
            attached = value.removeprefix("attach://") if isinstance(value, str) else ""
            if value != attached and attached in call.files:  # "photo": "attach://<field>"
                call.files[key] = call.files.pop(attached)

    def _answer(self, call: ApiCall, status: int, extra: dict[str, Any]) -> web.Response:
        call.status = status
        if status == 200:
            call.result = extra["result"]
            return web.json_response({"ok": True, **extra})
        return web.json_response({"ok": False, "error_code": status, **extra}, status=status)

    def _failure_for(self, call: ApiCall) -> _Failure | None:
        for failure in self._failures:
            if failure.method != call.name or (failure.match and not failure.match(call)):
                continue
            if failure.times is not None:
                failure.times -= 1
                if failure.times == 0:
                    self._failures.remove(failure)
            return failure
        return None

    def _check_limits(self, call: ApiCall) -> str | None:
        text, caption = call.params.get("text"), call.params.get("caption")
        if isinstance(text, str) and len(text) > TEXT_LIMIT:
            return "message is too long"
        if isinstance(caption, str) and len(caption) > CAPTION_LIMIT:
            return "message caption is too long"
        if call.params.get("parse_mode") == "HTML":
            for body in (text, caption):
                if isinstance(body, str) and (error := html_error(body)):
                    return f"can't parse entities: {error}"
        return None

    async def _get_updates(self, call: ApiCall) -> list[dict[str, Any]]:
        offset = call.params.get("offset")
        if isinstance(offset, int):  # everything below the offset is confirmed
            self._updates = [u for u in self._updates if u["update_id"] >= offset]
        if not self._updates:
            wait = min(float(call.params.get("timeout") or 0), LONG_POLL_CAP_S)
            self._new_update.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._new_update.wait(), wait)
        return list(self._updates[: int(call.params.get("limit") or 100)])

    def _result(self, call: ApiCall) -> Any:
        name, p = call.name, call.params
        if name in _TRUE:
            return True
        if name == "getme":
            return BOT_USER
        if name in SENDS:
            message = self._message(p["chat_id"], next(self._ids), p.get("reply_markup"))
            if name == "sendmessage":
                message["text"] = call.text
            elif name == "sendphoto":
                (filename, data) = call.files.get("photo", ("", b""))
                message["photo"] = [
                    {"file_id": f"photo{message['message_id']}", "file_unique_id": "p",
                     "width": 800, "height": 400, "file_size": len(data)},
                ]  # fmt: skip
            else:
                (filename, data) = call.files.get("document", ("", b""))
                message["document"] = {
                    "file_id": f"doc{message['message_id']}",
                    "file_unique_id": "d",
                    "file_name": filename,
                    "file_size": len(data),
                }
            if p.get("caption"):
                message["caption"] = call.text
            return message
        if name in ("editmessagetext", "editmessagereplymarkup"):
            if "inline_message_id" in p:
                return True
            stored = self.messages[(p["chat_id"], p["message_id"])]
            if name == "editmessagetext":
                stored["text"] = call.text
            stored.pop("reply_markup", None)
            if p.get("reply_markup"):
                stored["reply_markup"] = p["reply_markup"]
            stored["edit_date"] = _now()
            return stored
        raise KeyError(call.method)

    def _message(self, chat_id: int, message_id: int, markup: Any) -> dict[str, Any]:
        message: dict[str, Any] = {
            "message_id": message_id,
            "date": _now(),
            "chat": {"id": chat_id, "type": "private"},
            "from": BOT_USER,
        }
        if isinstance(markup, dict) and "inline_keyboard" in markup:
            message["reply_markup"] = markup
        self.messages[(chat_id, message_id)] = message
        return message

    # --- what a test does ------------------------------------------------------------------
    def fail(
        self,
        method: str,
        status: int,
        description: str,
        *,
        retry_after: int | None = None,
        times: int | None = 1,
        match: Callable[[ApiCall], bool] | None = None,
        html: bool = False,
    ) -> None:
        """Answer the next ``times`` calls of ``method`` (None: all) that ``match`` with this
        error."""
        self._failures.append(
            _Failure(method.lower(), status, description, retry_after, match, times, html)
        )

    def block(self, chat_id: int, when: Callable[[ApiCall], bool] | None = None) -> None:
        """The user blocks the bot: every send to ``chat_id`` gets 403, from the first one
        ``when`` accepts (None: from now)."""
        if when is None:
            self._blocked.add(chat_id)
        else:
            self._block_when[chat_id] = when

    def send(self, user: dict[str, Any], text: str) -> None:
        """``user`` writes ``text`` to the bot (delivered with the next getUpdates)."""
        message: dict[str, Any] = {
            "message_id": next(self._ids),
            "date": _now(),
            "chat": {"id": user["id"], "type": "private", "first_name": user["first_name"]},
            "from": user,
            "text": text,
        }
        if text.startswith("/"):
            length = len(text.split(maxsplit=1)[0])
            message["entities"] = [{"type": "bot_command", "offset": 0, "length": length}]
        self._queue({"message": message})

    def press(self, user: dict[str, Any], sent: ApiCall, label: str) -> None:
        """``user`` presses the inline button ``label`` under the message ``sent`` created."""
        data = dict(sent.buttons()).get(label)
        assert data is not None, f"no button {label!r} in {sent.buttons()}"
        query = {
            "id": str(next(self._ids)),
            "from": user,
            "chat_instance": f"ci{user['id']}",
            "message": sent.result,
            "data": data,
        }
        self._queue({"callback_query": query})

    def _queue(self, update: dict[str, Any]) -> None:
        self._updates.append({"update_id": next(self._update_ids), **update})
        self._new_update.set()

    def since(self, start: int = 0) -> list[ApiCall]:
        return self.calls[start:]

    async def wait_for(
        self, what: str, accept: Callable[[ApiCall], bool], start: int = 0, timeout: float = 30
    ) -> ApiCall:
        """The first call from ``self.calls[start:]`` that ``accept`` takes; waits for it."""
        deadline = time.monotonic() + timeout
        while True:
            for call in self.calls[start:]:
                if accept(call):
                    return call
            if time.monotonic() > deadline:
                seen = "\n".join(
                    f"  {c.method} {c.status} {c.chat_id} {c.text[:80]!r}" for c in self.calls[-40:]
                )
                raise AssertionError(f"no {what} within {timeout} s; the last calls:\n{seen}")
            await asyncio.sleep(0.05)


def _decode(key: str, value: Any) -> Any:
    """A form field as Telegram reads it: JSON-serialized objects and numbers decoded."""
    if not isinstance(value, str) or key in _TEXT_FIELDS:
        return value
    if key in _INT_FIELDS and value.lstrip("-").isdigit():
        return int(value)
    if value[:1] in ("{", "[") or value in ("true", "false"):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _now() -> int:
    return int(dt.datetime.now(dt.UTC).timestamp())


def user(user_id: int, first_name: str) -> dict[str, Any]:
    """A Telegram User object for a person."""
    return {"id": user_id, "is_bot": False, "first_name": first_name, "language_code": "en"}
