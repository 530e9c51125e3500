"""Every command with its usage and help text: one list serves /help and set_my_commands."""

from __future__ import annotations

from dataclasses import dataclass

from aiogram.types import BotCommand


@dataclass(frozen=True)
class Cmd:
    name: str
    usage: str
    help: str
    admin: bool = False


COMMANDS = [
    Cmd("start", "/start", "register (an admin approves you)"),
    Cmd("help", "/help", "this list"),
    Cmd("portfolio", "/portfolio [name]", "show or switch the current portfolio"),
    Cmd("portfolios", "/portfolios", "list your portfolios"),
    Cmd("tz", "/tz <IANA zone>", "set your time zone, e.g. /tz Europe/Berlin"),
    Cmd("orders", "/orders [status] [portfolio]", "open orders (or NEW, FILLED, CANCELED, …)"),
    Cmd("positions", "/positions [portfolio]", "positions: quantity, average price, realized PnL"),
    Cmd(
        "pnl",
        "/pnl [period] [portfolio]",
        "realized PnL, fees and a chart; period: today, 7d, 30d, mtd, ytd, all, A..B",
    ),
    Cmd("risk", "/risk [portfolio]", "risk policies in effect and the latest breaches"),
    Cmd("alerts", "/alerts", "your alerts"),
    Cmd("schedules", "/schedules", "your scheduled reports"),
    Cmd("screeners", "/screeners", "your screeners"),
    Cmd("strategies", "/strategies", "your strategies and whether they run"),
    Cmd(
        "strategy",
        "/strategy start|stop <name> [version]",
        "start or stop a strategy on the current portfolio (latest active version)",
    ),
    Cmd("pending", "/pending", "users waiting for approval", admin=True),
    Cmd("approve", "/approve <telegram_id|@username>", "approve a user", admin=True),
    Cmd("revoke", "/revoke <telegram_id|@username>", "withdraw a user's approval", admin=True),
    Cmd("users", "/users", "all users", admin=True),
    Cmd("brokers", "/brokers", "brokers", admin=True),
    Cmd("addbroker", "/addbroker CODE Name", "add a broker", admin=True),
    Cmd("instruments", "/instruments", "instruments", admin=True),
    Cmd(
        "addinstrument",
        "/addinstrument SYMBOL EXCHANGE TYPE CURRENCY [tick] [lot]",
        "add an instrument, e.g. /addinstrument ETHUSDT BINANCE CRYPTO USDT 0.01 0.0001",
        admin=True,
    ),
    Cmd("accounts", "/accounts <telegram_id|@username>", "a user's accounts", admin=True),
]
BY_NAME = {c.name: c for c in COMMANDS}


def usage(name: str) -> str:
    cmd = BY_NAME[name]
    return f"Usage: {cmd.usage} — {cmd.help}"


def bot_commands() -> list[BotCommand]:
    return [BotCommand(command=c.name, description=c.help[:256]) for c in COMMANDS if not c.admin]


def help_text(is_admin: bool) -> str:
    from bot.text import q

    lines = ["<b>tradebook commands</b>"]
    lines += [f"{q(c.usage)} — {q(c.help)}" for c in COMMANDS if not c.admin]
    if is_admin:
        lines.append("\n<b>Admin</b>")
        lines += [f"{q(c.usage)} — {q(c.help)}" for c in COMMANDS if c.admin]
    return "\n".join(lines)
