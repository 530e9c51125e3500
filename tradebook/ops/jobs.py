"""Backups and maintenance on the schedules from settings, in the bot's event loop.

``asyncio.create_task(run_scheduled_jobs(settings, db))`` from ``tradebook run``. Schedules are
cron expressions in UTC (``TRADEBOOK_BACKUP_SCHEDULE``, ``TRADEBOOK_MAINTAIN_SCHEDULE``; empty
= off). Each run happens in a worker thread, so the bot keeps answering; a failing run is
logged and the loop carries on with the next one. On PostgreSQL no backup job runs (pg_dump is
the tool, see docs/operations.md); maintenance runs ``ANALYZE``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from croniter import croniter

from tradebook.ops.backup import backup_sqlite, prune
from tradebook.ops.maintain import maintain_database
from tradebook.ops.sqlite_access import sqlite_path

log = logging.getLogger("tradebook.ops")
MAX_SLEEP_SECONDS = 60.0  # wake at least once a minute, so clock jumps are noticed


@dataclass
class Job:
    name: str
    cron: str
    action: Callable[[], Awaitable[str]]
    next_run: dt.datetime

    def schedule_after(self, now: dt.datetime) -> None:
        self.next_run = croniter(self.cron, now).get_next(dt.datetime)


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


async def backup_now(settings: Any) -> str:
    """One scheduled backup plus retention; returns a summary line."""
    path = sqlite_path(settings.database_url)
    assert path is not None
    made = await asyncio.to_thread(backup_sqlite, path, settings.backup_dir)
    pruned = await asyncio.to_thread(
        prune, settings.backup_dir, settings.backup_keep_hourly, settings.backup_keep_daily
    )
    return f"backup {made} (kept {len(pruned.kept)}, pruned {len(pruned.deleted)})"


async def maintain_now(settings: Any, url: str) -> str:
    report = await maintain_database(url, settings.maintain_vacuum_free_percent)
    return "; ".join(report.lines())


def build_jobs(settings: Any, db: Any, now: dt.datetime) -> list[Job]:
    url = getattr(db, "url", None) or settings.database_url
    jobs = []
    if settings.backup_schedule:
        if sqlite_path(url) is not None:
            jobs.append(Job("backup", settings.backup_schedule, lambda: backup_now(settings), now))
        else:
            log.info("scheduled backups are for SQLite; on PostgreSQL use pg_dump")
    if settings.maintain_schedule:
        jobs.append(
            Job("maintain", settings.maintain_schedule, lambda: maintain_now(settings, url), now)
        )
    for job in jobs:
        job.schedule_after(now)
    return jobs


async def run_due(jobs: list[Job], now: dt.datetime) -> None:
    """Run every job whose time has come; a failure is logged and the others still run."""
    for job in jobs:
        if job.next_run > now:
            continue
        try:
            summary = await job.action()
            log.info("scheduled %s done: %s", job.name, summary, extra={"job": job.name})
        except Exception:
            log.exception("scheduled %s failed; will try again next time", job.name,
                          extra={"job": job.name})  # fmt: skip
        finally:
            job.schedule_after(now)


async def run_scheduled_jobs(
    settings: Any,
    db: Any,
    *,
    stop: asyncio.Event | None = None,
    clock: Callable[[], dt.datetime] = _utc_now,
) -> None:
    """Run backups and maintenance on their schedules until cancelled (or ``stop`` is set)."""
    stop = stop or asyncio.Event()
    jobs = build_jobs(settings, db, clock())
    if not jobs:
        return
    for job in jobs:
        log.info("scheduled %s: %s (UTC), next %s", job.name, job.cron,
                 job.next_run.isoformat(), extra={"job": job.name})  # fmt: skip
    while not stop.is_set():
        await run_due(jobs, clock())
        wait = (min(j.next_run for j in jobs) - clock()).total_seconds()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), max(0.0, min(wait, MAX_SLEEP_SECONDS)))
