"""The Binance Spot gateway: orders over ccxt's REST client, events from its user-data stream.

ccxt (``ccxt.pro.binance``, which is also the REST client) gives the request signing, the
clock offset, the rate limiter and the WebSocket API subscription. The gateway calls Binance's
own endpoints through ccxt's raw methods (``private_post_order`` …) so every amount stays the
decimal text Binance sent: ccxt's unified structures hold floats and are never read.

* **Order first, then the exchange.** The desk commits the order NEW before ``place``; the
  order's client id goes to Binance as ``newClientOrderId``. When the answer is lost (time-out,
  5xx, connection reset) the order is looked up by that id — never sent twice. Found: its
  status is applied. Not found after a few looks: it never reached Binance and is REJECTED.
* **Events** are the stream's ``executionReport``s, every one as it came (a hook on ccxt's
  handler, before ccxt folds them into its order cache), mapped by trading/brokers/binance.py.
* **Catch-up** after every (re)subscription: the exchange's open orders, the status of every
  order open here but not there (asked by client id, never assumed canceled), and every trade
  after the last one known per symbol (``myTrades`` from ``fromId``); every
  ``reconcile_every_s`` the same with the trades of the last two intervals. The desk applies
  events idempotently (broker trade ids), so a fill seen twice is stored once and a fill
  missed while disconnected is recovered exactly once. Balances are compared, never written.
* **Errors:** 429 waits ``Retry-After`` and tries again; 418 stops all requests of the account
  until the ban ends and tells the owner and the admins; -1021 (timestamp outside recvWindow)
  re-reads the server time and tries once more; any other Binance error refuses the order with
  Binance's code and message (-2010: insufficient balance).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

import sqlalchemy as sa
from ccxt.base.errors import (
    BaseError,
    NetworkError,
)

from dal.database import Database
from dal.errors import InvalidInput, NotFound, TradebookError
from dal.scope import Actor
from dal.vocabulary import FINAL_STATUSES, NotificationKind
from trading.binance_client import (
    Ambiguous,
    BinanceApiError,
    BinanceClient,
    NotOnExchange,
    Refused,
    Throttled,
    make_client,
)
from trading.brokers import binance, binance_rest
from trading.brokers.credentials import load_credentials
from trading.desk import GatewayFactory, Notify
from trading.events import BrokerEvent, EventQueue, FillEvent, OrderUpdate

log = logging.getLogger("tradebook.binance")

RESOLVE_TRIES = 5  # looks for an order whose placement answer was lost
RATE_LIMIT_TRIES = 3  # a request refused with 429 is sent this many times at most
RECONNECT_MAX_S = 60.0
PLACEMENT_WAIT_S = 10.0  # how long a cancel waits for the answer to the order's placement
_FILL_STATUSES = ("NEW", "PARTIALLY_FILLED", "FILLED")
MY_TRADES_LIMIT = 1000  # Binance's maximum page of myTrades
FILLS_SEEN_ORDERS = 10_000  # orders whose fills seen here are remembered (the most recent)
CLIENT_ID = re.compile(r"^[.A-Z:/a-z0-9_-]{1,36}$")  # Binance's newClientOrderId rule
_TYPES = {
    "MARKET": "MARKET",
    "LIMIT": "LIMIT",
    "STOP": "STOP_LOSS",
    "STOP_LIMIT": "STOP_LOSS_LIMIT",
}


class Ledger(Protocol):
    """What the gateway reads and writes of tradebook's own books besides broker events."""

    async def last_trade_ids(self) -> dict[str, int]:
        """Per symbol, the highest Binance trade id the portfolio has stored."""

    async def symbols(self) -> set[str]:
        """Binance symbols tradebook knows (its instruments on BINANCE)."""

    async def apply_rules(self, rules: list[dict[str, Any]]) -> None:
        """Create or update instruments with the exchange's rules."""

    async def balances(self) -> dict[str, Decimal]:
        """The portfolio's balance per asset, as the ledger has it."""


Tell = Callable[[str], Awaitable[None]]


