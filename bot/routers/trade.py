"""Trading by hand: /buy, /sell (confirm first), /cancel, /close, /fill, /stopall.

Orders take the same path as a strategy's: pre-trade risk, the DAL, the portfolio's gateway
(strategy NULL: manual). /fill records a trade done elsewhere, for portfolios without a
gateway."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from aiogram import Router
from aiogram.filters import Command, CommandObject
from aiogram.types import CallbackQuery, Message
from aiogram.utils.keyboard import InlineKeyboardBuilder

from bot.callbacks import CancelOrder, StopAll, TradeConfirm
from bot.routers.common import UsageError, args_of
from bot.text import num, q
from dal.database import ScopedDal
from dal.errors import InvalidInput, TradebookError
from dal.types import AmountError, check_amount
from dal.vocabulary import SIDES

TIFS = ("GTC", "IOC", "FOK", "DAY")


def _amount(text: str, what: str, command: str) -> Decimal:
    try:
        value = check_amount(text)
    except AmountError as exc:
        raise UsageError(command, f"{what}: {exc}") from None
    if value <= 0:
        raise UsageError(command, f"{what} must be positive")
    return value


def parse_order(side: str, args: list[str], portfolio_id: int) -> dict[str, Any]:
    """/buy SYMBOL QTY [@PRICE] [stop=PRICE] [tif=GTC|IOC|FOK|DAY] → an order dict."""
    command = side.lower()
    if len(args) < 2:
        raise UsageError(command)
    symbol, quantity = args[0].upper(), _amount(args[1], "quantity", command)
    price = stop = tif = None
    for token in args[2:]:
        if token.startswith("@"):
            price = _amount(token[1:], "price", command)
        elif token.lower().startswith("stop="):
            stop = _amount(token[5:], "stop", command)
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


async def ask_to_confirm(
    message: Message, dal: ScopedDal, runtime: Any, order: dict[str, Any], portfolio: Any
) -> None:
    """Show the order with its risk verdict and Confirm / Cancel buttons (none on a BLOCK)."""
    await dal.instruments.get(symbol=order["symbol"])  # unknown symbol: a clear error now
    await runtime.gateway_for(order["portfolio_id"], dal)  # no gateway: say so before asking
    verdict = await runtime.preview(dal, order)
    text = f"{q(describe(order, portfolio.name))}\n{q(verdict_text(verdict))}"
    if verdict.decision == "block":
        await message.answer(text + "\nNot placed: change the order or the policy (/risk).")
        return
    token = runtime.hold(dal.actor.user_id, order)
    keyboard = InlineKeyboardBuilder()
    keyboard.button(text="Confirm", callback_data=TradeConfirm(action="ok", token=token))
    keyboard.button(text="Cancel", callback_data=TradeConfirm(action="no", token=token))
    await message.answer(text, reply_markup=keyboard.as_markup())


def router() -> Router:
    r = Router(name="trade")

    async def buy_or_sell(
        side: str, message: Message, command: CommandObject, dal: ScopedDal, runtime: Any
    ) -> None:
        portfolio = await dal.portfolios.current()
        order = parse_order(side, args_of(command), portfolio.id)
        await ask_to_confirm(message, dal, runtime, order, portfolio)

    @r.message(Command("buy"))
    async def buy(message: Message, command: CommandObject, dal: ScopedDal, runtime: Any) -> None:
        await buy_or_sell("BUY", message, command, dal, runtime)

    @r.message(Command("sell"))
    async def sell(message: Message, command: CommandObject, dal: ScopedDal, runtime: Any) -> None:
        await buy_or_sell("SELL", message, command, dal, runtime)

    @r.callback_query(TradeConfirm.filter())
    async def confirm(
        query: CallbackQuery, callback_data: TradeConfirm, dal: ScopedDal, runtime: Any
    ) -> None:
        order = runtime.release(dal.actor.user_id, callback_data.token)
        if order is None:
            await query.answer("This order was already handled or has expired.")
            return
        if callback_data.action == "no":
            await query.answer("Not placed.")
            if isinstance(query.message, Message):
                await query.message.edit_text("Order not placed.")
            return
        row = await runtime.place_checked(dal, order)
        await query.answer()
        if not isinstance(query.message, Message):
            return
        if row.status == "REJECTED":
            reason = (row.meta_json or {}).get("reject_reason", "")
            await query.message.edit_text(f"Order #{row.id} blocked by risk: {q(reason)}")
        else:
            await query.message.edit_text(f"Order #{row.id} placed ({row.status}).")

    @r.message(Command("cancel"))
    async def cancel(
        message: Message, command: CommandObject, dal: ScopedDal, runtime: Any
    ) -> None:
        args = args_of(command)
        if len(args) != 1 or not args[0].lstrip("#").isdigit():
            raise UsageError("cancel")
        order_id = int(args[0].lstrip("#"))
        await runtime.cancel_order(dal, order_id)
        await message.answer(f"Cancel requested for order #{order_id}.")

    @r.callback_query(CancelOrder.filter())
    async def cancel_button(
        query: CallbackQuery, callback_data: CancelOrder, dal: ScopedDal, runtime: Any
    ) -> None:
        await runtime.cancel_order(dal, callback_data.order_id)  # owner-checked
        await query.answer(f"Cancel requested for order #{callback_data.order_id}.")

    @r.message(Command("close"))
    async def close(message: Message, command: CommandObject, dal: ScopedDal, runtime: Any) -> None:
        args = args_of(command)
        if len(args) != 1:
            raise UsageError("close")
        portfolio = await dal.portfolios.current()
        symbol = args[0].upper()
        held = [
            p
            for p in await dal.positions.snapshot(portfolio.id)
            if p.symbol == symbol and p.strategy_id is None
        ]
        if not held or not held[0].quantity:
            await message.answer(f"No manual {q(symbol)} position in {q(portfolio.name)}.")
            return
        quantity = held[0].quantity
        order = {
            "portfolio_id": portfolio.id,
            "symbol": symbol,
            "side": "SELL" if quantity > 0 else "BUY",
            "type": "MARKET",
            "quantity": abs(quantity),
        }
        await ask_to_confirm(message, dal, runtime, order, portfolio)

    @r.message(Command("fill"))
    async def fill(message: Message, command: CommandObject, dal: ScopedDal, user: Any) -> None:
        args = args_of(command)
        if len(args) < 4:
            raise UsageError("fill")
        symbol, side = args[0].upper(), args[1].upper()
        if side not in SIDES:
            raise UsageError("fill", "side is BUY or SELL")
        quantity = _amount(args[2], "quantity", "fill")
        price = _amount(args[3], "price", "fill")
        fee, fee_currency, at = Decimal(0), None, dt.datetime.now(dt.UTC)
        rest = args[4:]
        while rest:
            word = rest.pop(0).lower()
            if word == "fee" and len(rest) >= 2:
                fee_currency, fee = rest.pop(0).upper(), _amount(rest.pop(0), "fee", "fill")
            elif word == "at" and rest:
                at = _parse_time(rest.pop(0), user.timezone)
            else:
                raise UsageError("fill", f"I don't understand {word!r}")
        portfolio = await dal.portfolios.current()
        if await dal.portfolios.broker_code(portfolio.id) == "PAPER":
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

    @r.message(Command("stopall"))
    async def stopall(message: Message) -> None:
        keyboard = InlineKeyboardBuilder()
        keyboard.button(text="Yes, stop everything", callback_data=StopAll(action="ok"))
        keyboard.button(text="No", callback_data=StopAll(action="no"))
        await message.answer(
            "Cancel all your open orders and stop all your strategies?",
            reply_markup=keyboard.as_markup(),
        )

    @r.callback_query(StopAll.filter())
    async def stopall_confirm(
        query: CallbackQuery, callback_data: StopAll, dal: ScopedDal, runtime: Any
    ) -> None:
        if callback_data.action == "no":
            await query.answer("Nothing changed.")
            return
        canceled, stopped = await kill_switch(dal, runtime)
        await query.answer("Done.")
        if isinstance(query.message, Message):
            await query.message.edit_text(
                f"Kill switch: cancel requested for {canceled} open order(s), "
                f"{stopped} strategy run(s) stopped."
            )

    return r


async def kill_switch(dal: ScopedDal, runtime: Any) -> tuple[int, int]:
    """Stop every running strategy, then cancel every open order; one that filled or closed
    meanwhile is skipped, never the rest."""
    stopped = 0
    for run in await dal.strategy_runs.list():
        if run.status == "RUNNING":
            await runtime.stop_strategy(dal.actor, run.name, run.version, run.portfolio_id)
            stopped += 1
    canceled = 0
    tried: set[int] = set()
    while True:
        batch = [o for o in await dal.orders.list(limit=500) if o.id not in tried]
        if not batch:
            break
        for order in batch:
            tried.add(order.id)
            try:
                await runtime.cancel_order(dal, order.id)
                canceled += 1
            except TradebookError:
                pass  # it filled or was canceled in between
    return canceled, stopped


def _parse_time(text: str, zone: str) -> dt.datetime:
    try:
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInput(f"{text!r} is not a time like 2024-05-01T12:30") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=ZoneInfo(zone))  # the user's local time
    return value.astimezone(dt.UTC)
