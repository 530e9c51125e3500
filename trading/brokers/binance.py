"""Binance Spot user-data stream: ``executionReport`` events → ``OrderUpdate`` / ``FillEvent``.

Pure functions: no network, no database, no clock. ``parse_event`` validates one user-data
message into an ``ExecutionReport`` (or ``None`` for the other event types, which are ignored);
``to_events`` maps a report onto the broker-neutral events of ``trading.events``, which the
runtime applies idempotently (broker order id ``i``, broker trade id ``t``). A refused message
raises before any event exists, so nothing is written for it.

The field layout is that of Binance's public Spot API docs (User Data Streams → Order Update,
``executionReport``). Two forms are accepted: the plain event ``{"e": "executionReport", …}``
and the WebSocket-API wrapper ``{"subscriptionId": 0, "event": {"e": "executionReport", …}}``;
both map to the same events.

Identities and amounts
----------------------
* ``broker_order_id`` = ``str(i)``; ``broker_trade_id`` = ``str(t)`` (``t`` is -1 when the report
  carries no trade; a ``TRADE`` report without a trade id is refused).
* ``client_order_id`` = ``C`` when it is not empty, else ``c``. Binance fills ``C`` (the original
  client order id) on cancels: there ``c`` is the id of the *cancel request* and ``C`` is the
  order's own id (tradebook's order uid). On every other report ``C`` is empty and ``c`` is it.
* A fill is the *last* execution: quantity ``l`` at price ``L`` (never the cumulative ``z`` /
  ``Z``), fee ``n`` in asset ``N`` (``fee_currency`` is None when ``n`` is 0), time ``T``.
* Amounts are JSON strings parsed to exact ``Decimal`` with ``dal.types.check_amount``
  (numbers, floats included, are refused; negative amounts are refused). ``p`` / ``P`` of
  ``"0"`` mean "no price" / "no stop price" and become ``None``.
* ``E`` (event time), ``T`` (transaction time) and ``O`` (order creation time) are integer
  epoch milliseconds, read as aware UTC datetimes. ``OrderUpdate.event_time`` is ``E``;
  ``FillEvent.exec_time`` is ``T``.
* ``raw`` is a copy of the event object as Binance sent it (the inner ``event`` of the wrapper).
  When an ``OrderUpdate`` had to translate something with loss (order type, order status, the
  client id taken from ``C``), ``raw["tradebook"]`` says what was translated.

Status table (``x`` = execution type, ``X`` = order status after the event)
--------------------------------------------------------------------------
================  ==============================  ===========================================
``x``             ``X``                           events
================  ==============================  ===========================================
NEW               NEW                             OrderUpdate NEW
NEW               PENDING_NEW (order-list leg     OrderUpdate NEW (accepted by Binance; a NEW
                  waiting for its working order)  report follows when it starts working)
TRADE             PARTIALLY_FILLED / FILLED       FillEvent, then OrderUpdate
                                                  PARTIALLY_FILLED / FILLED
TRADE             EXPIRED / EXPIRED_IN_MATCH /    FillEvent, then OrderUpdate EXPIRED /
                  CANCELED                        EXPIRED / CANCELED
CANCELED          CANCELED                        OrderUpdate CANCELED (client id from ``C``)
REJECTED          REJECTED                        OrderUpdate REJECTED, reason ``r``
EXPIRED           EXPIRED / EXPIRED_IN_MATCH      OrderUpdate EXPIRED
TRADE_PREVENTION  EXPIRED_IN_MATCH / EXPIRED      OrderUpdate EXPIRED, reason self-trade
                                                  prevention (STP)
TRADE_PREVENTION  FILLED                          OrderUpdate FILLED
TRADE_PREVENTION  NEW / PARTIALLY_FILLED          ignored: STP ``DECREMENT`` only shrank the
                                                  open quantity (``A`` / ``B``); the order
                                                  stays open, its end is reported later
REPLACED          NEW / PENDING_NEW /             OrderUpdate of ``X`` with the amended
                  PARTIALLY_FILLED / FILLED       quantity ``q`` (order amend keep priority
                                                  only lowers the quantity; same ids)
any               PENDING_CANCEL                  no OrderUpdate (Binance: "currently unused";
                                                  the final CANCELED report follows). A TRADE
                                                  still gives its FillEvent.
================  ==============================  ===========================================

Every other ``(x, X)`` pair is refused as inconsistent (``InvalidInput``); so are unknown
execution types and order statuses. ``X`` → tradebook status: NEW, PENDING_NEW → NEW;
PARTIALLY_FILLED, FILLED, CANCELED, REJECTED, EXPIRED as they are; EXPIRED_IN_MATCH → EXPIRED;
PENDING_CANCEL → none.

Order types (``o``)
-------------------
=================  ============  =====================================================
Binance            tradebook     note
=================  ============  =====================================================
MARKET             MARKET
LIMIT              LIMIT
LIMIT_MAKER        LIMIT         post-only (rejected if it would take); noted in raw
STOP_LOSS          STOP          stop-market, trigger ``P``
STOP_LOSS_LIMIT    STOP_LIMIT    trigger ``P``, limit ``p``
TAKE_PROFIT        STOP          market on trigger ``P`` (profit side); noted in raw
TAKE_PROFIT_LIMIT  STOP_LIMIT    limit ``p`` on trigger ``P`` (profit side); noted in raw
=================  ============  =====================================================

Time in force ``f`` is GTC, IOC or FOK and passes through as it is.

Other user-data events (``outboundAccountPosition``, ``balanceUpdate``, ``listStatus``,
``listenKeyExpired``, ``eventStreamTerminated``, ``externalLockUpdate`` and any type Binance
adds later) carry no order or fill: ``parse_event`` returns ``None`` for them.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Annotated, Any, Final, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    PrivateAttr,
    Strict,
    ValidationError,
    model_validator,
)

from dal.decimals import AmountError, check_amount
from dal.errors import InvalidInput, NotFound
from dal.vocabulary import OPEN_STATUSES, OrderStatusName
from trading.events import BrokerEvent, FillEvent, OrderUpdate

EXCHANGE: Final = "BINANCE"
EVENT_TYPE: Final = "executionReport"

# User-data event types that carry no order or fill. Any other type except executionReport is
# ignored too (Binance adds event types over time); these are the ones its docs list.
IGNORED_EVENT_TYPES: Final = frozenset(
    {
        "outboundAccountPosition",
        "balanceUpdate",
        "listStatus",
        "listenKeyExpired",
        "eventStreamTerminated",
        "externalLockUpdate",
    }
)

ExecutionType = Literal[
    "NEW", "CANCELED", "REPLACED", "REJECTED", "TRADE", "EXPIRED", "TRADE_PREVENTION"
]
BinanceOrderStatus = Literal[
    "NEW",
    "PENDING_NEW",
    "PARTIALLY_FILLED",
    "FILLED",
    "CANCELED",
    "PENDING_CANCEL",
    "REJECTED",
    "EXPIRED",
    "EXPIRED_IN_MATCH",
]
BinanceOrderType = Literal[
    "LIMIT",
    "MARKET",
    "STOP_LOSS",
    "STOP_LOSS_LIMIT",
    "TAKE_PROFIT",
    "TAKE_PROFIT_LIMIT",
    "LIMIT_MAKER",
]

# Binance order status → tradebook order status; None: no OrderUpdate for it.
STATUS_MAP: Final[dict[str, OrderStatusName | None]] = {
    "NEW": "NEW",
    "PENDING_NEW": "NEW",
    "PARTIALLY_FILLED": "PARTIALLY_FILLED",
    "FILLED": "FILLED",
    "CANCELED": "CANCELED",
    "PENDING_CANCEL": None,
    "REJECTED": "REJECTED",
    "EXPIRED": "EXPIRED",
    "EXPIRED_IN_MATCH": "EXPIRED",
}

# The order statuses each execution type may come with (PENDING_CANCEL goes with any).
ALLOWED_STATUSES: Final[dict[str, frozenset[str]]] = {
    "NEW": frozenset({"NEW", "PENDING_NEW"}),
    "TRADE": frozenset({"PARTIALLY_FILLED", "FILLED", "EXPIRED", "EXPIRED_IN_MATCH", "CANCELED"}),
    "CANCELED": frozenset({"CANCELED"}),
    "REJECTED": frozenset({"REJECTED"}),
    "EXPIRED": frozenset({"EXPIRED", "EXPIRED_IN_MATCH"}),
    "TRADE_PREVENTION": frozenset(
        {"NEW", "PARTIALLY_FILLED", "FILLED", "EXPIRED", "EXPIRED_IN_MATCH"}
    ),
    "REPLACED": frozenset({"NEW", "PENDING_NEW", "PARTIALLY_FILLED", "FILLED"}),
}

# Binance order type → tradebook order type, and a note when the mapping loses something.
ORDER_TYPE_MAP: Final[dict[str, tuple[str, str | None]]] = {
    "MARKET": ("MARKET", None),
    "LIMIT": ("LIMIT", None),
    "LIMIT_MAKER": ("LIMIT", "post-only limit (LIMIT_MAKER)"),
    "STOP_LOSS": ("STOP", None),
    "STOP_LOSS_LIMIT": ("STOP_LIMIT", None),
    "TAKE_PROFIT": ("STOP", "take-profit trigger (TAKE_PROFIT)"),
    "TAKE_PROFIT_LIMIT": ("STOP_LIMIT", "take-profit trigger (TAKE_PROFIT_LIMIT)"),
}

# What each field means, for error messages.
FIELD_MEANINGS: Final[dict[str, str]] = {
    "e": "event type",
    "E": "event time",
    "s": "symbol",
    "c": "client order id",
    "S": "side",
    "o": "order type",
    "f": "time in force",
    "q": "order quantity",
    "p": "order price",
    "P": "stop price",
    "C": "original client order id",
    "x": "execution type",
    "X": "order status",
    "r": "reject reason",
    "i": "order id",
    "l": "last executed quantity",
    "z": "cumulative filled quantity",
    "L": "last executed price",
    "n": "commission amount",
    "N": "commission asset",
    "T": "transaction time",
    "t": "trade id",
    "O": "order creation time",
    "Z": "cumulative quote quantity",
    "m": "maker flag",
    "g": "order list id",
    "v": "prevented match id",
    "A": "prevented quantity",
    "eR": "expiry reason",
}

_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MAX_MILLIS: Final = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z


def _amount(value: Any) -> Decimal:
    """Decimal text → exact Decimal (no floats, no negative amounts)."""
    if not isinstance(value, str):
        if isinstance(value, float):
            raise ValueError(f'{value!r} is a float; Binance sends amounts as text, e.g. "0.5"')
        raise ValueError(f"{value!r} is not decimal text; Binance sends amounts as text")
    try:
        amount = check_amount(value)
    except AmountError as exc:
        raise ValueError(str(exc)) from None
    if amount < 0:
        raise ValueError(f"{value} is negative")
    return amount


def _millis(value: Any) -> dt.datetime:
    """Integer epoch milliseconds → aware UTC datetime."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{value!r} is not integer epoch milliseconds")
    if not 0 <= value <= _MAX_MILLIS:
        raise ValueError(f"{value} is out of range for epoch milliseconds")
    return _EPOCH + dt.timedelta(milliseconds=value)


