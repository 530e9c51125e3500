"""Formatting helpers: escaping, exact numbers for display, and replies that fit Telegram."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from decimal import ROUND_HALF_EVEN, Decimal
from html import escape
from zoneinfo import ZoneInfo

from dal.decimals import canonical_decimal

TEXT_LIMIT = 4096
DISPLAY_PLACES = 8


def q(value: object) -> str:
    """Escape user-supplied (or any) text for HTML parse mode."""
    return escape(str(value), quote=False)


def num(value: Decimal | None, places: int = DISPLAY_PLACES) -> str:
    """A decimal for display: rounded half-even to ``places`` only if it has more, no exponent,
    no trailing zeros. The exact value stays in the database and in exports."""
    if value is None:
        return "-"
    if -value.as_tuple().exponent > places:  # type: ignore[operator]  # finite values only: the exponent is an int
        value = value.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_EVEN)
    return canonical_decimal(value)


def signed(value: Decimal, places: int = DISPLAY_PLACES) -> str:
    text = num(value, places)
    return text if text.startswith("-") or text == "0" else f"+{text}"


def local_time(value: dt.datetime | None, zone: str, fmt: str = "%Y-%m-%d %H:%M") -> str:
    if value is None:
        return "-"
    return value.astimezone(ZoneInfo(zone)).strftime(fmt)


def pre_pages(
    title: str, lines: Sequence[str], limit: int = TEXT_LIMIT, footer: str = ""
) -> list[str]:
    """Split monospace ``lines`` into messages of at most ``limit`` characters, cutting only
    between entries (an entry may span several lines and is never cut); every message is
    complete HTML (its own <pre> block)."""
    pages: list[list[str]] = [[]]
    overhead = len(title) + len("\n<pre></pre>") + len(footer) + 24  # room for "(part i/n)"
    size = overhead
    for line in lines:
        escaped = q(line)
        if len(escaped) + overhead > limit:  # one absurdly long line: cut it, never the markup
            escaped = escaped[: limit - overhead - 1]
        if pages[-1] and size + len(escaped) + 1 > limit:
            pages.append([])
            size = overhead
        pages[-1].append(escaped)
        size += len(escaped) + 1
    total = len(pages)
    out = []
    for i, page in enumerate(pages, 1):
        head = title if total == 1 else f"{title} (part {i}/{total})"
        body = "\n".join(page)
        out.append(f"{head}\n<pre>{body}</pre>{footer}" if page else f"{head}{footer}")
    return out


def join_blocks(
    blocks: Iterable[str], limit: int = TEXT_LIMIT, separator: str = "\n\n"
) -> list[str]:
    """Pack whole HTML blocks (each complete markup) into as few messages as fit."""
    out: list[str] = []
    current = ""
    for block in blocks:
        candidate = f"{current}{separator}{block}" if current else block
        if len(candidate) <= limit:
            current = candidate
            continue
        if current:
            out.append(current)
        current = block[:limit]
    if current:
        out.append(current)
    return out
