"""/alerts, /schedules, /screeners: the user's own alerts and their companions."""

from __future__ import annotations

from typing import Any

from aiogram import Router
from aiogram.filters import Command
from aiogram.types import Message

from bot.text import join_blocks, local_time, q
from dal.configs import alert_text, key_values_text, schedule_text
from dal.database import ScopedDal


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
            f"#{a.id} {q(alert_text(a.type, a.config_json))} — {_state(a)}"
            for a in await dal.alerts.list()
        ]
        await _answer_list(message, "<b>Your alerts</b>", lines)

    @r.message(Command("schedules", ignore_case=True))
    async def schedules(message: Message, dal: ScopedDal) -> None:
        lines = [
            f"#{s.id} {q(schedule_text(s.config_json))} at <code>{q(s.cron)}</code> (UTC), "
            f"{_state(s)}, next {local_time(s.next_run_at, 'UTC')} UTC"
            for s in await dal.schedules.list()
        ]
        await _answer_list(message, "<b>Your schedules</b>", lines)

    @r.message(Command("screeners", ignore_case=True))
    async def screeners(message: Message, dal: ScopedDal) -> None:
        lines = [
            f"#{s.id} {q(s.name)} — {_state(s)}: {q(key_values_text(s.config_json))}"
            for s in await dal.screeners.list()
        ]
        await _answer_list(message, "<b>Your screeners</b>", lines)

    return r
