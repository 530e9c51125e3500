"""Binance Spot REST payloads → ``OrderUpdate`` / ``FillEvent``, and exchange rules.

Pure functions beside the user-data-stream mapping (trading/brokers/binance.py), with its
rules for amounts (decimal text only, never a float), times (epoch milliseconds, UTC) and
statuses. The layouts are those of Binance's Spot REST API docs:

* an **order** as ``GET /api/v3/order`` and ``GET /api/v3/openOrders`` return it, and as
  ``POST /api/v3/order`` (``transactTime``) and ``DELETE /api/v3/order`` answer (there
  ``origClientOrderId`` is the order's own client id, ``clientOrderId`` the cancel's);
* a **trade** as ``GET /api/v3/myTrades`` returns it (``isBuyer`` gives the side);
* a **symbol** of ``GET /api/v3/exchangeInfo``: ``PRICE_FILTER.tickSize``,
  ``LOT_SIZE.stepSize`` and ``NOTIONAL.minNotional`` (``MIN_NOTIONAL`` on older symbols).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dal.errors import InvalidInput
from trading.brokers.binance import (
    EXCHANGE,
    ORDER_TYPE_MAP,
    STATUS_MAP,
    Amount,
    BinanceOrderStatus,
    BinanceOrderType,
    Millis,
    OrderId,
    Symbol,
    Text,
)
from trading.events import FillEvent, OrderUpdate


class RestOrder(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    symbol: Symbol
    order_id: OrderId = Field(alias="orderId")
    client_order_id: Text = Field(alias="clientOrderId")
    orig_client_order_id: Text | None = Field(default=None, alias="origClientOrderId")
    price: Amount
    quantity: Amount = Field(alias="origQty")
    executed: Amount = Field(alias="executedQty")
    status: BinanceOrderStatus
    time_in_force: Text | None = Field(default=None, alias="timeInForce")
    type: BinanceOrderType
    side: Text
    stop_price: Amount | None = Field(default=None, alias="stopPrice")
    time: Millis | None = None
    update_time: Millis | None = Field(default=None, alias="updateTime")
    transact_time: Millis | None = Field(default=None, alias="transactTime")


class RestTrade(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    symbol: Symbol
    id: OrderId
    order_id: OrderId = Field(alias="orderId")
    price: Amount
    qty: Amount
    commission: Amount
    commission_asset: Text | None = Field(default=None, alias="commissionAsset")
    time: Millis
    is_buyer: bool = Field(alias="isBuyer")


def _parse(model: type[BaseModel], payload: Any, what: str) -> Any:
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'payload'}: {e['msg']}" for e in exc.errors()
        )
        raise InvalidInput(f"invalid Binance {what}: {problems}") from None


def order_update(payload: dict[str, Any], reason: str | None = None) -> OrderUpdate:
    """The order as a REST answer describes it. PENDING_CANCEL (unused, per the docs) counts
    as still open."""
    return order_and_executed(payload, reason)[0]


def order_and_executed(
    payload: dict[str, Any], reason: str | None = None
) -> tuple[OrderUpdate, Decimal]:
    """``order_update`` and the quantity the order has executed so far, from one parse."""
    order: RestOrder = _parse(RestOrder, payload, "order")
    status = STATUS_MAP[order.status] or "NEW"
    if order.status == "PENDING_CANCEL" and order.executed:
        status = "PARTIALLY_FILLED"
    order_type, _ = ORDER_TYPE_MAP[order.type]
    when = order.update_time or order.transact_time or order.time
    if when is None:
        raise InvalidInput(f"Binance order {order.order_id} carries no time")
    side = order.side.upper()
    if side not in ("BUY", "SELL"):
        raise InvalidInput(f"Binance order {order.order_id} has side {order.side!r}")
    update = OrderUpdate(
        symbol=order.symbol,
        exchange=EXCHANGE,
        broker_order_id=str(order.order_id),
        client_order_id=order.orig_client_order_id or order.client_order_id or None,
        status=status,
        side=side,  # type: ignore[arg-type]  # checked just above
        order_type=order_type,
        quantity=order.quantity,
        price=order.price or None,
        stop_price=order.stop_price or None,
        time_in_force=order.time_in_force,
        event_time=when,
        reason=reason,
        raw=dict(payload),
    )
    return update, order.executed


def trade_fill(
    payload: dict[str, Any], client_order_id: str | None, order: OrderUpdate | None = None
) -> FillEvent:
    """One ``myTrades`` row as the fill it is (the same trade id, price, quantity, fee and
    time the user-data stream reports, so either source stores it once)."""
    trade: RestTrade = _parse(RestTrade, payload, "trade")
    if trade.qty <= 0 or trade.price <= 0:
        raise InvalidInput(f"Binance trade {trade.id} has no positive quantity and price")
    return FillEvent(
        symbol=trade.symbol,
        exchange=EXCHANGE,
        broker_order_id=str(trade.order_id),
        client_order_id=client_order_id,
        broker_trade_id=str(trade.id),
        side="BUY" if trade.is_buyer else "SELL",
        quantity=trade.qty,
        price=trade.price,
        fee=trade.commission,
        fee_currency=trade.commission_asset if trade.commission else None,
        exec_time=trade.time,
        raw=dict(payload),
        order=order,
    )


def symbol_rules(payload: dict[str, Any]) -> dict[str, Any]:
    """An ``exchangeInfo`` symbol as the instrument it is, with the exchange's own rules."""
    filters = {f.get("filterType"): f for f in payload.get("filters", [])}
    notional = filters.get("NOTIONAL") or filters.get("MIN_NOTIONAL") or {}

    def positive(value: Any) -> Decimal | None:
        if not isinstance(value, str):
            return None
        amount = Decimal(value)
        return amount.normalize() if amount > 0 else None

    return {
        "symbol": payload["symbol"],
        "exchange": EXCHANGE,
        "asset_type": "CRYPTO",
        "currency": payload["quoteAsset"],
        "base_asset": payload["baseAsset"],
        "tick_size": positive(filters.get("PRICE_FILTER", {}).get("tickSize")),
        "lot_size": positive(filters.get("LOT_SIZE", {}).get("stepSize")),
        "min_notional": positive(notional.get("minNotional")),
    }
