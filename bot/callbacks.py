"""Inline-button payloads. Every id they carry is resolved again through the user-scoped DAL
by the handler that receives it, never trusted."""

from __future__ import annotations

from typing import Literal

from aiogram.filters.callback_data import CallbackData


class PortfolioPick(CallbackData, prefix="pf"):
    portfolio_id: int


class OrdersPage(CallbackData, prefix="ord"):
    portfolio_id: int
    status: str  # "OPEN" or one order status
    offset: int


class ApproveUser(CallbackData, prefix="appr"):
    action: Literal["approve", "reject"]
    telegram_id: int


class TradeConfirm(CallbackData, prefix="trd"):
    action: Literal["ok", "no"]
    token: str  # a held trade (bot/confirmations.py), valid once and only for its owner


class AccountLive(CallbackData, prefix="live"):
    action: Literal["ok", "no"]
    token: str  # the account held for its owner's Confirm (bot/confirmations.py)


class CancelOrder(CallbackData, prefix="cxl"):
    order_id: int


class StopAll(CallbackData, prefix="stopall"):
    action: Literal["ok", "no"]
    flatten: bool = False


class EquityChart(CallbackData, prefix="eqc"):
    portfolio_id: int
    period: str  # as typed after /profit (today, 30d, ytd, all, A..B)
