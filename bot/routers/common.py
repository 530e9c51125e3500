"""Helpers the feature routers share: argument parsing and portfolio resolution."""

from __future__ import annotations

import datetime as dt
import shlex
from typing import Any

from bot.commands import usage
from dal.database import ScopedDal
from dal.errors import NotFound
from dal.periods import Period, PeriodError, parse_period


class UsageError(Exception):
    """Bad arguments: the reply is the reason and the command's usage line."""

    def __init__(self, command: str, reason: str | None = None) -> None:
        self.command = command
        self.reason = reason
        super().__init__(reason or command)

    def reply(self) -> str:
        text = usage(self.command)
        return f"{self.reason}\n{text}" if self.reason else text


def args_of(command: Any) -> list[str]:
    """The command's arguments, split on spaces; "…" quotes keep spaces in one argument
    (``cron="*/5 * * * *"``). An argument with a lone quote (a name like Bob's) is split on
    spaces only."""
    if command is None:
        return []
    try:
        return shlex.split(command.args or "")
    except ValueError:
        return (command.args or "").split()


def with_subcommand(args: list[str]) -> list[str]:
    """``args`` with the first, the subcommand (add, set, on, off, del, run), in lower case:
    commands and their subcommands ignore case."""
    return [args[0].lower(), *args[1:]] if args else args


def name_of(command: Any) -> str | None:
    """The command's whole argument as one name (a portfolio's), with or without "…"
    quotes: ``/positions My Stocks`` and ``/positions "My Stocks"`` name the same one."""
    return " ".join(args_of(command)) or None


async def resolve_portfolio(dal: ScopedDal, name: str | None) -> Any:
    """The named portfolio (NotFound if the user has none by that name) or the current one."""
    if name:
        return await dal.portfolios.by_name(name)
    return await dal.portfolios.current()


async def has_portfolio(dal: ScopedDal, name: str) -> bool:
    try:
        await dal.portfolios.by_name(name)
    except NotFound:
        return False
    return True


async def period_and_portfolio(
    dal: ScopedDal, args: list[str], zone: str, command: str, default: str
) -> tuple[Period, str, Any]:
    """The ``[period] [portfolio]`` arguments: the period, the word it was given by (or
    ``default``) and the portfolio (the current one when none is named). A lone portfolio
    name ("/pnl Main") is read as the name, with the default period."""
    now = dt.datetime.now(dt.UTC)
    word = args[0] if args else default
    try:
        period, rest = parse_period(word, zone, now), args[1:]
    except PeriodError as exc:
        word, period, rest = default, parse_period(default, zone, now), args
        if not await has_portfolio(dal, " ".join(args)):
            raise UsageError(command, str(exc)) from None
    return period, word, await resolve_portfolio(dal, " ".join(rest) or None)
