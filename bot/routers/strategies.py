"""/strategies and /strategy start|stop <name> [version] (the owner's own strategies)."""

from __future__ import annotations

from aiogram import Router
from aiogram.filters import Command, CommandObject
from aiogram.types import Message

from bot.routers.common import UsageError, args_of
from bot.text import q
from dal.database import ScopedDal
from strategies.runtime import StrategyRuntime


def router() -> Router:
    r = Router(name="strategies")

    @r.message(Command("strategies", ignore_case=True))
    async def strategies(
        message: Message, dal: ScopedDal, strategies: StrategyRuntime | None = None
    ) -> None:
        versions = await dal.strategies.list(include_inactive=True)
        runs = {(run.strategy_id): run for run in await dal.strategy_runs.list()}
        lines = ["<b>Your strategies</b>"]
        for row in versions:
            run = runs.get(row.id)
            state = f"{run.status.lower()} on {q(run.portfolio_name)}" if run else "never run"
            active = "" if row.is_active else ", deactivated"
            lines.append(f"{q(row.name)} {q(row.version)} — {state}{active}")
        if strategies is not None:
            known = ", ".join(sorted(strategies.registry))
            lines.append(f"Available: {q(known)}. Start one with /strategy start NAME.")
        else:
            lines.append("Strategies are off in this tradebook (TRADEBOOK_STRATEGIES=off).")
        await message.answer("\n".join(lines))

    @r.message(Command("strategy", ignore_case=True))
    async def strategy(
        message: Message,
        command: CommandObject,
        dal: ScopedDal,
        strategies: StrategyRuntime | None = None,
    ) -> None:
        args = args_of(command)
        if len(args) not in (2, 3) or args[0] not in ("start", "stop"):
            raise UsageError("strategy")
        if strategies is None:
            await message.answer("Strategies are off in this tradebook.")
            return
        action, name = args[0], args[1]
        version = args[2] if len(args) == 3 else None
        if action == "start":
            row = await strategies.start_strategy(dal.actor, name, version)
            await message.answer(f"Started {q(row.name)} {q(row.version)}.")
        else:
            row = await strategies.stop_strategy(dal.actor, name, version)
            await message.answer(f"Stopped {q(row.name)} {q(row.version)}.")

    return r