def _optional_millis(value: Any) -> dt.datetime | None:
    if value is None or value == -1:  # -1: Binance's "not set" for ids and times
        return None
    return _millis(value)


Amount = Annotated[Decimal, PlainValidator(_amount)]
Millis = Annotated[dt.datetime, PlainValidator(_millis)]
OptionalMillis = Annotated[dt.datetime | None, PlainValidator(_optional_millis)]
Text = Annotated[str, Strict(), Field(max_length=64)]
Symbol = Annotated[str, Strict(), Field(min_length=1, max_length=32, pattern=r"^\S+$")]
OrderId = Annotated[int, Strict(), Field(ge=0)]
TradeId = Annotated[int, Strict(), Field(ge=-1)]
OptionalId = Annotated[int | None, Strict()]


class ExecutionReport(BaseModel):
    """One Binance Spot ``executionReport``, validated. Fields use Binance's one-letter keys as
    aliases (construct with ``ExecutionReport.model_validate(event_dict)``); keys tradebook does
    not use are ignored. ``raw`` is a copy of the event object as it came in."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    event_type: Literal["executionReport"] = Field(alias="e")
    event_time: Millis = Field(alias="E")
    symbol: Symbol = Field(alias="s")
    client_order_id: Text = Field(alias="c")
    side: Literal["BUY", "SELL"] = Field(alias="S")
    order_type: BinanceOrderType = Field(alias="o")
    time_in_force: Literal["GTC", "IOC", "FOK"] = Field(alias="f")
    quantity: Amount = Field(alias="q")
    price: Amount = Field(alias="p")
    stop_price: Amount = Field(alias="P")
    orig_client_order_id: Text | None = Field(default=None, alias="C")
    execution_type: ExecutionType = Field(alias="x")
    order_status: BinanceOrderStatus = Field(alias="X")
    reject_reason: Text = Field(default="NONE", alias="r")
    order_id: OrderId = Field(alias="i")
    last_quantity: Amount = Field(alias="l")
    cumulative_quantity: Amount = Field(alias="z")
    last_price: Amount = Field(alias="L")
    commission: Amount = Field(alias="n")
    commission_asset: Text | None = Field(default=None, alias="N")
    transaction_time: Millis = Field(alias="T")
    trade_id: TradeId = Field(alias="t")
    order_created: OptionalMillis = Field(default=None, alias="O")
    cumulative_quote: Amount | None = Field(default=None, alias="Z")
    is_maker: Annotated[bool | None, Strict()] = Field(default=None, alias="m")
    order_list_id: OptionalId = Field(default=None, alias="g")
    prevented_match_id: OptionalId = Field(default=None, alias="v")
    prevented_quantity: Amount | None = Field(default=None, alias="A")
    expiry_reason: Text | None = Field(default=None, alias="eR")

    _raw: dict[str, Any] = PrivateAttr(default_factory=dict)

    @model_validator(mode="wrap")
    @classmethod
    def _keep_raw(cls, data: Any, handler: Any) -> ExecutionReport:
        report: ExecutionReport = handler(data)
        if isinstance(data, dict):
            report._raw = copy.deepcopy(data)
        return report

    @model_validator(mode="after")
    def _consistent(self) -> ExecutionReport:
        x, status = self.execution_type, self.order_status
        if status != "PENDING_CANCEL" and status not in ALLOWED_STATUSES[x]:
            raise ValueError(f"execution type {x} with order status {status} is inconsistent")
        if x == "TRADE":
            if self.trade_id < 0:
                raise ValueError(f"a TRADE report needs a trade id t, got {self.trade_id}")
            if self.last_quantity <= 0 or self.last_price <= 0:
                raise ValueError(
                    f"a TRADE report needs a positive last quantity l and price L, got "
                    f"l={self.last_quantity} L={self.last_price}"
                )
            if self.last_quantity > self.cumulative_quantity:
                raise ValueError(
                    f"last quantity l={self.last_quantity} exceeds the cumulative filled "
                    f"quantity z={self.cumulative_quantity}"
                )
        if self.commission and not self.commission_asset:
            raise ValueError(f"commission n={self.commission} has no commission asset N")
        return self

    @property
    def raw(self) -> dict[str, Any]:
        """A copy of the event object as Binance sent it."""
        return copy.deepcopy(self._raw)

    @property
    def order_client_id(self) -> str | None:
        """The order's own client id: ``C`` when set (cancels), else ``c``."""
        return self.orig_client_order_id or self.client_order_id or None


