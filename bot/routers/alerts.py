"""/alerts, /schedules, /screeners: the user's own alerts and their companions."""

from __future__ import annotations

import json
from typing import Any

from aiogram import Router
from aiogram.filters import Command
from aiogram.types import Message

from bot.middleware import UserRow
from bot.text import join_blocks, local_time, q
from dal.database import ScopedDal


def _config(row: Any) -> str:
    return q(json.dumps(row.config_json, sort_keys=True, ensure_ascii=False))


def _state(row: Any) -> str:
    return "on" if row.is_active else "paused"


async def _answer_list(message: Message, title: str, lines: list[str]) -> None:
    """A titled list of the user's rows, split into messages that fit."""
    for text in join_blocks([title, *(lines or ["None yet."])]):
        await message.answer(text)


def router() -> Router:
    r = Router(name="alerts")

    @r.message(Command("alerts", ignore_case=True))
    async def alerts(message: Message, dal: ScopedDal) -> None:
        lines = [
            f"#{a.id} {q(a.name)} — {a.type}, {_state(a)}\n<code>{_config(a)}</code>"
            for a in await dal.alerts.list()
        ]
        await _answer_list(message, "<b>Your alerts</b>", lines)

    @r.message(Command("schedules", ignore_case=True))
    async def schedules(message: Message, dal: ScopedDal, user: UserRow) -> None:
        lines = [
            f"#{s.id} {q(s.name)} — <code>{q(s.cron)}</code>, {_state(s)}, next "
            f"{local_time(s.next_run_at, user.timezone)}\n<code>{_config(s)}</code>"
            for s in await dal.schedules.list()
        ]
        await _answer_list(message, "<b>Your schedules</b> (cron in UTC)", lines)

    @r.message(Command("screeners", ignore_case=True))
    async def screeners(message: Message, dal: ScopedDal) -> None:
        lines = [
            f"#{s.id} {q(s.name)} — {_state(s)}\n<code>{_config(s)}</code>"
            for s in await dal.screeners.list()
        ]
        await _answer_list(message, "<b>Your screeners</b>", lines)

    return r
