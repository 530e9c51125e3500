"""Self-service configuration: accounts, portfolios, cash, policies, alerts, schedules,
screeners, notifications. Each command parses, calls the DAL (which validates with its typed
configs and audits) and answers; a bad argument gets the usage line with an example."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from aiogram import Router
from aiogram.filters import Command, CommandObject
from aiogram.types import CallbackQuery, Message
from aiogram.utils.keyboard import InlineKeyboardBuilder

from bot.args import is_id, parse_amount, parse_id, plain_or_text
from bot.callbacks import AccountLive
from bot.confirmations import Confirmations
from bot.routers.common import UsageError, args_of, with_subcommand
from bot.text import num, q
from dal.configs import alert_text, key_values_text, schedule_text
from dal.database import ScopedDal
from dal.errors import InvalidInput, TradebookError
from dal.vocabulary import EXCHANGE_GATEWAYS, NOTIFICATION_KINDS, venue
from strategies.alerts import screen
from trading.brokers.credentials import key_names
from trading.desk import OrderDesk

SCOPES = {"user": "USER", "portfolio": "PORTFOLIO", "strategy": "STRATEGY"}


@dataclass(frozen=True)
class LiveSwitch:
    """What the Confirm of /account live stands for."""

    account_id: int


async def ask_to_go_live(
    message: Message, account: Any, confirmations: Confirmations, dal: ScopedDal
) -> None:
    token = confirmations.hold(dal.actor.user_id or 0, LiveSwitch(account.id))
    keyboard = InlineKeyboardBuilder()
    keyboard.button(text="Go live", callback_data=AccountLive(action="ok", token=token))
    keyboard.button(text="Stay on testnet", callback_data=AccountLive(action="no", token=token))
    await message.answer(
        f"Switch {q(account.name)} to the LIVE exchange? Its orders will then trade real money.",
        reply_markup=keyboard.as_markup(),
    )


def key_values(tokens: list[str], command: str) -> dict[str, str]:
    out = {}
    for token in tokens:
        key, sep, value = token.partition("=")
        if not sep or not key or not value:
            raise UsageError(command, f"expected key=value, got {token!r}")
        key = key.strip().lower()
        out[key] = plain_or_text(value.strip(), key, command)
    return out


async def switch(message: Message, args: list[str], service: Any, noun: str) -> bool:
    """``on|off|del ID`` for alerts, schedules and screeners; False when ``args`` is not that."""
    if len(args) != 2 or args[0] not in ("on", "off", "del") or not is_id(args[1]):
        return False
    row_id = parse_id(args[1], noun.lower())
    if args[0] == "del":
        await service.delete(row_id)
        await message.answer(f"{noun} #{row_id} deleted.")
    else:
        row = await service.set_active(row_id, args[0] == "on")
        await message.answer(f"{noun} #{row.id} is {args[0]}.")
    return True


def router() -> Router:
    r = Router(name="configure")

    @r.message(Command("account", ignore_case=True))
    async def account(
        message: Message,
        command: CommandObject,
        dal: ScopedDal,
        desk: OrderDesk,
        confirmations: Confirmations,
    ) -> None:
        args = args_of(command)
        if not args:
            rows = await dal.accounts.list()
            lines = ["<b>Your accounts</b>"] + [
                f"#{a.id} {q(a.name)} — {venue(a.broker_code, a.trading_mode)} "
                f"{q(a.broker_code)} {q(a.account_uid or '')} {q(a.base_currency)}"
                for a in rows
            ]
            await message.answer("\n".join(lines))
            return
        action = args[0].lower()
        if action in ("test", "live", "testnet") and len(args) == 2:
            row = await dal.accounts.by_name(args[1])
            if action == "test":
                await message.answer(q(await desk.check_account(dal, row.id)))
            elif action == "testnet":
                row = await desk.set_trading_mode(dal, row.id, "testnet")
                await message.answer(f"Account {q(row.name)} now trades on the TESTNET.")
            else:
                await desk.check_trading_mode_switch(dal, row.id)  # refused before Confirm
                await ask_to_go_live(message, row, confirmations, dal)
            return
        if action != "add" or not 3 <= len(args) <= 5:
            raise UsageError("account")
        data = {"broker": args[1], "name": args[2]}
        if len(args) >= 4:
            data["account_uid"] = args[3]
        if len(args) == 5:
            data["base_currency"] = args[4]
        row = await dal.accounts.create(data)
        text = f"Added account {q(row.name)} ({q(args[1].upper())})."
        if args[1].upper() in EXCHANGE_GATEWAYS:
            key, secret = key_names(row.id)
            text += (
                f"\nIts API keys go in {key} and {secret} (environment), or in files "
                f"named {key.lower()} and {secret.lower()} in the secrets directory — "
                "never in this chat. It trades on the TESTNET until "
                f"/account live {q(row.name)}; /account test {q(row.name)} checks the keys."
            )
        await message.answer(text)

    @r.callback_query(AccountLive.filter())
    async def go_live(
        query: CallbackQuery,
        callback_data: AccountLive,
        dal: ScopedDal,
        desk: OrderDesk,
        confirmations: Confirmations,
    ) -> None:
        held = confirmations.release(dal.actor.user_id or 0, callback_data.token)
        if not isinstance(held, LiveSwitch):
            await query.answer("This was already handled or has expired.")
            return
        if callback_data.action == "no":
            text = "Still on the TESTNET."
        else:
            try:
                row = await desk.set_trading_mode(dal, held.account_id, "live")
                text = f"Account {q(row.name)} is LIVE: its orders now go to the real exchange."
            except TradebookError as exc:
                text = f"Not switched: {q(str(exc))}"
        await query.answer()
        if isinstance(query.message, Message):
            await query.message.edit_text(text)

    async def cash(kind: str, message: Message, command: CommandObject, dal: ScopedDal) -> None:
        args = args_of(command)
        name = "deposit" if kind == "DEPOSIT" else "withdraw"
        if not 1 <= len(args) <= 2:
            raise UsageError(name)
        portfolio = await dal.portfolios.current()
        currency = (
            args[1].upper()
            if len(args) == 2
            else (await dal.accounts.get(portfolio.account_id)).base_currency
        )
        amount = parse_amount(args[0], "amount", name)
        try:
            call = dal.cash.deposit if kind == "DEPOSIT" else dal.cash.withdraw
            await call(portfolio.id, amount, currency)
        except InvalidInput as exc:
            raise UsageError(name, str(exc)) from None
        held = {b.asset: b.free for b in await dal.valuation.balances(portfolio.id)}
        verb = "Deposited" if kind == "DEPOSIT" else "Withdrew"
        await message.answer(
            f"{verb} {num(amount)} {q(currency)} in {q(portfolio.name)}; free "
            f"{num(held.get(currency, Decimal(0)))} {q(currency)}."
        )

    @r.message(Command("deposit", ignore_case=True))
    async def deposit(message: Message, command: CommandObject, dal: ScopedDal) -> None:
        await cash("DEPOSIT", message, command, dal)

    @r.message(Command("withdraw", ignore_case=True))
    async def withdraw(message: Message, command: CommandObject, dal: ScopedDal) -> None:
        await cash("WITHDRAWAL", message, command, dal)

    @r.message(Command("policy", ignore_case=True))
    async def policy(message: Message, command: CommandObject, dal: ScopedDal) -> None:
        args = args_of(command)
        if args and args[0].lower() == "list":
            rows = await dal.risk.list_policies(include_inactive=True)
            lines = [
                f"#{p.id} {q(p.name)} — {'on' if p.is_active else 'off'}: "
                f"{q(key_values_text(p.config_json))}"
                for p in rows
            ]
            await message.answer("\n".join(["<b>Risk policies</b>", *lines]) if lines else
                                 "No risk policies. /policy add … creates one.")  # fmt: skip
            return
        if len(args) < 3 or args[0].lower() not in ("add", "set", "off", "on", "del"):
            raise UsageError("policy")
        action, scope_word, target = args[0].lower(), args[1].lower(), args[2]
        if scope_word not in SCOPES:
            raise UsageError("policy", "scope is user, portfolio or strategy")
        scope = SCOPES[scope_word]
        name = f"{scope_word} {target}"[:64]
        config = key_values(args[3:], "policy")
        if action == "add":
            scope_id = None
            if scope == "PORTFOLIO":
                scope_id = (await dal.portfolios.by_name(target)).id
            elif scope == "STRATEGY":
                scope_id = (await dal.strategies.latest(target)).id
            row = await dal.risk.create_policy(
                {"name": name, "scope_type": scope, "scope_id": scope_id, "config": config}
            )
            await message.answer(
                f"Policy #{row.id} {q(row.name)} added: {q(key_values_text(row.config_json))}."
            )
            return
        existing = [
            p for p in await dal.risk.list_policies(include_inactive=True) if p.name == name
        ]
        if not existing:
            raise UsageError("policy", f"no policy for {scope_word} {target}; add it first")
        if action == "set":
            # The keys given change (key=none removes one); the others are kept.
            merged = {**existing[0].config_json, **config}
            merged = {k: v for k, v in merged.items() if str(v).lower() != "none"}
            row = await dal.risk.update_policy(existing[0].id, merged)
            kept = sorted(set(existing[0].config_json) - set(config))
            note = f" (kept: {', '.join(kept)})" if kept else ""
            await message.answer(
                f"Policy {q(row.name)} now: {q(key_values_text(row.config_json))}{q(note)}."
            )
        elif action == "del":
            await dal.risk.delete_policy(existing[0].id)
            await message.answer(f"Policy {q(existing[0].name)} deleted.")
        else:
            row = await dal.risk.set_active(existing[0].id, action == "on")
            await message.answer(f"Policy {q(row.name)} is {'on' if row.is_active else 'off'}.")

    @r.message(Command("alert", ignore_case=True))
    async def alert(message: Message, command: CommandObject, dal: ScopedDal) -> None:
        args = with_subcommand(args_of(command))
        if await switch(message, args, dal.alerts, "Alert"):
            return
        if len(args) >= 3 and args[0] == "set" and is_id(args[1]):
            alert_id = parse_id(args[1], "alert")
            current = await dal.alerts.get(alert_id)
            merged = {**current.config_json, **key_values(args[2:], "alert")}
            try:
                row = await dal.alerts.update_config(alert_id, merged)
            except InvalidInput as exc:
                raise UsageError("alert", str(exc)) from None
            await message.answer(
                f"Alert #{row.id} now: {q(alert_text(row.type, row.config_json))}."
            )
            return
        if len(args) < 2 or args[0] != "add":
            raise UsageError("alert")
        kind = args[1].lower()
        rest = args[2:]
        if kind == "price" and len(rest) == 3:
            config: dict[str, Any] = {
                "symbol": rest[0].upper(),
                "op": rest[1].lower(),
                "price": plain_or_text(rest[2], "price", "alert"),
            }
            name = f"{rest[0].upper()} {rest[1].lower()} {rest[2]}"
        elif kind == "position" and len(rest) == 4:
            config = {
                "symbol": rest[0].upper(),
                "metric": rest[1].lower(),
                "op": rest[2].lower(),
                "value": plain_or_text(rest[3], "value", "alert"),
            }
            name = f"{rest[0].upper()} {rest[1].lower()} {rest[2].lower()} {rest[3]}"
        elif kind == "risk" and len(rest) == 3:
            config = {
                "metric": rest[0].lower(),
                "op": rest[1].lower(),
                "value": plain_or_text(rest[2], "value", "alert"),
            }
            name = f"risk {rest[0].lower()} {rest[1].lower()} {rest[2]}"
        elif kind == "indicator" and len(rest) == 3:
            config = {
                "symbol": rest[0].upper(),
                "indicator": "sma_cross",
                "fast": _int(rest[1]),
                "slow": _int(rest[2]),
            }
            name = f"{rest[0].upper()} sma {rest[1]}/{rest[2]}"
        else:
            raise UsageError("alert")
        portfolio = await dal.portfolios.current()
        try:
            row = await dal.alerts.create(
                {
                    "name": name[:64],
                    "type": kind.upper(),
                    "config": config,
                    "portfolio_id": portfolio.id,
                }
            )
        except InvalidInput as exc:
            raise UsageError("alert", str(exc)) from None
        await message.answer(f"Alert #{row.id} added: {q(alert_text(row.type, row.config_json))}.")

    @r.message(Command("schedule", ignore_case=True))
    async def schedule(message: Message, command: CommandObject, dal: ScopedDal) -> None:
        try:
            args = with_subcommand(shlex.split(command.args or ""))
        except ValueError:
            raise UsageError("schedule", "unbalanced quotes") from None
        if await switch(message, args, dal.schedules, "Schedule"):
            return
        if len(args) == 3 and args[0] == "set" and is_id(args[1]):
            try:
                row = await dal.schedules.update(parse_id(args[1], "schedule"), cron=args[2])
            except InvalidInput as exc:
                raise UsageError("schedule", str(exc)) from None
            await message.answer(f"Schedule #{row.id} now runs at {q(row.cron)} (UTC).")
            return
        if len(args) < 4 or args[0] != "add" or args[2].lower() != "report":
            raise UsageError("schedule")
        cron, report, period = args[1], args[3].lower(), (args[4] if len(args) > 4 else None)
        config = {"report": report, **({"period": period} if period else {})}
        name = f"{report} {period or ''} at {cron}".replace("  ", " ")[:64]
        try:
            row = await dal.schedules.create({"name": name, "cron": cron, "config": config})
        except InvalidInput as exc:
            raise UsageError("schedule", str(exc)) from None
        what = f"{schedule_text(row.config_json)} at {row.cron}"
        await message.answer(f"Schedule #{row.id} added: {q(what)} (cron in UTC).")

    @r.message(Command("screener", ignore_case=True))
    async def screener(
        message: Message, command: CommandObject, dal: ScopedDal, desk: OrderDesk
    ) -> None:
        args = with_subcommand(args_of(command))
        if await switch(message, args, dal.screeners, "Screener"):
            return
        if len(args) >= 3 and args[0] == "set" and is_id(args[1]):
            screener_id = parse_id(args[1], "screener")
            current = await dal.screeners.get(screener_id)
            merged = {**current.config_json, **key_values(args[2:], "screener")}
            try:
                row = await dal.screeners.update_config(screener_id, merged)
            except InvalidInput as exc:
                raise UsageError("screener", str(exc)) from None
            await message.answer(f"Screener #{row.id} now: {q(key_values_text(row.config_json))}.")
            return
        if len(args) == 2 and args[0].lower() == "run" and is_id(args[1]):
            row = await dal.screeners.get(parse_id(args[1], "screener"))  # owner-checked
            matches = await screen(dal, row.config_json, desk.market.marks)
            listing = ", ".join(f"{symbol} {num(price)}" for symbol, price in matches)
            await message.answer(
                f"Screener #{row.id} {q(row.name)}: {q(listing or 'no matches right now')}."
            )
            return
        if len(args) < 2 or args[0] != "add":
            raise UsageError("screener")
        config: dict[str, Any] = key_values(args[2:], "screener")
        if "symbols" in config:
            config["symbols"] = [s.upper() for s in config["symbols"].split(",") if s]
        try:
            row = await dal.screeners.create({"name": args[1], "config": config})
        except InvalidInput as exc:
            raise UsageError("screener", str(exc)) from None
        await message.answer(
            f"Screener #{row.id} {q(row.name)} added: {q(key_values_text(row.config_json))}."
        )

    @r.message(Command("mute", ignore_case=True))
    async def mute(message: Message, dal: ScopedDal) -> None:
        await dal.users.set_muted(True)
        await message.answer(
            "Notifications muted; scheduled reports still arrive (/schedule off ID stops "
            "one). /unmute turns them back on."
        )

    @r.message(Command("notify", ignore_case=True))
    async def notify(message: Message, command: CommandObject, dal: ScopedDal) -> None:
        args = [a.lower() for a in args_of(command)]
        if args and (len(args) != 2 or args[1] not in ("on", "off")):
            raise UsageError("notify")
        user = (
            await dal.users.set_notify(args[0], args[1] == "on") if args else await dal.users.me()
        )
        states = ", ".join(
            f"{kind} {'on' if getattr(user, f'notify_{kind}') else 'off'}"
            for kind in NOTIFICATION_KINDS
        )
        muted = " (muted but for scheduled reports: /unmute)" if user.notifications_muted else ""
        await message.answer(f"Notifications: {states}{muted}.")

    @r.message(Command("unmute", ignore_case=True))
    async def unmute(message: Message, dal: ScopedDal) -> None:
        await dal.users.set_muted(False)
        await message.answer("Notifications are on.")

    return r


def _int(text: str) -> Any:
    return int(text) if text.isascii() and text.isdigit() else text  # the config explains