def parse_event(payload: dict[str, Any] | str | bytes) -> ExecutionReport | None:
    """One user-data stream message (plain or WebSocket-API wrapped; a dict or JSON text) as an
    ``ExecutionReport``; ``None`` for every other event type (ignored). A malformed message
    raises ``InvalidInput`` saying what is wrong."""
    event = _unwrap(_load(payload))
    kind = event.get("e")
    if not isinstance(kind, str) or not kind:
        raise InvalidInput(
            "not a Binance user-data event: the event type 'e' is missing or not text"
        )
    if kind != EVENT_TYPE:
        return None
    try:
        return ExecutionReport.model_validate(event)
    except ValidationError as exc:
        raise InvalidInput(_humanize(exc, event)) from None


def to_events(
    report: ExecutionReport,
    known_symbols: Mapping[str, str] | Callable[[str], bool] | None = None,
) -> list[BrokerEvent]:
    """The broker-neutral events for one report, in order (a fill before the status it led
    to); ``[]`` when the report changes nothing tradebook tracks (see the status table).

    ``known_symbols`` checks the symbol: a mapping from Binance symbol to tradebook symbol
    (the events carry the mapped one), or a predicate; ``None`` accepts every symbol. An
    unknown symbol raises ``NotFound``."""
    symbol = _resolve_symbol(report.symbol, known_symbols)
    client_id = report.order_client_id
    order_type, type_note = ORDER_TYPE_MAP[report.order_type]
    status = _status_after(report)
    raw = report.raw
    notes: dict[str, str] = {}
    if type_note is not None:
        notes.update(binance_order_type=report.order_type, order_type=order_type)
        notes["order_type_note"] = type_note
    if status is not None and STATUS_MAP[report.order_status] != report.order_status:
        notes.update(binance_status=report.order_status, status=status)
    if report.orig_client_order_id:
        notes["client_order_id_from"] = "C"
    if notes:
        raw["tradebook"] = notes
    # The order as Binance describes it: the status update, and the context a fill carries
    # so an order tradebook has not seen yet can be created before its fill is linked to it.
    order = OrderUpdate(
        symbol=symbol,
        exchange=EXCHANGE,
        broker_order_id=str(report.order_id),
        client_order_id=client_id,
        status=status or "NEW",
        side=report.side,
        order_type=order_type,
        quantity=report.quantity,
        price=report.price or None,
        stop_price=report.stop_price or None,
        time_in_force=report.time_in_force,
        event_time=report.event_time,
        reason=_reason(report, status) if status is not None else None,
        raw=raw,
    )
    events: list[BrokerEvent] = []
    if report.execution_type == "TRADE":
        events.append(
            FillEvent(
                symbol=symbol,
                exchange=EXCHANGE,
                broker_order_id=str(report.order_id),
                client_order_id=client_id,
                broker_trade_id=str(report.trade_id),
                side=report.side,
                quantity=report.last_quantity,
                price=report.last_price,
                fee=report.commission,
                fee_currency=report.commission_asset if report.commission else None,
                exec_time=report.transaction_time,
                raw=report.raw,
                order=order,
            )
        )
    if status is not None:
        events.append(order)
    return events


