"""Report periods (`/pnl 7d`), with day boundaries in the user's time zone."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from zoneinfo import ZoneInfo

PERIOD_HELP = "today, 7d, 30d, mtd, ytd, all or YYYY-MM-DD..YYYY-MM-DD"
_RANGE = re.compile(r"^(\d{4}-\d{2}-\d{2})\.\.(\d{4}-\d{2}-\d{2})$")
_DAYS = re.compile(r"^(\d{1,4})d$")


class PeriodError(ValueError):
    pass


@dataclass(frozen=True)
class Period:
    label: str
    since: dt.datetime | None  # UTC, inclusive
    until: dt.datetime  # UTC, exclusive


def parse_period(text: str | None, zone: str, now: dt.datetime) -> Period:
    tz = ZoneInfo(zone)
    local_now = now.astimezone(tz)
    today = local_now.date()

    def midnight(day: dt.date) -> dt.datetime:
        return dt.datetime.combine(day, dt.time(), tz).astimezone(dt.UTC)

    word = (text or "today").strip().lower()
    tomorrow = midnight(today + dt.timedelta(days=1))
    if word == "today":
        return Period("today", midnight(today), tomorrow)
    if word == "mtd":
        return Period("month to date", midnight(today.replace(day=1)), tomorrow)
    if word == "ytd":
        return Period("year to date", midnight(today.replace(month=1, day=1)), tomorrow)
    if word == "all":
        return Period("all time", None, tomorrow)
    if m := _DAYS.match(word):
        days = int(m.group(1))
        if not 1 <= days <= 3660:
            raise PeriodError("give between 1d and 3660d")
        start = today - dt.timedelta(days=days - 1)
        return Period(f"last {days} days", midnight(start), tomorrow)
    if m := _RANGE.match(word):
        try:
            first = dt.date.fromisoformat(m.group(1))
            last = dt.date.fromisoformat(m.group(2))
        except ValueError:
            raise PeriodError(f"{word!r} has an impossible date") from None
        if last < first:
            raise PeriodError("the range ends before it starts")
        return Period(f"{first}..{last}", midnight(first), midnight(last + dt.timedelta(days=1)))
    raise PeriodError(f"unknown period {text!r}; use {PERIOD_HELP}")