class BinanceGateway:
    broker = "BINANCE"
    exchange = "BINANCE"

    def __init__(
        self,
        client: BinanceClient,
        ledger: Ledger,
        tell_owner: Tell,
        tell_admins: Tell,
        *,
        reconcile_every_s: float = 60.0,
        resolve_pause_s: float = 0.5,
        reconnect_pause_s: float = 1.0,
    ) -> None:
        self.client = client
        self.ledger = ledger
        self.tell_owner = tell_owner
        self.tell_admins = tell_admins
        self.reconcile_every_s = reconcile_every_s
        self.resolve_pause_s = resolve_pause_s
        self.reconnect_pause_s = reconnect_pause_s
        self.open: dict[str, Any] = {}  # client order id → GatewayOrder, open here
        self.rules: dict[str, dict[str, Any]] = {}  # symbol → instrument with Binance's rules
        self.order_types: dict[str, frozenset[str]] = {}  # symbol → what Binance takes there
        self.known: set[str] = set()  # symbols whose instruments exist
        self.cursor: dict[str, int] = {}  # symbol → highest trade id seen
        # Binance order id → its trades seen here (trade id → quantity), recent orders first out
        self._fills_seen: dict[str, dict[str, Decimal]] = {}
        # Orders a placement's answer ended with a quantity executed, until their fills are
        # seen: Binance order id → (symbol, client order id, quantity executed).
        self._fills_due: dict[str, tuple[str, str | None, Decimal]] = {}
        self.banned_until: dt.datetime | None = None
        self.caught_up = 0  # completed catch-ups (tests wait on it)
        self._events = EventQueue()
        self._raw: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._catching_up = asyncio.Lock()
        self._reported: set[str] = set()
        self._sent_ids: dict[str, str] = {}  # client order id → the Binance id already sent
        self._placing: dict[str, asyncio.Task[Any]] = {}  # client order id → its placement
        self._translating = False  # _translate holds a message it has not emitted yet
        client.sink = self._received

    # --- life cycle -------------------------------------------------------------------------
    async def adopt(self, orders: list[Any]) -> None:
        """The portfolio's open orders: tracked from now on; then the stream and catch-up
        start in the background (a network outage at start-up is retried, not raised)."""
        for order in orders:
            self.open[order.client_order_id] = order
        self._spawn(self._translate(), "translate")
        self._spawn(self._run(), "stream")

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        with contextlib.suppress(Exception):
            await self.client.close()

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=f"binance-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _run(self) -> None:
        pause = self.reconnect_pause_s
        while True:
            try:
                await self._load_rules()
                # Where the catch-up resumes, fixed before subscribing: trades the new stream
                # delivers meanwhile must not move it past ones missed while disconnected.
                resume = await self.ledger.last_trade_ids()
                for symbol, trade_id in self.cursor.items():
                    resume[symbol] = max(resume.get(symbol, 0), trade_id)
                await self.client.authenticate({"type": "spot"})  # the user-data subscription
                await self.catch_up(resume)
                pause = self.reconnect_pause_s
                reconcile = self._spawn(self._reconcile_every(), "reconcile")
                try:
                    while True:
                        await self.client.watch_orders()
                finally:
                    reconcile.cancel()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("Binance stream lost (%s); reconnecting in %.0f s", exc, pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, RECONNECT_MAX_S)

    async def _reconcile_every(self) -> None:
        """While connected, events can still go missing without the connection failing: the
        trades of the last two intervals are fetched again (idempotent) every interval."""
        while True:
            await asyncio.sleep(self.reconcile_every_s)
            since = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=2 * self.reconcile_every_s + 60)
            try:
                await self.catch_up(since=since)
            except (TradebookError, NetworkError) as exc:
                log.warning("Binance reconciliation failed: %s", exc)
            except Exception:  # the next interval tries again; the loop must go on
                log.exception("Binance reconciliation failed")

    async def _load_rules(self) -> None:
        if self.rules:
            return
        await self.client.load_markets()
        for market in self.client.markets.values():
            info = market.get("info") or {}
            if info.get("symbol"):
                self.rules[info["symbol"]] = binance_rest.symbol_rules(info)
                if isinstance(info.get("orderTypes"), list):  # else: not known, not checked
                    self.order_types[info["symbol"]] = frozenset(info["orderTypes"])
        wanted = (await self.ledger.symbols()) | {o.symbol for o in self.open.values()}
        await self._ensure_instruments(wanted)

    async def ensure_instrument(self, symbol: str) -> None:
        """The instrument of a symbol about to be traded, from Binance's rules (NotFound
        when Binance does not list it)."""
        if symbol in self.known:
            return
        try:
            await self._load_rules()
        except BaseError as exc:
            raise TradebookError(
                f"Binance cannot be reached to read its rules for {symbol} "
                f"({type(exc).__name__}); try again shortly"
            ) from None
        if symbol not in self.rules:
            raise NotFound(f"{symbol} is not listed on Binance Spot")
        await self._ensure_instruments({symbol})

    async def _ensure_instruments(self, symbols: set[str]) -> None:
        new = [self.rules[s] for s in sorted(symbols - self.known) if s in self.rules]
        if new:
            await self.ledger.apply_rules(new)
        self.known |= {r["symbol"] for r in new}

    # --- orders -----------------------------------------------------------------------------
    def refusal(self, order: Mapping[str, Any]) -> str | None:
        """Why Binance would refuse an order of this kind, known before it is sent: a type or
        time in force it does not take, or a type the symbol does not offer (its
        ``orderTypes`` in the exchange's rules). None when nothing speaks against it."""
        symbol = str(order.get("symbol") or "").upper()
        return order_refusal(
            str(order.get("type") or "MARKET").upper(),
            str(order.get("time_in_force") or "").upper() or None,
            symbol,
            self.order_types.get(symbol),
        )

    async def place(self, order: Any) -> None:
        """Send the order in the background; its outcome arrives as events."""
        client_id = order.client_order_id
        self.open[client_id] = order
        placing = self._spawn(self._submit(order), f"place-{order.id}")
        self._placing[client_id] = placing
        placing.add_done_callback(lambda _: self._placing.pop(client_id, None))

    async def _submit(self, order: Any) -> None:
        try:
            params = _order_params(order)
            answer = await self._call(self.client.private_post_order, params)
        except Ambiguous as exc:
            await self._resolve(order, str(exc))
            return
        except TradebookError as exc:
            self._reject(order, str(exc))
            return
        except Exception:  # a bug must not leave the order unattended: reconciliation asks
            log.exception("order %s: placement failed", order.id)
            await self.tell_owner(
                f"Order #{order.id}: placing it failed unexpectedly; tradebook asks Binance "
                "about it at the next reconciliation"
            )
            return
        try:
            update, executed = binance_rest.order_and_executed(answer)
        except Exception:  # accepted, but unreadable: the reconciliation asks for it again
            log.exception("order %s: Binance's answer could not be read", order.id)
            await self.tell_owner(
                f"Order #{order.id}: Binance's answer to it could not be read; tradebook asks "
                "Binance about it at the next reconciliation"
            )
            return
        self._emit([update])
        # An order that ended here is no longer open to look at, so the stream's fills are all
        # that bring its trades; if they do not come (a stream that died unnoticed), the next
        # catch-up fetches them.
        order_id = update.broker_order_id
        if (
            update.status in FINAL_STATUSES
            and order_id is not None
            and executed > self._seen_quantity(order_id)
        ):
            self._fills_due[order_id] = (update.symbol, update.client_order_id, executed)

    def _seen_quantity(self, broker_order_id: str) -> Decimal:
        return sum(self._fills_seen.get(broker_order_id, {}).values(), Decimal(0))

    async def _resolve(self, order: Any, why: str) -> None:
        """The placement's answer was lost: look the order up by its client id."""
        log.warning("order %s: no answer from Binance (%s); looking it up", order.id, why)
        pause = self.resolve_pause_s
        missing = 0
        for _ in range(RESOLVE_TRIES):
            await asyncio.sleep(pause)
            pause *= 2
            try:
                answer = await self._query(order.symbol, order.client_order_id)
            except NotOnExchange:
                missing += 1
                continue
            except (Ambiguous, TradebookError):
                continue
            await self._apply_remote_order(answer)
            return
        if missing == RESOLVE_TRIES:
            self._reject(order, f"Binance did not receive it ({why})")
            return
        await self.tell_owner(
            f"Order #{order.id}: Binance did not answer ({why}); tradebook keeps checking it"
        )

    async def cancel(self, order: Any) -> bool:
        """Ask Binance to cancel; False when Binance does not have the order (never had it)."""
        placing = self._placing.get(order.client_order_id)
        if placing is not None:
            # A cancel that overtook its placement would find nothing on Binance, and the
            # order, reported canceled, would then go live: the placement's answer comes first.
            try:
                await asyncio.wait_for(asyncio.shield(placing), PLACEMENT_WAIT_S)
            except TimeoutError:
                raise TradebookError(
                    "Binance has not answered its placement yet; try again in a moment"
                ) from None
        params = {"symbol": order.symbol, "origClientOrderId": order.client_order_id}
        try:
            answer = await self._call(self.client.private_delete_order, params)
        except NotOnExchange:
            try:
                answer = await self._query(order.symbol, order.client_order_id)
            except NotOnExchange:
                self.open.pop(order.client_order_id, None)
                return False
            await self._apply_remote_order(answer)  # it ended meanwhile (filled, expired)
            return True
        except Ambiguous as exc:
            raise TradebookError(f"no answer from Binance ({exc})") from None
        self._emit([binance_rest.order_update(answer)])
        return True

    def _reject(self, order: Any, reason: str) -> None:
        self.open.pop(order.client_order_id, None)
        self._emit(
            [
                OrderUpdate(
                    symbol=order.symbol,
                    exchange=self.exchange,
                    broker_order_id=order.broker_order_id,
                    client_order_id=order.client_order_id,
                    status="REJECTED",
                    side=order.side,
                    order_type=order.type,
                    quantity=order.quantity,
                    price=order.price,
                    stop_price=order.stop_price,
                    time_in_force=order.time_in_force,
                    event_time=dt.datetime.now(dt.UTC),
                    reason=reason,
                )
            ]
        )

    # --- catch-up ---------------------------------------------------------------------------
    async def catch_up(
        self, resume: dict[str, int] | None = None, since: dt.datetime | None = None
    ) -> None:
        """Bring the books up to what Binance says: open orders, orders that ended here
        unseen, and the trades after ``resume`` (per symbol, the last trade id known) or
        since ``since`` (see the module docstring)."""
        async with self._catching_up:
            remote_open = await self._call(self.client.private_get_openorders, {})
            updates = [binance_rest.order_update(o) for o in remote_open]
            seen = {u.client_order_id for u in updates}
            client_ids = {u.broker_order_id: u.client_order_id for u in updates}
            await self._ensure_instruments({u.symbol for u in updates})
            self._emit(list(updates))
            orders_to_check: dict[str, set[str | None]] = {}
            for client_id, order in list(self.open.items()):
                if client_id in seen:
                    continue
                try:
                    answer = await self._query(order.symbol, client_id)
                except NotOnExchange:
                    await self._discrepancy(
                        f"order #{order.id} ({order.side} {order.quantity} {order.symbol}) is "
                        "open in tradebook but Binance does not know it; cancel it with "
                        f"/cancel {order.id} if it should not be"
                    )
                    continue
                update, executed = binance_rest.order_and_executed(answer)
                client_ids[update.broker_order_id] = client_id
                if executed:
                    orders_to_check.setdefault(order.symbol, set()).add(update.broker_order_id)
                self._emit([update])
            for update in updates:
                orders_to_check.setdefault(update.symbol, set()).add(update.broker_order_id)
            due = dict(self._fills_due)
            for due_id, (symbol, due_client_id, _) in due.items():
                orders_to_check.setdefault(symbol, set()).add(due_id)
                client_ids.setdefault(due_id, due_client_id)
            after = dict(resume or {})
            for symbol in sorted(set(after) | set(self.cursor) | set(orders_to_check)):
                if symbol in after:
                    await self._trades_after(symbol, {"fromId": after[symbol] + 1}, client_ids)
                elif since is not None:
                    start = int(since.timestamp() * 1000)
                    await self._trades_after(symbol, {"startTime": start}, client_ids)
                for broker_order_id in sorted(orders_to_check.get(symbol, ()), key=str):
                    await self._trades_of(symbol, broker_order_id, client_ids)
            for due_id in due:  # an ended order's trades are all fetched now
                self._fills_due.pop(due_id, None)
            await self._events.join()  # compare balances once what was fetched is applied
            await self._check_balances()
            self.caught_up += 1

    async def _trades_after(
        self, symbol: str, start: dict[str, int], client_ids: dict[str | None, str | None]
    ) -> None:
        params: dict[str, Any] = {"symbol": symbol, "limit": MY_TRADES_LIMIT, **start}
        while True:
            page = await self._call(self.client.private_get_mytrades, params)
            await self._emit_trades(symbol, page, client_ids)
            if len(page) < MY_TRADES_LIMIT:
                return
            params = {
                "symbol": symbol,
                "limit": MY_TRADES_LIMIT,
                "fromId": max(int(r["id"]) for r in page) + 1,
            }

    async def _trades_of(
        self, symbol: str, broker_order_id: str | None, client_ids: dict[str | None, str | None]
    ) -> None:
        if broker_order_id is None:
            return
        page = await self._call(
            self.client.private_get_mytrades, {"symbol": symbol, "orderId": broker_order_id}
        )
        await self._emit_trades(symbol, page, client_ids)

    async def _emit_trades(
        self, symbol: str, page: list[dict[str, Any]], client_ids: dict[str | None, str | None]
    ) -> None:
        await self._ensure_instruments({symbol})
        fills: list[BrokerEvent] = []
        for row in sorted(page, key=lambda r: int(r["id"])):
            order_id = str(row["orderId"])
            context = None
            if order_id not in client_ids:
                # An order tradebook did not place: its description creates it here.
                answer = await self._call(
                    self.client.private_get_order, {"symbol": symbol, "orderId": order_id}
                )
                context = binance_rest.order_update(answer)
                client_ids[order_id] = context.client_order_id
            fills.append(binance_rest.trade_fill(row, client_ids[order_id], context))
        self._emit(fills)

    async def _check_balances(self) -> None:
        """Report (never overwrite) a difference between Binance's balances and the ledger's."""
        try:
            account = await self._call(self.client.private_get_account, {})
            ledger = await self.ledger.balances()
        except (TradebookError, NetworkError) as exc:
            log.warning("Binance balances not compared: %s", exc)
            return
        exchange = {
            b["asset"]: Decimal(b["free"]) + Decimal(b["locked"])
            for b in account.get("balances", [])
        }
        for asset in sorted(set(ledger) | {a for a, v in exchange.items() if v}):
            there, here = exchange.get(asset, Decimal(0)), ledger.get(asset, Decimal(0))
            if there != here:
                await self._discrepancy(
                    f"{asset}: Binance holds {there.normalize():f}, the ledger "
                    f"{here.normalize():f} (deposits, withdrawals or trades made elsewhere "
                    "are not in the ledger until recorded)"
                )

    async def _discrepancy(self, text: str) -> None:
        if text in self._reported:
            return
        self._reported.add(text)
        log.warning("Binance reconciliation: %s", text)
        await self.tell_owner(f"Binance reconciliation: {text}")

    async def _apply_remote_order(self, answer: dict[str, Any]) -> None:
        update, executed = binance_rest.order_and_executed(answer)
        self._emit([update])
        if executed:
            await self._trades_of(
                update.symbol,
                update.broker_order_id,
                {update.broker_order_id: update.client_order_id},
            )

    # --- the stream -------------------------------------------------------------------------
    def _received(self, message: dict[str, Any]) -> None:
        """A user-data message: its events are emitted at once when nothing is ahead of it
        and its instruments exist (the common case); anything else waits its turn in
        ``_translate``, which keeps the order and handles what cannot be read."""
        if self._raw.empty() and not self._translating:
            try:
                events = binance.payload_to_events(message)
            except (InvalidInput, NotFound):
                pass
            else:
                if {e.symbol for e in events} <= self.known:
                    self._emit(events)
                    return
        self._raw.put_nowait(message)

    async def _translate(self) -> None:
        """Raw executionReports → broker events, in the order they came. A message that
        cannot be read is reported (its trades come back with the next catch-up); one whose
        instrument cannot be written now is tried again, never dropped for a passing error."""
        while True:
            message = await self._raw.get()
            self._translating = True
            try:
                await self._translate_one(message)
            finally:
                self._translating = False

    async def _translate_one(self, message: dict[str, Any]) -> None:
        try:
            events = binance.payload_to_events(message)
        except (InvalidInput, NotFound) as exc:
            log.error("Binance event not understood: %s", exc)
            await self.tell_owner(
                f"A Binance event could not be read ({exc}); the next catch-up fetches "
                "its trades from Binance again"
            )
            return
        pause = self.reconnect_pause_s
        while True:
            try:
                await self._ensure_instruments({e.symbol for e in events})
                break
            except Exception:
                log.exception("Binance event held: its instrument could not be written")
                await asyncio.sleep(pause)
                pause = min(pause * 2, RECONNECT_MAX_S)
        self._emit(events)

    def _emit(self, events: list[BrokerEvent]) -> None:
        for event in events:
            if isinstance(event, FillEvent):
                trade_id = int(event.broker_trade_id)
                self.cursor[event.symbol] = max(self.cursor.get(event.symbol, 0), trade_id)
                self._fill_seen(event)
            elif event.status in FINAL_STATUSES and event.client_order_id:
                self.open.pop(event.client_order_id, None)
            if self._changes_nothing(event):
                continue
            self._events.put_nowait(event)

    def _fill_seen(self, fill: FillEvent) -> None:
        order_id = fill.broker_order_id
        seen = self._fills_seen.pop(order_id, {})
        seen[fill.broker_trade_id] = fill.quantity
        self._fills_seen[order_id] = seen  # the most recent last
        if len(self._fills_seen) > FILLS_SEEN_ORDERS:
            del self._fills_seen[next(iter(self._fills_seen))]
        due = self._fills_due.get(order_id)
        if due is not None and self._seen_quantity(order_id) >= due[2]:
            del self._fills_due[order_id]

    def _changes_nothing(self, event: BrokerEvent) -> bool:
        """A NEW, PARTIALLY_FILLED or FILLED update of an order whose Binance id was already
        sent changes nothing (fills drive those statuses; trading/mapping.py): not sent
        again, so a fill costs one transaction instead of two."""
        if isinstance(event, FillEvent) or event.status not in _FILL_STATUSES:
            return False
        key = event.client_order_id or event.broker_order_id
        if key is None or event.broker_order_id is None:
            return False
        if self._sent_ids.get(key) == event.broker_order_id:
            return True
        self._sent_ids[key] = event.broker_order_id
        return False

    async def events(self) -> AsyncIterator[BrokerEvent]:
        while True:
            yield await self._events.get()

    def ready_fills(self, limit: int) -> list[FillEvent]:
        """Fills already waiting behind the one just taken (the desk applies them at once)."""
        return self._events.take_fills(limit)

    def event_done(self) -> None:
        self._events.task_done()

    async def drained(self) -> None:
        await self._events.join()

    # --- requests ---------------------------------------------------------------------------
    async def _query(self, symbol: str, client_order_id: str) -> Any:
        return await self._call(
            self.client.private_get_order,
            {"symbol": symbol, "origClientOrderId": client_order_id},
        )

    async def _call(
        self, method: Callable[[dict[str, Any]], Awaitable[Any]], params: dict[str, Any]
    ) -> Any:
        """One request with Binance's errors mapped (module docstring)."""
        resynced = False
        throttled = 0
        while True:
            now = dt.datetime.now(dt.UTC)
            if self.banned_until is not None and now < self.banned_until:
                raise Refused(
                    f"Binance has banned this connection until "
                    f"{self.banned_until:%H:%M:%S} UTC; nothing is sent until then"
                )
            try:
                return await method(dict(params))
            except Throttled as exc:
                if exc.status == 418:
                    self.banned_until = now + dt.timedelta(seconds=exc.retry_after_s)
                    text = (
                        f"Binance banned this connection (418) for {exc.retry_after_s:.0f} s; "
                        "tradebook sends nothing to it until then"
                    )
                    log.error(text)
                    await self.tell_owner(text)
                    await self.tell_admins(text)
                    raise Refused(text) from None
                throttled += 1
                if throttled >= RATE_LIMIT_TRIES:
                    raise Refused("Binance kept refusing: too many requests (429)") from None
                log.warning("Binance 429: waiting %.1f s (Retry-After)", exc.retry_after_s)
                await asyncio.sleep(exc.retry_after_s)
            except BinanceApiError as exc:
                if exc.code == -1021 and not resynced:
                    resynced = True
                    log.warning("Binance -1021 (timestamp outside recvWindow): resyncing time")
                    await self.client.load_time_difference()
                    continue
                if exc.code in (-2013, -2011):
                    raise NotOnExchange(f"Binance: {exc.msg}") from None
                raise Refused(f"Binance {exc.code}: {exc.msg}") from None
            except NetworkError as exc:  # time-out, 5xx, connection lost: outcome unknown
                raise Ambiguous(f"{type(exc).__name__}: {str(exc)[:120]}") from None
            except BaseError as exc:
                raise Refused(f"Binance: {str(exc)[:200]}") from None


