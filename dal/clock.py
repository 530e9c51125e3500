"""Time: aware UTC now, and a user's local midnights (day boundaries are the owner's)."""

from __future__ import annotations

import datetime as dt


def local_midnight(at: dt.datetime, zone: str, days: int = 0) -> dt.datetime:
    """The midnight that starts the local day ``days`` after ``at``'s day in ``zone``, in UTC
    (``days=0``: today's start, for daily loss; ``days=1``: when a DAY order ends)."""
    from zoneinfo import ZoneInfo

    tz = ZoneInfo(zone)
    day = at.astimezone(tz).date() + dt.timedelta(days=days)
    return dt.datetime.combine(day, dt.time(), tz).astimezone(dt.UTC)


def utc_now() -> dt.datetime:
    """The current time as an aware UTC datetime (microsecond precision, like the columns)."""
    return dt.datetime.now(dt.UTC)
