"""/alerts, /schedules, /screeners: the user's own alerts and their companions."""

from __future__ import annotations

import json
from typing import Any

from aiogram import Router
from aiogram.filters import Command
from aiogram.types import Message

from bot.text import join_blocks, local_time, q
from dal.database import ScopedDal


def _config(row: Any) -> str:
    return q(json.dumps(row.config_json, sort_keys=True, ensure_ascii=False))


def _state(row: Any) -> str:
    return "on" if row.is_active else "paused"


def router() -> Router:
    r = Router(name="alerts")

    @r.message(Command("alerts"))
    async def alerts(message: Message, dal: ScopedDal) -> None:
        rows = await dal.alerts.list()
        blocks = ["<b>Your alerts</b>"] + [
            f"#{a.id} {q(a.name)} — {a.type}, {_state(a)}\n<code>{_config(a)}</code>" for a in rows
        ]
        if not rows:
            blocks.append("None yet.")
        for text in join_blocks(blocks):
            await message.answer(text)

    @r.message(Command("schedules"))
    async def schedules(message: Message, dal: ScopedDal, user: Any) -> None:
        rows = await dal.schedules.list()
        blocks = ["<b>Your schedules</b> (cron in UTC)"] + [
            f"#{s.id} {q(s.name)} — <code>{q(s.cron)}</code>, {_state(s)}, next "
            f"{local_time(s.next_run_at, user.timezone)}\n<code>{_config(s)}</code>"
            for s in rows
        ]
        if not rows:
            blocks.append("None yet.")
        for text in join_blocks(blocks):
            await message.answer(text)

    @r.message(Command("screeners"))
    async def screeners(message: Message, dal: ScopedDal) -> None:
        rows = await dal.screeners.list()
        blocks = ["<b>Your screeners</b>"] + [
            f"#{s.id} {q(s.name)} — {_state(s)}\n<code>{_config(s)}</code>" for s in rows
        ]
        if not rows:
            blocks.append("None yet.")
        for text in join_blocks(blocks):
            await message.answer(text)

    return r