def order_refusal(
    order_type: str, time_in_force: str | None, symbol: str, offered: frozenset[str] | None
) -> str | None:
    """Why Binance refuses an order of ``order_type``, or None; ``offered`` is the symbol's
    ``orderTypes`` (None: not known, only the type itself is checked)."""
    kind = _TYPES.get(order_type)
    if kind is None:
        return f"Binance takes no {order_type} orders"
    if offered is not None and kind not in offered:
        takes = ", ".join(t for t in _TYPES if _TYPES[t] in offered)
        return f"Binance takes no {order_type} orders on {symbol} (it takes {takes})"
    tif = time_in_force or "GTC"
    if order_type in ("LIMIT", "STOP_LIMIT") and tif not in ("GTC", "IOC", "FOK"):
        return f"Binance takes GTC, IOC or FOK orders, not {tif}"
    return None


def _order_params(order: Any) -> dict[str, Any]:
    """POST /api/v3/order's parameters for an order (InvalidInput for what Binance lacks)."""
    refusal = order_refusal(order.type, order.time_in_force, order.symbol, None)
    if refusal is not None:
        raise InvalidInput(refusal)
    kind = _TYPES[order.type]
    if not CLIENT_ID.match(order.client_order_id):
        raise InvalidInput(
            f"client order id {order.client_order_id!r} is not one Binance accepts "
            "(at most 36 letters, digits and .:/_-)"
        )
    params: dict[str, Any] = {
        "symbol": order.symbol,
        "side": order.side,
        "type": kind,
        "quantity": _text(order.quantity),
        "newClientOrderId": order.client_order_id,
        "newOrderRespType": "RESULT",
    }
    if order.type in ("LIMIT", "STOP_LIMIT"):
        params["price"] = _text(order.price)
        params["timeInForce"] = order.time_in_force or "GTC"
    if order.type in ("STOP", "STOP_LIMIT"):
        params["stopPrice"] = _text(order.stop_price)
    return params


