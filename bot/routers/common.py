"""Helpers the feature routers share: argument parsing and portfolio resolution."""

from __future__ import annotations

import shlex
from typing import Any

from bot.commands import usage
from dal.database import ScopedDal


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


async def resolve_portfolio(dal: ScopedDal, name: str | None) -> Any:
    """The named portfolio (NotFound if the user has none by that name) or the current one."""
    if name:
        return await dal.portfolios.by_name(name)
    return await dal.portfolios.current()
