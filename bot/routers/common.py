"""Helpers the feature routers share: argument parsing and portfolio resolution."""

from __future__ import annotations

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
    return (command.args or "").split() if command is not None else []


async def resolve_portfolio(dal: ScopedDal, name: str | None) -> Any:
    """The named portfolio (NotFound if the user has none by that name) or the current one."""
    if name:
        return await dal.portfolios.by_name(name)
    return await dal.portfolios.current()
