"""Trading by hand: /buy, /sell, /close (confirm first), /cancel, /fill, /stopall.

Orders go through the order desk like a strategy's: pre-trade risk, the DAL, the portfolio's
gateway (strategy NULL: manual; /close of a strategy's position: that strategy's, after it is
stopped). Every request ends in an outcome the user sees: a cancel says whether it was done,
is still pending, or why not; the kill switch reports per order. /fill records a trade done
elsewhere, for portfolios without a gateway."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from aiogram import Router
from aiogram.filters import Command, CommandObject
from aiogram.types import CallbackQuery, Message
from aiogram.utils.keyboard import InlineKeyboardBuilder

from bot.args import parse_amount, parse_id
from bot.callbacks import CancelOrder, StopAll, TradeConfirm
from bot.confirmations import Confirmations
from bot.middleware import UserRow
from bot.reports import ended_reason
from bot.routers.common import UsageError, args_of
from bot.text import num, q
from dal.database import ScopedDal
from dal.errors import InvalidInput, TradebookError
from dal.vocabulary import SIDES
from strategies.runtime import StrategyRuntime
from trading.desk import CancelOutcome, OrderDesk

TIFS = ("GTC", "IOC", "FOK", "DAY")


def parse_order(side: str, args: list[str], portfolio_id: int) -> dict[str, Any]:
    """/buy SYMBOL QTY [@PRICE] [stop=PRICE] [tif=GTC|IOC|FOK|DAY] → an order dict."""
    command = side.lower()
    if len(args) < 2:
        raise UsageError(command)
    symbol, quantity = args[0].upper(), parse_amount(args[1], "quantity", command)
    price = stop = tif = None
    for token in args[2:]:
        if token.startswith("@"):
            price = parse_amount(token[1:], "price", command)
        elif token.lower().startswith("stop="):
            stop = parse_amount(token[5:], "stop", command)
        elif token.lower().startswith("tif="):
            tif = token[4:].upper()
            if tif not in TIFS:
                raise UsageError(command, f"time in force is one of {', '.join(TIFS)}")
        else:
            raise UsageError(command, f"I don't understand {token!r}")
    order_type = {
        (False, False): "MARKET",
        (True, False): "LIMIT",
        (False, True): "STOP",
        (True, True): "STOP_LIMIT",
    }[(price is not None, stop is not None)]
    return {
        "portfolio_id": portfolio_id,
        "symbol": symbol,
        "side": side,
        "type": order_type,
        "quantity": quantity,
        "price": price,
        "stop_price": stop,
        "time_in_force": tif,
    }


def describe(order: dict[str, Any], portfolio_name: str) -> str:
    parts = [order["side"], num(order["quantity"]), order["symbol"], order["type"]]
    if order.get("price") is not None:
        parts.append(f"@{num(order['price'])}")
    if order.get("stop_price") is not None:
        parts.append(f"stop {num(order['stop_price'])}")
    if order.get("time_in_force"):
        parts.append(order["time_in_force"])
    return f"{' '.join(parts)} in {portfolio_name}"


def verdict_text(verdict: Any) -> str:
    if verdict.decision == "allow":
        return "Risk check: allowed."
    lines = [f"Risk check: {'BLOCKED' if verdict.decision == 'block' else 'warning'}"]
    lines += [f"• {b.message}" for b in verdict.breaches]
    return "\n".join(lines)


@dataclass
class HeldTrade:
    """What a Confirm button stands for: orders to place, after stopping strategy runs."""

    orders: list[dict[str, Any]]
    stop_runs: list[tuple[str, str, int]] = field(default_factory=list)  # name, version, pid


async def ask_to_confirm(
    message: Message,
    dal: ScopedDal,
    desk: OrderDesk,
    confirmations: Confirmations,
    held: HeldTrade,
    portfolio: Any,
    note: str = "",
) -> None:
    """Show the order with its risk verdict and Confirm / Cancel buttons (none on a BLOCK)."""
    (order,) = held.orders
    preview = await desk.preview(dal, order)  # no gateway, unknown symbol: says so first
    where = f"{describe(order, portfolio.name)} [{preview.venue}]"
    text = f"{q(where)}\n{q(verdict_text(preview.verdict))}{note}"
    if preview.refusal is not None:
        await message.answer(f"{text}\nRejected: {q(preview.refusal)}. See /balance.")
        return
    if preview.verdict.decision == "block":
        await message.answer(text + "\nNot placed: change the order or the policy (/risk).")
        return
    token = confirmations.hold(dal.actor.user_id or 0, held)
    keyboard = InlineKeyboardBuilder()
    keyboard.button(text="Confirm", callback_data=TradeConfirm(action="ok", token=token))
    keyboard.button(text="Cancel", callback_data=TradeConfirm(action="no", token=token))
    await message.answer(text, reply_markup=keyboard.as_markup())


def placed_text(row: sa.Row[Any]) -> str:
    if row.status == "REJECTED":
        return f"Order #{row.id} rejected: {q(ended_reason(row) or '')}"
    return f"Order #{row.id} placed ({row.status})."


def router() -> Router:
    r = Router(name="trade")

    @r.message(Command("buy", "sell", ignore_case=True))
    async def buy_or_sell(
        message: Message,
        command: CommandObject,
        dal: ScopedDal,
        desk: OrderDesk,
        confirmations: Confirmations,
    ) -> None:
        portfolio = await dal.portfolios.current()
        order = parse_order(command.command.upper(), args_of(command), portfolio.id)
        await ask_to_confirm(message, dal, desk, confirmations, HeldTrade([order]), portfolio)

    @r.callback_query(TradeConfirm.filter())
    async def confirm(
        query: CallbackQuery,
        callback_data: TradeConfirm,
        dal: ScopedDal,
        desk: OrderDesk,
        confirmations: Confirmations,
        strategies: StrategyRuntime | None = None,
    ) -> None:
        held = confirmations.release(dal.actor.user_id or 0, callback_data.token)
        if not isinstance(held, HeldTrade):
            await query.answer("This order was already handled or has expired.")
            return
        if callback_data.action == "no":
            await query.answer("Not placed.")
            if isinstance(query.message, Message):
                await query.message.edit_text("Order not placed.")
            return
        lines = []
        for name, version, portfolio_id in held.stop_runs:
            if strategies is not None:
                await strategies.stop_strategy(dal.actor, name, version, portfolio_id)
                lines.append(f"Stopped strategy {q(name)} {q(version)}.")
        for order in held.orders:
            lines.append(placed_text(await desk.place(dal, order)))
        await query.answer()
        if isinstance(query.message, Message):
            await query.message.edit_text("\n".join(lines))

    @r.message(Command("cancel", ignore_case=True))
    async def cancel(
        message: Message, command: CommandObject, dal: ScopedDal, desk: OrderDesk
    ) -> None:
        args = args_of(command)
        if len(args) != 1:
            raise UsageError("cancel")
        outcome = await desk.cancel(dal, parse_id(args[0], "cancel"))
        await message.answer(f"Order {outcome.line()}.")

    @r.callback_query(CancelOrder.filter())
    async def cancel_button(
        query: CallbackQuery, callback_data: CancelOrder, dal: ScopedDal, desk: OrderDesk
    ) -> None:
        outcome = await desk.cancel(dal, callback_data.order_id)  # owner-checked
        await query.answer(f"Order {outcome.line()}.")

    @r.message(Command("close", ignore_case=True))
    async def close(
        message: Message,
        command: CommandObject,
        dal: ScopedDal,
        desk: OrderDesk,
        confirmations: Confirmations,
    ) -> None:
        args = args_of(command)
        if len(args) not in (1, 2):
            raise UsageError("close")
        portfolio = await dal.portfolios.current()
        symbol, strategy = args[0].upper(), (args[1] if len(args) == 2 else None)
        rows = await dal.positions.snapshot(portfolio.id)
        held = [
            p
            for p in rows
            if p.symbol == symbol and p.quantity and (p.strategy_name or None) == strategy
        ]
        if not held:
            whose = f"{q(strategy)}'s" if strategy else "manual"
            await message.answer(f"No {whose} {q(symbol)} position in {q(portfolio.name)}.")
            return
        (position,) = held
        closing = closing_order(position, portfolio.id)
        if closing["side"] == "SELL":
            closing["quantity"] = await desk.sellable(
                dal, portfolio.id, symbol, closing["quantity"]
            )
        trade = HeldTrade([closing])
        note = ""
        running = {
            (run.strategy_id, run.portfolio_id)
            for run in await dal.strategy_runs.list()
            if run.status == "RUNNING"
        }
        if (position.strategy_id, portfolio.id) in running:
            version = position.strategy_version
            trade.stop_runs.append((position.strategy_name, version, portfolio.id))
            note = f"\nConfirm stops {q(position.strategy_name)} {q(version)} first."
        await ask_to_confirm(message, dal, desk, confirmations, trade, portfolio, note)

    @r.message(Command("fill", ignore_case=True))
    async def fill(
        message: Message, command: CommandObject, dal: ScopedDal, user: UserRow, desk: OrderDesk
    ) -> None:
        args = args_of(command)
        if len(args) < 4:
            raise UsageError("fill")
        symbol, side = args[0].upper(), args[1].upper()
        if side not in SIDES:
            raise UsageError("fill", "side is BUY or SELL")
        quantity = parse_amount(args[2], "quantity", "fill")
        price = parse_amount(args[3], "price", "fill")
        fee, fee_currency, at = Decimal(0), None, dt.datetime.now(dt.UTC)
        rest = args[4:]
        while rest:
            word = rest.pop(0).lower()
            if word == "fee" and len(rest) >= 2:
                fee_currency, fee = rest.pop(0).upper(), parse_amount(rest.pop(0), "fee", "fill")
            elif word == "at" and rest:
                at = _parse_time(rest.pop(0), user.timezone)
            else:
                raise UsageError("fill", f"I don't understand {word!r}")
        portfolio = await dal.portfolios.current()
        if await desk.has_gateway(portfolio.id, dal):
            raise UsageError(
                "fill",
                f"{portfolio.name} trades through its gateway; /fill is "
                "for portfolios whose trades happen elsewhere",
            )
        result = await dal.trades.ingest_fill(
            {
                "portfolio_id": portfolio.id,
                "symbol": symbol,
                "side": side,
                "quantity": quantity,
                "price": price,
                "fee": fee,
                "fee_currency": fee_currency,
                "exec_time": at,
                # Idempotency key: the same Telegram message never records two trades.
                "broker_trade_id": f"tg-{message.chat.id}-{message.message_id}",
                "meta": {"source": "telegram /fill"},
            }
        )
        trade = result.trade
        again = " (already recorded)" if result.replayed else ""
        await message.answer(
            f"Recorded trade #{trade.id}{again}: {side} {num(quantity)} {q(symbol)} at "
            f"{num(price)} in {q(portfolio.name)}; realized {num(trade.realized_pnl)}."
        )

    @r.message(Command("stopall", ignore_case=True))
    async def stopall(message: Message, command: CommandObject) -> None:
        args = args_of(command)
        if args not in ([], ["flatten"]):
            raise UsageError("stopall")
        flatten = bool(args)
        keyboard = InlineKeyboardBuilder()
        keyboard.button(
            text="Yes, stop everything", callback_data=StopAll(action="ok", flatten=flatten)
        )
        keyboard.button(text="No", callback_data=StopAll(action="no", flatten=flatten))
        what = "Cancel all your open orders and stop all your strategies"
        if flatten:
            what += ", then close every position (manual and strategy) with market orders"
        await message.answer(f"{what}?", reply_markup=keyboard.as_markup())

    @r.callback_query(StopAll.filter())
    async def stopall_confirm(
        query: CallbackQuery,
        callback_data: StopAll,
        dal: ScopedDal,
        desk: OrderDesk,
        strategies: StrategyRuntime | None = None,
    ) -> None:
        if callback_data.action == "no":
            await query.answer("Nothing changed.")
            return
        await query.answer("Working on it…")
        report = await kill_switch(dal, desk, strategies, flatten=callback_data.flatten)
        if isinstance(query.message, Message):
            await query.message.edit_text(q(report.text()))

    return r


def closing_order(position: sa.Row[Any], portfolio_id: int) -> dict[str, Any]:
    """The market order that takes a position to flat (for a strategy's: in its name)."""
    return {
        "portfolio_id": portfolio_id,
        "symbol": position.symbol,
        "side": "SELL" if position.quantity > 0 else "BUY",
        "type": "MARKET",
        "quantity": abs(position.quantity),
        "strategy_id": position.strategy_id,
    }


@dataclass
class KillSwitchReport:
    stopped: list[str] = field(default_factory=list)
    cancels: list[CancelOutcome] = field(default_factory=list)
    closes: list[str] = field(default_factory=list)

    def text(self) -> str:
        lines = ["Kill switch"]
        lines.append(
            "Strategies stopped: " + (", ".join(self.stopped) if self.stopped else "none running")
        )
        if self.cancels:
            lines.append("Open orders:")
            lines += [f"  {c.line()}" for c in self.cancels]
        else:
            lines.append("Open orders: none")
        if self.closes:
            lines.append("Positions closed:")
            lines += [f"  {c}" for c in self.closes]
        return "\n".join(lines)


async def kill_switch(
    dal: ScopedDal, desk: OrderDesk, strategies: StrategyRuntime | None, *, flatten: bool = False
) -> KillSwitchReport:
    """Stop every running strategy, cancel every open order (each with its outcome) and, with
    ``flatten``, close every position with a market order."""
    report = KillSwitchReport()
    for run in await dal.strategy_runs.list():
        if run.status == "RUNNING":
            if strategies is not None:
                await strategies.stop_strategy(dal.actor, run.name, run.version, run.portfolio_id)
            else:
                await dal.strategy_runs.stop(run.strategy_id, run.portfolio_id, "STOPPED")
            report.stopped.append(f"{run.name} {run.version}")
    report.cancels = await desk.kill_switch(dal)
    if flatten:
        for portfolio in await dal.portfolios.list():
            if not await desk.has_gateway(portfolio.id, dal):
                continue
            for position in await dal.positions.snapshot(portfolio.id):
                if not position.quantity:
                    continue
                who = position.strategy_name or "manual"
                what = f"{position.symbol} [{who}] in {portfolio.name}"
                try:
                    row = await desk.place(dal, closing_order(position, portfolio.id))
                    reason = ended_reason(row) if row.status == "REJECTED" else None
                    why = f" ({reason})" if reason else ""
                    report.closes.append(f"{what}: order #{row.id} {row.status}{why}")
                except TradebookError as exc:
                    report.closes.append(f"{what}: not closed ({exc})")
    return report


def _parse_time(text: str, zone: str) -> dt.datetime:
    try:
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInput(f"{text!r} is not a time like 2024-05-01T12:30") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=ZoneInfo(zone))  # the user's local time
    return value.astimezone(dt.UTC)
