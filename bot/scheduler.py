"""Scheduled reports: due schedules run in the bot's event loop and go to the owner's chat.

``tick(now)`` does one pass (the tests drive it with their own clock); ``run`` calls it once a
minute. A missed run after downtime runs once (``mark_run`` moves the next run past now), and
a failing run is logged and never stops the loop. Reports go out like notifications
(``bot.notify.deliver``): an owner who blocked the bot (403) is marked unreachable, and the
reports of an unreachable owner are not tried (their runs still count as run).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiogram import Bot

from bot.account_reports import (
    DEFAULT_PERIODS,
    PERIOD_UNITS,
    balance_report,
    performance_report,
    periodic_report,
    profit_report,
    status_report,
)
from bot.notify import deliver, wants
from bot.reports import Reply, orders_report, pnl_report, positions_report, risk_report, send_reply
from bot.routers.common import resolve_portfolio
from dal.database import Database
from dal.periods import parse_period
from dal.scope import Actor
from dal.vocabulary import NotificationKind

REPORTS = NotificationKind.REPORTS

log = logging.getLogger("tradebook.scheduler")


async def build_report(db: Database, owner: Any, config: dict[str, Any], now: dt.datetime) -> Reply:
    dal = db.scoped(Actor.user(owner.id))
    portfolio = await resolve_portfolio(dal, config.get("portfolio"))
    report, zone = config["report"], owner.timezone
    if report == "pnl":
        return await pnl_report(dal, portfolio, parse_period(config.get("period"), zone, now), zone)
    if report == "positions":
        return await positions_report(dal, portfolio)
    if report == "orders":
        return await orders_report(dal, portfolio, None, 0, zone)
    if report == "balance":
        return await balance_report(dal, portfolio)
    if report == "status":
        return await status_report(dal, portfolio, now)
    if report in ("profit", "performance"):
        word = config.get("period") or "all"
        period = parse_period(word, zone, now)
        if report == "performance":
            return await performance_report(dal, portfolio, period, zone)
        return await profit_report(dal, portfolio, period, zone, None, word)
    if report in PERIOD_UNITS:
        count = DEFAULT_PERIODS[report]
        return await periodic_report(dal, portfolio, PERIOD_UNITS[report], count, zone, now)
    return await risk_report(dal, portfolio, zone)


class Scheduler:
    def __init__(
        self,
        db: Database,
        bot: Bot,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.db = db
        self.bot = bot
        self.clock = clock
        self.sleep = sleep

    async def tick(self, now: dt.datetime | None = None) -> int:
        """Run every due schedule once; returns how many ran (successfully or not)."""
        now = now or self.clock()
        async with self.db.session(Actor.system(), readonly=True) as s:
            due = await s.schedules.due(now)
        for schedule in due:
            await self._run_one(schedule, now)
        return len(due)

    async def _run_one(self, schedule: Any, now: dt.datetime) -> None:
        try:
            async with self.db.session(Actor.system(), readonly=True) as s:
                owner = await s.users.find_by_id(schedule.user_id)
            if (
                owner.is_active
                and owner.approved_at is not None
                and owner.unreachable_at is None
                and wants(owner, REPORTS)
            ):
                reply = await build_report(self.db, owner, schedule.config_json, now)
                await deliver(self.db, owner, lambda chat: send_reply(self.bot, chat, reply))
        except Exception:  # one failing schedule must not stop the others
            log.exception(
                "schedule #%s failed",
                schedule.id,
                extra={"correlation_id": f"schedule-{schedule.id}"},
            )
        finally:
            async with self.db.session(Actor.system()) as s:
                await s.schedules.mark_run(schedule.id, now)

    async def run(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:
                log.exception("scheduler tick failed")
            now = self.clock()
            await self.sleep(60 - now.second - now.microsecond / 1e6 + 0.05)
