"""Broker events → orders and trades, through the user-scoped DAL, idempotently.

* A fill is ingested with its broker trade id, so a replay is a no-op; it is linked to its
  order (found by client order id, else by broker order id) and the order's filled quantity,
  average price and PARTIALLY_FILLED/FILLED status follow from it.
* An order update only moves an order to CANCELED, REJECTED or EXPIRED (and records the broker
  order id). NEW, PARTIALLY_FILLED and FILLED updates change nothing by themselves: fills drive
  those, so an update that arrives before (or after) its fills never double-counts or goes
  backwards; an update for an order that is already final is ignored.
* An event for an order tradebook did not place (placed on the exchange by hand) creates a
  manual order (strategy NULL) in the gateway's portfolio — for a gateway serving a whole
  broker account, ``accounts.default_portfolio(account)``: the user's default portfolio if it
  is on that account, else the account's oldest one. Brokers that describe the order with each
  fill (Binance) get the order created before the fill links to it; a fill for an order nobody
  describes is stored as a manual trade without an order.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from dal.database import ScopedDal
from dal.errors import NotFound
from dal.ingest import IngestResult
from dal.models import Fill
from dal.services import TxServices
from dal.vocabulary import ENDED_STATUSES, FINAL_STATUSES
from trading.events import BrokerEvent, FillEvent, OrderUpdate

log = logging.getLogger("tradebook.gateway")


async def _find_order(s: Any, portfolio_id: int, event: BrokerEvent) -> tuple[Any, Any]:
    """The event's instrument and the order it is about (None: not one of the portfolio's).
    By client id first: that lookup also checks the portfolio and the acting user in one
    statement, so a session that starts with it reads neither again."""
    order = None
    if event.client_order_id:
        with contextlib.suppress(NotFound):
            order = await s.orders.by_client_id(portfolio_id, event.client_order_id)
    instrument = await s.instruments.get(symbol=event.symbol, exchange=event.exchange)
    if order is None and event.broker_order_id:
        with contextlib.suppress(NotFound):
            order = await s.orders.by_broker_id(portfolio_id, instrument.id, event.broker_order_id)
    return instrument, order


async def apply_event(dal: ScopedDal, portfolio_id: int, event: BrokerEvent) -> Any:
    """Apply one broker event in one transaction; returns the order row it touched, or for a
    fill its ``IngestResult`` (the trade, and whether the fill had been stored before)."""
    if isinstance(event, FillEvent) and event.client_order_id:
        # The common live fill, in one step; a transaction that found no such order wrote
        # nothing, and the general way below looks further.
        result = await dal.run(lambda s: _fill_of_own_order(s, portfolio_id, event))
        if result is not None:
            return _applied(event, result)
    async with dal.session() as s:
        instrument, order = await _find_order(s, portfolio_id, event)
        if isinstance(event, FillEvent):
            order = await _fill_order(s, portfolio_id, instrument.id, event, order)
            result = await s.trades.ingest_fill(
                _fill_row(portfolio_id, instrument.id, order, event)
            )
            return _applied(event, result)
        assert isinstance(event, OrderUpdate)
        if order is None:
            order = await _create_manual_order(s, portfolio_id, instrument.id, event)
        if (
            event.status == "REJECTED"
            and order.broker_order_id is not None
            and event.broker_order_id != order.broker_order_id
        ):
            # Another broker order under the same client id (e.g. a duplicate submit the
            # broker refused): it must not touch this order.
            log.warning(
                "ignoring %s for broker order %s: order #%s is %s",
                event.status,
                event.broker_order_id,
                order.id,
                order.broker_order_id,
            )
            return order
        if event.status in ENDED_STATUSES and order.status not in FINAL_STATUSES:
            return await s.orders.update_status(
                order.id, event.status, broker_order_id=event.broker_order_id, reason=event.reason
            )
        if order.broker_order_id is None and event.broker_order_id:
            return await s.orders.record_broker_id(order.id, event.broker_order_id)
        return order


def _fill_of_own_order(s: TxServices, portfolio_id: int, event: FillEvent) -> IngestResult | None:
    """The common live fill, of an order tradebook placed: ingested by its client order id,
    which the ingestion's first read finds the order by (one statement fewer than looking
    it up first). None, having written nothing, when the portfolio has no such order."""
    row = _fill_row(portfolio_id, None, None, event)
    # By symbol, resolved after that read: a lookup first would cost the one-statement check.
    row.update(symbol=event.symbol, exchange=event.exchange, client_order_id=event.client_order_id)
    try:
        return s.trades.ingest_fill(row)
    except NotFound:
        return None


def _applied(event: FillEvent, result: IngestResult) -> IngestResult:
    log.info(
        "fill",
        extra={
            "correlation_id": event.client_order_id or event.broker_order_id,
            "trade_id": result.trade.id,
            "replayed": result.replayed,
        },
    )
    return result


async def apply_fills(
    dal: ScopedDal, portfolio_id: int, fills: list[FillEvent]
) -> list[IngestResult]:
    """Apply many fills in one transaction (a burst from the stream, a catch-up): the same
    lookups as ``apply_event`` for each, then one set-based ingestion. All or nothing."""
    async with dal.session() as s:
        orders: dict[tuple[str, str | None, str | None, str | None], tuple[int, Any]] = {}
        rows: list[Fill | dict[str, Any]] = []
        for event in fills:
            key = (event.symbol, event.exchange, event.client_order_id, event.broker_order_id)
            if key not in orders:
                # The session resolves a symbol once (dal/instruments.py keeps it per
                # transaction).
                instrument, found = await _find_order(s, portfolio_id, event)
                order = await _fill_order(s, portfolio_id, instrument.id, event, found)
                orders[key] = (instrument.id, order)
            instrument_id, order = orders[key]
            rows.append(_fill_row(portfolio_id, instrument_id, order, event))
        results = await s.trades.ingest_fills(rows)
        log.info("fills applied as one batch", extra={"fills": len(results)})
        return results


async def _fill_order(
    s: Any, portfolio_id: int, instrument_id: int, event: FillEvent, order: Any
) -> Any:
    """The order a fill links to: the one found, else the one the broker describes with the
    fill (created as a manual order). The fill records the order's broker id if it has none."""
    if order is None and event.order is not None:
        order = await _create_manual_order(s, portfolio_id, instrument_id, event.order)
    return order


