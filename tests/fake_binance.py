"""A local fake of Binance Spot, speaking its documented REST and WebSocket API.

What ccxt's Binance class calls, answered with the payloads Binance's public API docs give
(``binance-spot-api-docs``: rest-api.md, websocket-api.md's user data stream subscription,
user-data-stream.md's ``executionReport``, errors.md): exchange info, time, order placement /
query / cancel, open orders, my trades, account, klines, and the WebSocket API's
``userDataStream.subscribe.signature``. Requests are signed as Binance requires (HMAC-SHA256 of
the query string and body) and checked against the key pair given; the timestamp must lie
within ``recvWindow`` of the fake's clock.

It is a small exchange: a book per symbol is one price (``prices``) that tests move. A MARKET
order fills at once at that price (in ``fill_parts`` executions); a LIMIT order fills when it is
marketable, else rests until ``trade`` fills it or the price crosses it. BUY fees are taken in
the base asset, SELL fees in the quote asset (``fee_rate``), as on Binance without BNB.

Market data: 1-minute klines on a minute clock of the fake's own that starts ``KLINE_LEAD``
minutes in the past, so every kline it has closed is closed by the wall clock too (REST
``klines`` honours ``startTime``, ``endTime`` and ``limit``; minutes never closed with
``close_kline`` are flat at the symbol's price). ``close_kline`` closes the next minute of a
symbol (``"x": true``), ``repeat_kline`` sends a closed one again; ``set_price`` sends the
minute in progress (``"x": false``). REST has no row for the minute in progress. Market
streams are served on ``/ws/...`` (raw payloads) and ``/stream?streams=...`` (payloads wrapped
as ``{"stream": ..., "data": ...}``), as web-socket-streams.md describes;
``drop_market_streams()`` closes them.

Faults tests inject: ``next_rest_errors`` (HTTP status + Binance error per endpoint, e.g. 429
with ``Retry-After``), ``accept_then_timeout`` (the order is placed, the answer never comes),
``order_transit_s`` (a new order reaches the matching engine only after that many seconds),
``drop_stream()`` (the WebSocket closes), ``mute_stream`` (events happen but are not sent, as
when a connection is half dead), ``clock_offset_ms`` (the fake's clock runs ahead).

Run it by hand for ``make run`` against it: ``python tests/fake_binance.py --port 9900``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import itertools
import json
import time
import urllib.parse
from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from aiohttp import WSMsgType, web

API_KEY = "fake-binance-key-7Hq2"
API_SECRET = "fake-binance-secret-Zx91"
MINUTE_MS = 60_000
KLINE_LEAD = 30  # the fake's kline clock starts this many minutes before the wall clock

D = Decimal
# The order types that rest on the book at a limit price (a stop-limit one once triggered).
_LIMITED = ("LIMIT", "STOP_LOSS_LIMIT")
# The order types waiting for a stop price (STOP_LOSS then trades at the market).
_STOPS = ("STOP_LOSS", "STOP_LOSS_LIMIT")
# exchangeInfo's ``orderTypes`` of a symbol that offers them all (the API docs' example);
# the fake takes those of them it models.
ORDER_TYPES = (
    "LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LOSS", "STOP_LOSS_LIMIT", "TAKE_PROFIT",
    "TAKE_PROFIT_LIMIT",
)  # fmt: skip
_MODELED = ("MARKET", "STOP_LOSS", *_LIMITED)


def _s(value: Decimal) -> str:
    """Binance prints amounts with 8 decimals; more when the value needs them."""
    text = f"{value:.8f}"
    return text if Decimal(text) == value else format(value.normalize(), "f")


@dataclass
class SymbolRules:
    symbol: str
    base: str
    quote: str
    tick_size: Decimal
    step_size: Decimal
    min_notional: Decimal
    order_types: tuple[str, ...] = ORDER_TYPES


@dataclass
class FakeOrder:
    symbol: str
    order_id: int
    client_order_id: str
    side: str
    type: str
    time_in_force: str | None
    quantity: Decimal
    price: Decimal
    status: str = "NEW"
    stop_price: Decimal = Decimal(0)  # STOP_LOSS and STOP_LOSS_LIMIT: the trigger
    working: bool = True  # on the book (a stop order is not, until triggered)
    executed: Decimal = Decimal(0)  # immutable
    quote_executed: Decimal = Decimal(0)  # immutable
    time: int = 0
    update_time: int = 0
    fills: list[dict[str, Any]] = field(default_factory=list)

    def as_query(self) -> dict[str, Any]:
        """GET /api/v3/order's answer."""
        return {
            "symbol": self.symbol,
            "orderId": self.order_id,
            "orderListId": -1,
            "clientOrderId": self.client_order_id,
            "price": _s(self.price),
            "origQty": _s(self.quantity),
            "executedQty": _s(self.executed),
            "cummulativeQuoteQty": _s(self.quote_executed),
            "status": self.status,
            "timeInForce": self.time_in_force or "GTC",
            "type": self.type,
            "side": self.side,
            "stopPrice": _s(self.stop_price),
            "icebergQty": "0.00000000",
            "time": self.time,
            "updateTime": self.update_time,
            "isWorking": self.working,
            "workingTime": self.time,
            "origQuoteOrderQty": "0.00000000",
            "selfTradePreventionMode": "NONE",
        }