def payload_to_events(
    payload: dict[str, Any] | str | bytes,
    known_symbols: Mapping[str, str] | Callable[[str], bool] | None = None,
) -> list[BrokerEvent]:
    """``parse_event`` then ``to_events``; ``[]`` for ignored event types."""
    report = parse_event(payload)
    return [] if report is None else to_events(report, known_symbols)


def _status_after(report: ExecutionReport) -> OrderStatusName | None:
    status = STATUS_MAP[report.order_status]
    if report.execution_type == "TRADE_PREVENTION" and status in OPEN_STATUSES:
        return None  # STP DECREMENT: the order is still open, only its quantity shrank
    return status


def _reason(report: ExecutionReport, status: OrderStatusName) -> str | None:
    if status == "REJECTED":
        reason = report.reject_reason
        return reason if reason and reason != "NONE" else "rejected by Binance"
    if status == "EXPIRED":
        stp = report.execution_type == "TRADE_PREVENTION"
        if stp or report.order_status == "EXPIRED_IN_MATCH":
            match = report.prevented_match_id
            suffix = f" (prevented match {match})" if match is not None else ""
            return f"expired by self-trade prevention{suffix}"
        if report.expiry_reason and report.expiry_reason != "NONE":
            return report.expiry_reason
    return None


def _resolve_symbol(
    symbol: str, known_symbols: Mapping[str, str] | Callable[[str], bool] | None
) -> str:
    if known_symbols is None:
        return symbol
    if isinstance(known_symbols, Mapping):
        mapped = known_symbols.get(symbol)
        if isinstance(mapped, str) and mapped:
            return mapped
    elif known_symbols(symbol):
        return symbol
    raise NotFound(f"unknown symbol {symbol} on {EXCHANGE}; an admin can add it")


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _load(payload: Any) -> dict[str, Any]:
    if isinstance(payload, bytes | bytearray | memoryview):
        try:
            payload = bytes(payload).decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInput("Binance message is not UTF-8 text") from None
    if isinstance(payload, str):
        try:
            payload = json.loads(payload, parse_constant=_refuse_constant)
        except RecursionError:
            raise InvalidInput("Binance message is not valid JSON: nested too deeply") from None
        except ValueError as exc:
            raise InvalidInput(f"Binance message is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise InvalidInput(
            f"a Binance user-data message is a JSON object, not {type(payload).__name__}"
        )
    return payload


