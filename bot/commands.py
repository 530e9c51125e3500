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
    Cmd(
        "portfolio",
        "/portfolio [name] | /portfolio add NAME ACCOUNT",
        "show or switch the current portfolio, or add one on an account",
    ),
    Cmd("portfolios", "/portfolios", "list your portfolios"),
    Cmd("tz", "/tz <IANA zone>", "set your time zone, e.g. /tz Europe/Berlin"),
    Cmd("orders", "/orders [status|all] [portfolio]", "open orders (or all, NEW, FILLED, …)"),
    Cmd("positions", "/positions [portfolio]", "positions: quantity, average price, realized PnL"),
    Cmd(
        "pnl",
        "/pnl [period] [portfolio]",
        "realized PnL, fees and a chart; period: today, 7d, 30d, mtd, ytd, all, A..B",
    ),
    Cmd("balance", "/balance [portfolio]", "per asset: free, reserved, total, value; equity"),
    Cmd(
        "status",
        "/status [portfolio]",
        "open positions with mark, unrealized PnL, holding time and how to close each",
    ),
    Cmd(
        "profit",
        "/profit [period] [portfolio]",
        "realized and unrealized PnL, return, win rate, profit factor, max drawdown",
    ),
    Cmd("daily", "/daily [n]", "realized PnL, trades and equity per day (last n, default 7)"),
    Cmd("weekly", "/weekly [n]", "the same per week (default 4)"),
    Cmd("monthly", "/monthly [n]", "the same per month (default 6)"),
    Cmd(
        "performance",
        "/performance [period] [portfolio]",
        "per instrument: realized PnL, trades, win rate",
    ),
    Cmd("risk", "/risk [portfolio]", "risk policies in effect and the latest breaches"),
    Cmd("alerts", "/alerts", "your alerts"),
    Cmd("schedules", "/schedules", "your scheduled reports"),
    Cmd("screeners", "/screeners", "your screeners"),
    Cmd(
        "buy",
        "/buy SYMBOL QTY [@PRICE] [stop=PRICE] [tif=GTC|IOC|FOK|DAY]",
        "buy in the current portfolio (market without a price), e.g. /buy BTCUSDT 0.01 @60000",
    ),
    Cmd(
        "sell",
        "/sell SYMBOL QTY [@PRICE] [stop=PRICE] [tif=GTC|IOC|FOK|DAY]",
        "sell what the current portfolio holds, e.g. /sell BTCUSDT 0.01",
    ),
    Cmd("cancel", "/cancel ORDER_ID", "cancel an open order, e.g. /cancel 12"),
    Cmd(
        "close",
        "/close SYMBOL [strategy]",
        "close your manual position in SYMBOL, or a strategy's (stopping it first)",
    ),
    Cmd(
        "fill",
        "/fill SYMBOL SIDE QTY PRICE [fee CUR AMT] [at TIME]",
        "record a trade done elsewhere, e.g. /fill AAPL BUY 10 189.5 fee USD 1 at 2024-05-01T15:30",
    ),
    Cmd(
        "stopall",
        "/stopall [flatten]",
        "kill switch: stop all strategies, cancel all open orders (flatten: close positions)",
    ),
    Cmd(
        "account",
        "/account [add BROKER NAME [account_uid] [currency] | test|live|testnet NAME]",
        "your broker accounts, add one (e.g. /account add BINANCE Spot main-1 USDT), check "
        "an exchange account's keys, or switch it between testnet and live",
    ),
    Cmd("deposit", "/deposit AMOUNT [currency]", "add cash to the current portfolio"),
    Cmd("withdraw", "/withdraw AMOUNT [currency]", "take cash out of the current portfolio"),
    Cmd(
        "policy",
        "/policy list | add|set|on|off|del SCOPE NAME key=value…",
        "risk limits (set changes the keys given, key=none removes one), e.g. "
        "/policy add portfolio Main max_daily_loss=0.03",
    ),
    Cmd(
        "alert",
        "/alert add price|position|risk|indicator … | /alert set ID key=value… | "
        "/alert on|off|del ID",
        "alerts, e.g. /alert add price BTCUSDT above 70000",
    ),
    Cmd(
        "schedule",
        '/schedule add "CRON" report REPORT [period] | set ID "CRON" | on|off|del ID',
        "scheduled reports (cron in UTC; REPORT: pnl, positions, orders, risk, balance, status, "
        'profit, performance, daily, weekly, monthly), e.g. /schedule add "0 18 * * *" report '
        "pnl today",
    ),
    Cmd(
        "screener",
        "/screener add NAME key=value… | set ID key=value… | run|on|off|del ID",
        'screeners (run: now), e.g. /screener add cheap max_price=1 cron="*/5 * * * *"',
    ),
    Cmd(
        "export",
        "/export trades|orders|pnl|balances|equity [period]",
        "a CSV for accounting, e.g. /export trades ytd",
    ),
    Cmd("mute", "/mute", "stop notifications (fills, breaches, alerts)"),
    Cmd("unmute", "/unmute", "notifications back on"),
    Cmd(
        "notify",
        "/notify [fills|alerts|reports|risk on|off]",
        "each kind of notification on or off, e.g. /notify reports off",
    ),
    Cmd("strategies", "/strategies", "your strategies and whether they run"),
    Cmd(
        "strategy",
        "/strategy start|stop <name> [version]",
        "start or stop a strategy on the current portfolio (latest active version)",
    ),
    Cmd("pending", "/pending", "users waiting for approval", admin=True),
    Cmd("approve", "/approve <telegram_id|@username>", "approve a user", admin=True),
    Cmd("revoke", "/revoke <telegram_id|@username>", "withdraw a user's approval", admin=True),
    Cmd(
        "deactivate",
        "/deactivate <telegram_id|@username>",
        "lock a user out (their data stays)",
        admin=True,
    ),
    Cmd("reactivate", "/reactivate <telegram_id|@username>", "let a user back in", admin=True),
    Cmd("promote", "/promote <telegram_id|@username>", "make a user an admin", admin=True),
    Cmd(
        "demote",
        "/demote <telegram_id|@username>",
        "take a user's admin rights (never the last admin's)",
        admin=True,
    ),
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