def _text(value: Decimal) -> str:
    return format(value.normalize(), "f")


class DalLedger:
    """The ``Ledger`` of one portfolio over the DAL: its owner's scope for what is theirs,
    the system's for the shared instruments list."""

    def __init__(self, db: Database, owner: Actor, portfolio_id: int) -> None:
        self.db = db
        self.dal = db.scoped(owner)
        self.portfolio_id = portfolio_id

    async def last_trade_ids(self) -> dict[str, int]:
        return await self.dal.trades.last_broker_trade_ids(self.portfolio_id, binance.EXCHANGE)

    async def symbols(self) -> set[str]:
        async with self.db.session(Actor.system(), readonly=True) as s:
            rows = await s.instruments.list()
        return {r.symbol for r in rows if r.exchange == binance.EXCHANGE}

    async def apply_rules(self, rules: list[dict[str, Any]]) -> None:
        async with self.db.session(Actor.system()) as s:
            await s.instruments.apply_exchange_rules(list(rules))

    async def balances(self) -> dict[str, Decimal]:
        return await self.dal.valuation.totals(self.portfolio_id)


def binance_gateways(
    db: Database,
    notify: Notify,
    secrets_dir: Path,
    base_url: str | None = None,
    timeout_ms: int = 10_000,
    **gateway_settings: Any,
) -> GatewayFactory:
    """The desk's gateway factory for BINANCE accounts. An account without keys raises
    NotFound saying where to put them (the desk shows it instead of placing anything)."""

    def factory(portfolio: sa.Row[Any], account: sa.Row[Any]) -> BinanceGateway:
        credentials = load_credentials(account, secrets_dir)
        client = make_client(credentials, account.trading_mode, base_url, timeout_ms)
        owner = portfolio.user_id

        async def tell_owner(text: str) -> None:
            await notify(owner, text, NotificationKind.RISK)

        async def tell_admins(text: str) -> None:
            async with db.session(Actor.system(), readonly=True) as s:
                admins = await s.users.admins()
            for admin in admins:
                if admin.id != owner:
                    await notify(admin.id, f"Account #{account.id}: {text}", NotificationKind.RISK)

        ledger = DalLedger(db, Actor.user(owner), portfolio.id)
        return BinanceGateway(client, ledger, tell_owner, tell_admins, **gateway_settings)

    return factory
