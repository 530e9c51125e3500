"""One strict parser per kind of chat argument: ids, counts and amounts. ASCII digits in the
documented forms only — `1_000`, `1e5`, `٣` and `+inf` are refused with one clear line, never
read as something else — and the value, not the raw text, is what replies echo."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from bot.routers.common import UsageError
from dal.decimals import AmountError, check_amount

_ID = re.compile(r"#?[0-9]{1,18}", re.ASCII)
_COUNT = re.compile(r"[0-9]{1,6}", re.ASCII)
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)", re.ASCII)
SHOWN = 40  # characters of a bad argument quoted back


def shown(text: str) -> str:
    return repr(text if len(text) <= SHOWN else text[:SHOWN] + "…")


def is_id(text: str) -> bool:
    """Whether ``text`` is a row id as the chat writes it: 12 or #12."""
    return _ID.fullmatch(text) is not None


def parse_id(text: str, command: str) -> int:
    if not is_id(text):
        raise UsageError(command, f"{shown(text)} is not an id (digits, e.g. 12 or #12)")
    return int(text.lstrip("#"))


def parse_count(text: str, command: str, low: int, high: int) -> int:
    if _COUNT.fullmatch(text) is None or not low <= int(text) <= high:
        raise UsageError(command, f"{shown(text)}: give a whole number from {low} to {high}")
    return int(text)


def parse_amount(text: str, what: str, command: str, *, positive: bool = True) -> Decimal:
    """A decimal amount written plainly: digits with at most one point (no exponent, no
    separators), that fits the ledger exactly (never rounded)."""
    if _DECIMAL.fullmatch(text) is None:
        raise _not_plain(text, what, command)
    try:
        value = check_amount(text)
    except AmountError as exc:
        raise UsageError(command, f"{what}: {exc}") from None
    if positive and value <= 0:
        raise UsageError(command, f"{what} must be positive")
    return value


def plain_or_text(text: str, what: str, command: str) -> str:
    """A value handed on as text (a key=value setting, an alert's threshold): refused when
    it is a number written other than plainly (``1e5``, ``1_000``), which would otherwise be
    read as one further on. Words (``block``, ``inf``: the DAL refuses that as an amount)
    pass as they are."""
    try:
        number = Decimal(text)
    except InvalidOperation:
        return text
    if number.is_finite() and _DECIMAL.fullmatch(text) is None:
        raise _not_plain(text, what, command)
    return text


def _not_plain(text: str, what: str, command: str) -> UsageError:
    return UsageError(
        command, f"{what}: {shown(text)} is not a plain decimal number (e.g. 0.5 or 1200)"
    )