class BinanceError(Exception):
    def __init__(self, status: int, code: int, msg: str, headers: dict[str, str] | None = None):
        super().__init__(msg)
        self.status, self.code, self.msg, self.headers = status, code, msg, headers or {}


class FakeBinance:
    def __init__(
        self,
        rules: list[SymbolRules] | None = None,
        balances: dict[str, Decimal] | None = None,
        prices: dict[str, Decimal] | None = None,
    ) -> None:
        self.rules = {
            r.symbol: r
            for r in rules
            or [
                SymbolRules("BTCUSDT", "BTC", "USDT", D("0.01"), D("0.00001"), D("5")),
                SymbolRules("ETHUSDT", "ETH", "USDT", D("0.01"), D("0.0001"), D("5")),
            ]
        }
        self.free: dict[str, Decimal] = defaultdict(
            Decimal, balances or {"USDT": D("10000"), "BTC": D("0"), "ETH": D("0")}
        )
        self.locked: dict[str, Decimal] = defaultdict(Decimal)
        self.prices = dict(prices or {"BTCUSDT": D("60000"), "ETHUSDT": D("3000")})
        self.fee_rate = D("0.001")
        self.fill_parts = 1
        self.orders: dict[int, FakeOrder] = {}
        self.trades: list[dict[str, Any]] = []  # myTrades rows, in trade id order
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request
        self.next_rest_errors: dict[str, list[BinanceError]] = defaultdict(list)
        self.accept_then_timeout = False
        self.answer_delay_s = 60.0
        self.order_transit_s = 0.0
        self.mute_stream = False
        self.clock_offset_ms = 0
        self.sent_events: list[dict[str, Any]] = []
        self._order_ids = itertools.count(1000)
        self._trade_ids = itertools.count(5000)
        self._sockets: list[tuple[web.WebSocketResponse, str | int]] = []
        self._kline_sockets: list[tuple[web.WebSocketResponse, list[str], bool]] = []
        # Closed klines (REST rows) per symbol by open time, and the open time of the minute
        # in progress per symbol (the next ``close_kline`` closes it).
        self.klines: dict[str, dict[int, list[Any]]] = defaultdict(dict)
        self._kline_origin = self.now_ms() // MINUTE_MS * MINUTE_MS - KLINE_LEAD * MINUTE_MS
        self._kline_open: dict[str, int] = {}
        self._runner: web.AppRunner | None = None
        self.url = ""

    # --- life cycle -------------------------------------------------------------------------
    async def start(self, port: int = 0) -> str:
        app = web.Application()
        app.router.add_route("*", "/api/v3/{endpoint}", self._rest)
        app.router.add_get("/ws-api/v3", self._ws_api)
        app.router.add_get("/ws/{streams}", self._ws_streams)
        app.router.add_get("/stream", self._ws_streams)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        sockets = site._server.sockets  # type: ignore[union-attr]  # aiohttp: the bound server
        self.url = f"http://127.0.0.1:{sockets[0].getsockname()[1]}"
        return self.url

    async def stop(self) -> None:
        await self.drop_stream()
        await self.drop_market_streams()
        if self._runner is not None:
            await self._runner.cleanup()

    def now_ms(self) -> int:
        return int(time.time() * 1000) + self.clock_offset_ms

    # --- what tests do ----------------------------------------------------------------------
    async def drop_stream(self) -> None:
        """Close every user-data WebSocket, as a network loss would."""
        sockets, self._sockets = self._sockets, []
        for ws, _ in sockets:
            await ws.close()

    async def drop_market_streams(self) -> None:
        """Close every market-data WebSocket (klines), as a network loss would."""
        sockets, self._kline_sockets = self._kline_sockets, []
        for ws, _, _ in sockets:
            await ws.close()

    async def close_kline(
        self,
        symbol: str,
        open: Decimal | str,
        high: Decimal | str,
        low: Decimal | str,
        close: Decimal | str,
    ) -> int:
        """Close the minute in progress of ``symbol`` with these prices: it joins the REST
        history and goes to every subscriber as a closed kline (``"x": true``). Returns its
        open time (epoch ms). The symbol's price is left as it is."""
        start = self.kline_open(symbol)
        prices = [D(open), D(high), D(low), D(close)]
        row = _kline_row(start, *prices)
        self.klines[symbol][start] = row
        self._kline_open[symbol] = start + MINUTE_MS
        await self._send_kline(symbol, row, closed=True)
        return start

    async def repeat_kline(self, symbol: str, start: int) -> None:
        """Send the closed kline of ``symbol`` opened at ``start`` again (an event repeated)."""
        await self._send_kline(symbol, self._kline(symbol, start), closed=True)

    def kline_open(self, symbol: str) -> int:
        """The open time (epoch ms) of ``symbol``'s minute in progress on the fake's clock."""
        return self._kline_open.get(symbol, self._kline_origin)

    def fail_next(self, endpoint: str, status: int, code: int, msg: str, **headers: str) -> None:
        self.next_rest_errors[endpoint].append(BinanceError(status, code, msg, headers))

    async def trade(self, order_id: int, quantity: Decimal, price: Decimal | None = None) -> None:
        """Fill ``quantity`` of a resting order (at its limit price unless given)."""
        order = self.orders[order_id]
        await self._execute(order, quantity, price or order.price, maker=True)

    async def set_price(self, symbol: str, price: Decimal) -> None:
        """Move the market; resting LIMIT orders the new price crosses fill at their limit."""
        self.prices[symbol] = price
        for order in list(self.orders.values()):
            is_open = order.status in ("NEW", "PARTIALLY_FILLED")
            if order.symbol == symbol and is_open and self._crosses(order, price):
                at_market = order.type == "STOP_LOSS"
                fill_price = price if at_market else order.price
                await self._execute(
                    order, order.quantity - order.executed, fill_price, maker=not at_market
                )
        start = self.kline_open(symbol)
        await self._send_kline(symbol, _kline_row(start, price, price, price, price), closed=False)

    # --- REST -------------------------------------------------------------------------------
    async def _rest(self, request: web.Request) -> web.StreamResponse:
        endpoint = request.match_info["endpoint"]
        self.requests.append((request.method, f"/api/v3/{endpoint}"))
        body = await request.text()
        params = dict(urllib.parse.parse_qsl(request.query_string, keep_blank_values=True))
        params.update(urllib.parse.parse_qsl(body, keep_blank_values=True))
        try:
            queued = self.next_rest_errors.get(endpoint)
            if queued:
                raise queued.pop(0)
            handler = _ROUTES.get((request.method, endpoint))
            if handler is None:
                raise BinanceError(400, -1000, f"fake: {request.method} /api/v3/{endpoint}")
            if endpoint not in _PUBLIC:
                self._check_signature(request, body, params)
            if endpoint == "order" and request.method == "POST" and self.order_transit_s:
                await asyncio.sleep(self.order_transit_s)
            result = await handler(self, params)
        except BinanceError as exc:
            return web.json_response(
                {"code": exc.code, "msg": exc.msg}, status=exc.status, headers=exc.headers
            )
        if endpoint == "order" and request.method == "POST" and self.accept_then_timeout:
            self.accept_then_timeout = False
            await asyncio.sleep(self.answer_delay_s)  # accepted; the answer never arrives
        return web.json_response(result)

    def _check_signature(self, request: web.Request, body: str, params: dict[str, str]) -> None:
        if request.headers.get("X-MBX-APIKEY") != API_KEY:
            raise BinanceError(401, -2015, "Invalid API-key, IP, or permissions for action.")
        total = request.query_string + body
        signed, _, signature = total.rpartition("&signature=")
        expected = hmac.new(API_SECRET.encode(), signed.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(signature, expected):
            raise BinanceError(400, -1022, "Signature for this request is not valid.")
        window = int(params.get("recvWindow", "5000"))
        stamp = int(params.get("timestamp", "0"))
        now = self.now_ms()
        if stamp > now + 1000 or now - stamp > window:
            raise BinanceError(
                400, -1021, "Timestamp for this request is outside of the recvWindow."
            )

    async def _time(self, params: dict[str, str]) -> Any:
        return {"serverTime": self.now_ms()}

    async def _ping(self, params: dict[str, str]) -> Any:
        return {}

    async def _exchange_info(self, params: dict[str, str]) -> Any:
        return {
            "timezone": "UTC",
            "serverTime": self.now_ms(),
            "rateLimits": [
                {
                    "rateLimitType": "REQUEST_WEIGHT",
                    "interval": "MINUTE",
                    "intervalNum": 1,
                    "limit": 6000,
                }
            ],
            "exchangeFilters": [],
            "symbols": [_symbol_info(r) for r in self.rules.values()],
        }

    async def _account(self, params: dict[str, str]) -> Any:
        assets = sorted(set(self.free) | set(self.locked))
        return {
            "makerCommission": 10,
            "takerCommission": 10,
            "buyerCommission": 0,
            "sellerCommission": 0,
            "canTrade": True,
            "canWithdraw": True,
            "canDeposit": True,
            "brokered": False,
            "requireSelfTradePrevention": False,
            "preventSor": False,
            "updateTime": self.now_ms(),
            "accountType": "SPOT",
            "balances": [
                {"asset": a, "free": _s(self.free[a]), "locked": _s(self.locked[a])} for a in assets
            ],
            "permissions": ["SPOT"],
            "uid": 354937868,
        }

    async def _new_order(self, params: dict[str, str]) -> Any:
        symbol = params.get("symbol", "")
        rules = self.rules.get(symbol)
        if rules is None:
            raise BinanceError(400, -1121, "Invalid symbol.")
        client_id = params.get("newClientOrderId") or f"x-{next(self._order_ids)}"
        if any(
            o.client_order_id == client_id and o.status in ("NEW", "PARTIALLY_FILLED")
            for o in self.orders.values()
        ):
            raise BinanceError(400, -2010, "Duplicate order sent.")
        side, kind = params.get("side", ""), params.get("type", "")
        quantity = D(params.get("quantity", "0"))
        price = D(params.get("price", "0"))
        if kind not in _MODELED or kind not in rules.order_types:
            raise BinanceError(400, -1116, "Invalid orderType.")
        limited = kind in _LIMITED
        if limited and not params.get("timeInForce"):
            raise BinanceError(400, -1102, "Mandatory parameter 'timeInForce' was not sent.")
        stop = D(params.get("stopPrice", "0"))
        if kind in _STOPS:
            if "stopPrice" not in params:
                raise BinanceError(400, -1102, "Mandatory parameter 'stopPrice' was not sent.")
            if stop <= 0 or stop % rules.tick_size:
                raise BinanceError(400, -1013, "Filter failure: PRICE_FILTER")
            if _reached(side, self.prices[symbol], stop):
                raise BinanceError(400, -2010, "Stop price would trigger immediately.")
        if quantity <= 0 or quantity % rules.step_size:
            raise BinanceError(400, -1013, "Filter failure: LOT_SIZE")
        if limited and (price <= 0 or price % rules.tick_size):
            raise BinanceError(400, -1013, "Filter failure: PRICE_FILTER")
        reference = _reference(kind, price, stop, self.prices[symbol])
        if quantity * reference < rules.min_notional:
            raise BinanceError(400, -1013, "Filter failure: NOTIONAL")
        # What the order locks: a BUY its quote at the limit (MARKET: at the price now, plus
        # room), a SELL its base quantity.
        if side == "BUY":
            asset, need = rules.quote, quantity * reference
        else:
            asset, need = rules.base, quantity
        if self.free[asset] < need:
            raise BinanceError(400, -2010, "Account has insufficient balance for requested action.")
        now = self.now_ms()
        order = FakeOrder(
            symbol,
            next(self._order_ids),
            client_id,
            side,
            kind,
            params.get("timeInForce") if limited else None,
            quantity,
            price if limited else D(0),
            stop_price=stop if kind in _STOPS else D(0),
            working=kind not in _STOPS,
            time=now,
            update_time=now,
        )
        self.orders[order.order_id] = order
        if kind != "MARKET":  # a stop order's funds are locked from its placement on
            self.free[asset] -= need
            self.locked[asset] += need
        await self._report(order, "NEW")
        if kind == "MARKET":
            self.free[asset] -= need
            self.locked[asset] += need
            remaining = quantity
            for part in range(self.fill_parts):
                last = part == self.fill_parts - 1
                qty = remaining if last else (quantity / self.fill_parts).quantize(rules.step_size)
                remaining -= qty
                await self._execute(order, qty, self.prices[symbol], maker=False)
        elif self._crosses(order, self.prices[symbol]):
            await self._execute(order, quantity, price, maker=False)
        answer = order.as_query()
        if kind not in _STOPS:  # "stopPrice" appears only for stop orders
            answer.pop("stopPrice")
        answer.pop("icebergQty")
        answer.pop("time")
        answer.pop("updateTime")
        answer.pop("isWorking")
        answer["transactTime"] = order.time
        answer["fills"] = [dict(f) for f in order.fills]
        return answer

    async def _get_order(self, params: dict[str, str]) -> Any:
        return self._find(params).as_query()

    async def _cancel_order(self, params: dict[str, str]) -> Any:
        try:
            order = self._find(params)
        except BinanceError:
            raise BinanceError(400, -2011, "Unknown order sent.") from None
        if order.status not in ("NEW", "PARTIALLY_FILLED"):
            raise BinanceError(400, -2011, "Unknown order sent.")
        self._release(order)
        order.status = "CANCELED"
        await self._report(order, "CANCELED", cancel_id=params.get("newClientOrderId"))
        answer = order.as_query()
        return {
            "symbol": order.symbol,
            "origClientOrderId": order.client_order_id,
            "orderId": order.order_id,
            "orderListId": -1,
            "clientOrderId": params.get("newClientOrderId") or f"cancel-{order.order_id}",
            "transactTime": self.now_ms(),
            **{
                k: answer[k]
                for k in (
                    "price",
                    "origQty",
                    "executedQty",
                    "cummulativeQuoteQty",
                    "status",
                    "timeInForce",
                    "type",
                    "side",
                    "selfTradePreventionMode",
                )
            },
        }

    async def _open_orders(self, params: dict[str, str]) -> Any:
        symbol = params.get("symbol")
        return [
            o.as_query()
            for o in self.orders.values()
            if o.status in ("NEW", "PARTIALLY_FILLED") and (symbol is None or o.symbol == symbol)
        ]

    async def _my_trades(self, params: dict[str, str]) -> Any:
        symbol = params.get("symbol")
        if symbol is None:
            raise BinanceError(400, -1102, "Mandatory parameter 'symbol' was not sent.")
        limit = min(int(params.get("limit", "500")), 1000)
        rows = [t for t in self.trades if t["symbol"] == symbol]
        if "orderId" in params:
            rows = [t for t in rows if t["orderId"] == int(params["orderId"])]
        if "fromId" in params:
            rows = [t for t in rows if t["id"] >= int(params["fromId"])]
        elif "startTime" in params:
            rows = [t for t in rows if t["time"] >= int(params["startTime"])]
        return rows[:limit]

    async def _klines(self, params: dict[str, str]) -> Any:
        """GET /api/v3/klines: the symbol's closed 1m klines (oldest first) from ``startTime``
        (else the latest ones up to ``endTime``), at most ``limit`` (default 500, max 1000)."""
        symbol = params.get("symbol", "")
        if symbol not in self.rules and symbol not in self.prices:
            raise BinanceError(400, -1121, "Invalid symbol.")
        if params.get("interval") != "1m":
            raise BinanceError(400, -1120, "Invalid interval.")
        limit = min(int(params.get("limit", "500")), 1000)
        if limit < 1:
            raise BinanceError(400, -1100, "Illegal characters found in parameter 'limit'.")
        last = self.kline_open(symbol) - MINUTE_MS  # the latest closed minute
        if "endTime" in params:
            last = min(last, int(params["endTime"]) // MINUTE_MS * MINUTE_MS)
        if "startTime" in params:
            first = -(-int(params["startTime"]) // MINUTE_MS) * MINUTE_MS  # rounded up
        else:
            first = last - MINUTE_MS * (limit - 1)
        last = min(last, first + MINUTE_MS * (limit - 1))
        return [self._kline(symbol, start) for start in range(first, last + 1, MINUTE_MS)]

    def _kline(self, symbol: str, start: int) -> list[Any]:
        """The REST row of a closed minute: as ``close_kline`` closed it, else flat."""
        price = self.prices.get(symbol, D(1))
        return self.klines[symbol].get(start) or _kline_row(start, price, price, price, price)

    # --- matching ---------------------------------------------------------------------------
    def _find(self, params: dict[str, str]) -> FakeOrder:
        if "orderId" in params:
            order = self.orders.get(int(params["orderId"]))
        else:
            wanted = params.get("origClientOrderId")
            order = next((o for o in self.orders.values() if o.client_order_id == wanted), None)
        if order is None or order.symbol != params.get("symbol"):
            raise BinanceError(400, -2013, "Order does not exist.")
        return order

    @staticmethod
    def _crosses(order: FakeOrder, price: Decimal) -> bool:
        """Whether ``price`` fills the order; a stop order whose stop price it reaches is
        triggered first (a stop-limit one becomes a working limit order, a stop-loss one
        trades at the market)."""
        if order.type not in (*_LIMITED, *_STOPS):
            return False
        if not order.working:
            if not _reached(order.side, price, order.stop_price):
                return False
            order.working = True
        if order.type == "STOP_LOSS":
            return True
        return price <= order.price if order.side == "BUY" else price >= order.price

    def _reference(self, order: FakeOrder) -> Decimal:
        """The price a BUY's locked quote was counted at."""
        return _reference(order.type, order.price, order.stop_price, self.prices[order.symbol])

    def _release(self, order: FakeOrder) -> None:
        rules = self.rules[order.symbol]
        open_qty = order.quantity - order.executed
        if order.side == "BUY":
            asset, amount = rules.quote, open_qty * self._reference(order)
        else:
            asset, amount = rules.base, open_qty
        self.locked[asset] -= amount
        self.free[asset] += amount

    async def _execute(self, order: FakeOrder, qty: Decimal, price: Decimal, maker: bool) -> None:
        rules = self.rules[order.symbol]
        reference = self._reference(order)
        notional = qty * price
        if order.side == "BUY":  # a stop triggered above its stop pays the rest from free
            fee, fee_asset = qty * self.fee_rate, rules.base
            self.locked[rules.quote] -= qty * reference
            self.free[rules.quote] += qty * reference - notional
            self.free[rules.base] += qty - fee
        else:
            fee, fee_asset = notional * self.fee_rate, rules.quote
            self.locked[rules.base] -= qty
            self.free[rules.quote] += notional - fee
        order.executed += qty
        order.quote_executed += notional
        order.status = "FILLED" if order.executed == order.quantity else "PARTIALLY_FILLED"
        now = self.now_ms()
        order.update_time = now
        trade_id = next(self._trade_ids)
        order.fills.append(
            {
                "price": _s(price),
                "qty": _s(qty),
                "commission": _s(fee),
                "commissionAsset": fee_asset,
                "tradeId": trade_id,
            }
        )
        self.trades.append(
            {
                "symbol": order.symbol,
                "id": trade_id,
                "orderId": order.order_id,
                "orderListId": -1,
                "price": _s(price),
                "qty": _s(qty),
                "quoteQty": _s(notional),
                "commission": _s(fee),
                "commissionAsset": fee_asset,
                "time": now,
                "isBuyer": order.side == "BUY",
                "isMaker": maker,
                "isBestMatch": True,
            }
        )
        await self._report(order, "TRADE", trade=(trade_id, qty, price, fee, fee_asset, now, maker))

    async def _report(
        self,
        order: FakeOrder,
        execution: str,
        trade: tuple[Any, ...] | None = None,
        cancel_id: str | None = None,
    ) -> None:
        """One ``executionReport`` as user-data-stream.md lays it out."""
        now = self.now_ms()
        trade_id, last_qty, last_price, fee, fee_asset, trade_time, maker = trade or (
            -1,
            D(0),
            D(0),
            D(0),
            None,
            now,
            False,
        )
        canceled = execution == "CANCELED"
        event = {
            "e": "executionReport",
            "E": now,
            "s": order.symbol,
            "c": (cancel_id or f"cancel-{order.order_id}") if canceled else order.client_order_id,
            "S": order.side,
            "o": order.type,
            "f": order.time_in_force or "GTC",
            "q": _s(order.quantity),
            "p": _s(order.price),
            "P": _s(order.stop_price),
            "F": "0.00000000",
            "g": -1,
            "C": order.client_order_id if canceled else "",
            "x": execution,
            "X": order.status,
            "r": "NONE",
            "i": order.order_id,
            "l": _s(last_qty),
            "z": _s(order.executed),
            "L": _s(last_price),
            "n": _s(fee),
            "N": fee_asset,
            "T": trade_time,
            "t": trade_id,
            "v": 0,
            "I": next(self._trade_ids),
            "w": order.working and order.status in ("NEW", "PARTIALLY_FILLED"),
            "m": maker,
            "M": False,
            "O": order.time,
            "Z": _s(order.quote_executed),
            "Y": _s(last_qty * last_price),
            "Q": "0.00000000",
            "W": order.time,
            "V": "NONE",
        }
        await self.send_event(event)

    async def send_event(self, event: dict[str, Any]) -> None:
        """Send one user-data event to every subscriber (unless the stream is muted)."""
        self.sent_events.append(event)
        if self.mute_stream:
            return
        for ws, subscription_id in list(self._sockets):
            with contextlib.suppress(ConnectionError, RuntimeError):
                await ws.send_str(json.dumps({"subscriptionId": subscription_id, "event": event}))

    # --- WebSocket API: the user data stream -------------------------------------------------
    async def _ws_api(self, request: web.Request) -> web.WebSocketResponse:
        self.requests.append(("WS", "/ws-api/v3"))
        ws = web.WebSocketResponse(heartbeat=None)
        await ws.prepare(request)
        subscriptions = itertools.count(0)
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            call = json.loads(msg.data)
            method = call.get("method")
            self.requests.append(("WS", method))
            if method == "userDataStream.subscribe.signature":
                subscription_id = next(subscriptions)
                self._sockets.append((ws, subscription_id))
                answer = {"id": call["id"], "status": 200, "result": {"subscriptionId": 0}}
            elif method == "ping":
                answer = {"id": call["id"], "status": 200, "result": {}}
            else:
                answer = {
                    "id": call.get("id"),
                    "status": 400,
                    "error": {"code": -1000, "msg": f"fake: {method}"},
                }
            await ws.send_str(json.dumps(answer))
        self._sockets = [(w, i) for w, i in self._sockets if w is not ws]
        return ws

    # --- market streams ----------------------------------------------------------------------
    async def _ws_streams(self, request: web.Request) -> web.WebSocketResponse:
        """``/ws/<streams>`` (raw payloads) or ``/stream?streams=a/b`` (wrapped payloads); both
        take SUBSCRIBE / UNSUBSCRIBE / LIST_SUBSCRIPTIONS as web-socket-streams.md lays out."""
        self.requests.append(("WS", request.path_qs))
        combined = request.path == "/stream"
        named = request.query.get("streams", "") if combined else request.match_info["streams"]
        streams = [n for n in named.split("/") if "@" in n]  # ccxt connects to /ws/0
        ws = web.WebSocketResponse(heartbeat=None)
        await ws.prepare(request)
        entry = (ws, streams, combined)
        self._kline_sockets.append(entry)
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            call = json.loads(msg.data)
            method = call.get("method")
            self.requests.append(("WS", f"{method} {' '.join(call.get('params') or [])}"))
            answer: dict[str, Any] = {"result": None, "id": call.get("id")}
            if method == "SUBSCRIBE":
                streams.extend(p for p in call.get("params", []) if p not in streams)
            elif method == "UNSUBSCRIBE":
                streams[:] = [p for p in streams if p not in call.get("params", [])]
            elif method == "LIST_SUBSCRIPTIONS":
                answer["result"] = list(streams)
            else:
                answer = {
                    "code": 2,
                    "msg": f"Invalid request: unknown variant {method}",
                    "id": call.get("id"),
                }
            await ws.send_str(json.dumps(answer))
        self._kline_sockets = [e for e in self._kline_sockets if e[0] is not ws]
        return ws

    async def _send_kline(self, symbol: str, row: list[Any], closed: bool) -> None:
        """A kline event as web-socket-streams.md lays it out, from its REST row."""
        name = f"{symbol.lower()}@kline_1m"
        event = {
            "e": "kline",
            "E": self.now_ms(),
            "s": symbol,
            "k": {
                "t": row[0],
                "T": row[6],
                "s": symbol,
                "i": "1m",
                "f": 100,
                "L": 200,
                "o": row[1],
                "c": row[4],
                "h": row[2],
                "l": row[3],
                "v": row[5],
                "n": row[8],
                "x": closed,
                "q": row[7],
                "V": row[9],
                "Q": row[10],
                "B": "0",
            },
        }
        for ws, streams, combined in list(self._kline_sockets):
            if name in streams:
                payload = {"stream": name, "data": event} if combined else event
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await ws.send_str(json.dumps(payload))


def _kline_row(start: int, open: Decimal, high: Decimal, low: Decimal, close: Decimal) -> list[Any]:
    """One row of GET /api/v3/klines (rest-api.md), volume 1 at the close."""
    return [
        start,
        _s(open),
        _s(high),
        _s(low),
        _s(close),
        "1.00000000",
        start + MINUTE_MS - 1,
        _s(close),
        1,
        "0.50000000",
        _s(close / 2),
        "0",
    ]


def _reached(side: str, price: Decimal, stop: Decimal) -> bool:
    """Whether ``price`` triggers a stop order of ``side`` at ``stop``."""
    return price >= stop if side == "BUY" else price <= stop


def _reference(kind: str, price: Decimal, stop: Decimal, market: Decimal) -> Decimal:
    """The price an order of ``kind`` is counted at when placed (its notional, a BUY's lock):
    its limit, a stop-loss order's stop, else the market's price."""
    if kind in _LIMITED:
        return price
    return stop if kind == "STOP_LOSS" else market


def _symbol_info(r: SymbolRules) -> dict[str, Any]:
    return {
        "symbol": r.symbol,
        "status": "TRADING",
        "baseAsset": r.base,
        "baseAssetPrecision": 8,
        "quoteAsset": r.quote,
        "quotePrecision": 8,
        "quoteAssetPrecision": 8,
        "baseCommissionPrecision": 8,
        "quoteCommissionPrecision": 8,
        "orderTypes": list(r.order_types),
        "icebergAllowed": True,
        "ocoAllowed": True,
        "otoAllowed": True,
        "quoteOrderQtyMarketAllowed": True,
        "allowTrailingStop": True,
        "cancelReplaceAllowed": True,
        "amendAllowed": True,
        "isSpotTradingAllowed": True,
        "isMarginTradingAllowed": False,
        "filters": [
            {
                "filterType": "PRICE_FILTER",
                "minPrice": _s(r.tick_size),
                "maxPrice": "1000000.00000000",
                "tickSize": _s(r.tick_size),
            },
            {
                "filterType": "LOT_SIZE",
                "minQty": _s(r.step_size),
                "maxQty": "9000.00000000",
                "stepSize": _s(r.step_size),
            },
            {
                "filterType": "NOTIONAL",
                "minNotional": _s(r.min_notional),
                "applyMinToMarket": True,
                "maxNotional": "9000000.00000000",
                "applyMaxToMarket": False,
                "avgPriceMins": 5,
            },
        ],
        "permissions": [],
        "permissionSets": [["SPOT"]],
        "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
        "allowedSelfTradePreventionModes": ["NONE", "EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH"],
    }


_PUBLIC = {"time", "ping", "exchangeInfo", "klines"}
_ROUTES: dict[tuple[str, str], Any] = {
    ("GET", "time"): FakeBinance._time,
    ("GET", "ping"): FakeBinance._ping,
    ("GET", "exchangeInfo"): FakeBinance._exchange_info,
    ("GET", "klines"): FakeBinance._klines,
    ("GET", "account"): FakeBinance._account,
    ("POST", "order"): FakeBinance._new_order,
    ("GET", "order"): FakeBinance._get_order,
    ("DELETE", "order"): FakeBinance._cancel_order,
    ("GET", "openOrders"): FakeBinance._open_orders,
    ("GET", "myTrades"): FakeBinance._my_trades,
}


async def _main(port: int) -> None:
    fake = FakeBinance()
    url = await fake.start(port)
    print(f"fake Binance on {url} (key {API_KEY}, secret {API_SECRET})", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=9900)
    asyncio.run(_main(parser.parse_args().port))
