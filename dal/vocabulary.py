"""The trading vocabulary: order sides, types, time in force and statuses, in one place.

The schema's CHECK constraints, the DAL's validation, the paper engine, the broker mappings
and the bot's parsers all take their words from here. Members are ``StrEnum``s, so each is the
plain string stored in the database and written in the chat (``Side.BUY == "BUY"``).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal


class Side(StrEnum):
    BUY = "BUY"
    SELL = "SELL"


class OrderType(StrEnum):
    MARKET = "MARKET"
    LIMIT = "LIMIT"
    STOP = "STOP"
    STOP_LIMIT = "STOP_LIMIT"
    TRAILING = "TRAILING"


class TimeInForce(StrEnum):
    GTC = "GTC"  # good till canceled
    IOC = "IOC"  # immediate or cancel: what cannot fill at once is canceled
    FOK = "FOK"  # fill or kill: all at once or nothing
    DAY = "DAY"  # ends at the owner's local midnight


class OrderStatus(StrEnum):
    NEW = "NEW"
    PARTIALLY_FILLED = "PARTIALLY_FILLED"
    FILLED = "FILLED"
    CANCELED = "CANCELED"
    REJECTED = "REJECTED"
    EXPIRED = "EXPIRED"


class NotificationKind(StrEnum):
    """What the bot tells a user unasked; each can be turned off with /notify."""

    FILLS = "fills"
    ALERTS = "alerts"
    REPORTS = "reports"
    RISK = "risk"


def _values(*members: StrEnum) -> tuple[str, ...]:
    return tuple(m.value for m in members)


SIDES = _values(*Side)
ORDER_TYPES = _values(*OrderType)
TIME_IN_FORCE = _values(*TimeInForce)
ORDER_STATUSES = _values(*OrderStatus)
NOTIFICATION_KINDS = _values(*NotificationKind)
# An open order can still fill; a final one never changes again.
OPEN_STATUSES = _values(OrderStatus.NEW, OrderStatus.PARTIALLY_FILLED)
ENDED_STATUSES = _values(OrderStatus.CANCELED, OrderStatus.REJECTED, OrderStatus.EXPIRED)
FINAL_STATUSES = (OrderStatus.FILLED.value, *ENDED_STATUSES)

# The same words as types for annotations (a checker cannot derive a Literal from an enum);
# tests/test_vocabulary.py keeps each equal to its enum.
SideName = Literal["BUY", "SELL"]
OrderTypeName = Literal["MARKET", "LIMIT", "STOP", "STOP_LIMIT", "TRAILING"]
TimeInForceName = Literal["GTC", "IOC", "FOK", "DAY"]
OrderStatusName = Literal["NEW", "PARTIALLY_FILLED", "FILLED", "CANCELED", "REJECTED", "EXPIRED"]


def venue(broker_code: str, trading_mode: str | None) -> str:
    """Where a portfolio's orders really go, as every preview, fill notice and portfolio line
    says it: PAPER (simulated), TESTNET or LIVE (an exchange account in that mode), or the
    broker's code for accounts whose trades are recorded by hand."""
    if broker_code == "PAPER":
        return "PAPER"
    if broker_code in EXCHANGE_GATEWAYS:
        return (trading_mode or "testnet").upper()
    return broker_code


# Brokers tradebook sends orders to (each has a gateway); others are recorded with /fill.
EXCHANGE_GATEWAYS = ("BINANCE",)