def _fill_row(
    portfolio_id: int, instrument_id: int | None, order: Any, event: FillEvent
) -> dict[str, Any]:
    return {
        "portfolio_id": portfolio_id,
        "instrument_id": instrument_id,
        "order_id": order.id if order is not None else None,
        "side": event.side,
        "quantity": event.quantity,
        "price": event.price,
        "fee": event.fee,
        "fee_currency": event.fee_currency if event.fee else None,
        "exec_time": event.exec_time,
        "broker_trade_id": event.broker_trade_id,
        "broker_order_id": event.broker_order_id,  # recorded on the order if it has none
        "meta": {"broker_order_id": event.broker_order_id},
    }


async def _create_manual_order(
    s: Any, portfolio_id: int, instrument_id: int, event: OrderUpdate
) -> Any:
    """An order tradebook did not place (entered on the exchange by hand): manual, NEW."""
    order_type = _tradebook_type(event.order_type)
    return await s.orders.place(
        {
            "portfolio_id": portfolio_id,
            "instrument_id": instrument_id,
            "side": event.side,
            "type": order_type,
            "time_in_force": event.time_in_force,
            "quantity": event.quantity,
            "price": event.price if order_type in ("LIMIT", "STOP_LIMIT") else None,
            "stop_price": event.stop_price if order_type in ("STOP", "STOP_LIMIT") else None,
            "broker_order_id": event.broker_order_id,
            "client_order_id": event.client_order_id,
            "placed_at": event.event_time,
            "meta": {"source": "broker", "manual": True},
        }
    )


def _tradebook_type(broker_type: str) -> str:
    return broker_type if broker_type in ("MARKET", "LIMIT", "STOP", "STOP_LIMIT") else "LIMIT"