def _unwrap(message: dict[str, Any]) -> dict[str, Any]:
    """The event of a WebSocket-API message ``{"subscriptionId": …, "event": {…}}``, or the
    message itself when it is a plain event."""
    if "e" in message or "event" not in message:
        return message
    event = message["event"]
    if not isinstance(event, dict):
        raise InvalidInput(
            f"WebSocket API message: 'event' is a {type(event).__name__}, not an object"
        )
    return event


def _humanize(exc: ValidationError, event: dict[str, Any]) -> str:
    parts = []
    for err in exc.errors():
        msg = err["msg"].removeprefix("Value error, ")
        if not err["loc"]:
            parts.append(msg)
            continue
        key = str(err["loc"][0])
        meaning = FIELD_MEANINGS.get(key)
        where = f"{key} ({meaning})" if meaning else key
        if err["type"] == "missing":
            parts.append(f"{where}: missing")
        elif err["type"] in ("value_error", "string_pattern_mismatch"):
            parts.append(f"{where}: {msg}")
        else:
            parts.append(f"{where}: {msg}, got {_short(err.get('input'))}")
    order = event.get("i")
    which = f" (order {order})" if isinstance(order, int) and not isinstance(order, bool) else ""
    return f"invalid Binance executionReport{which}: " + "; ".join(parts)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
