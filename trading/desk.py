"""The order desk: the one order path, for strategies and for the chat alike.

    risk check and balance check → order row (NEW, or REJECTED with the reason) → the
    portfolio's gateway
    → broker events → the DAL (trades, orders, positions) → fill listeners

* Gateways are kept per portfolio over the ``OrderGateway`` protocol (trading/events.py); the
  desk creates one per broker (``gateway_factories``: today PAPER) and never reaches into a
  gateway beyond the protocol.
* At start-up every portfolio with open orders gets its gateway at once, and the gateway takes
  those orders back as they stand (``adopt``), so a resting order placed before a restart keeps
  matching and can be canceled.
* Each broker event is applied in one transaction, retried with a growing pause when it fails;
  one that still fails is kept in ``unapplied_events`` (never only in a log), its owner is
  told, and it is tried again later (``retry_kept``) until it applies.
* The balance check is the account's (dal/valuation.py ``check_order``): a spot account
  refuses an order that needs more than is free, a margin account one beyond its buying
  power. The desk only places orders for portfolios it has a gateway for, so portfolios whose
  trades are recorded with /fill are never refused anything.
* A cancel has an outcome the caller can show: canceled, still pending (no answer from the
  broker in time) or refused with the reason. The kill switch reports per order. An order
  that ends without anyone waiting (a pending cancel answered later, a cancel made on the
  exchange, a rejection or expiry) is told to its owner, once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal, localcontext
from typing import Any, Protocol

import sqlalchemy as sa

from dal.balances import NO_TERMS, Terms
from dal.clock import local_midnight
from dal.database import Database, ScopedDal
from dal.decimals import DECIMAL_CONTEXT
from dal.errors import Conflict, InvalidInput, NotFound, TradebookError
from dal.models import NewOrder, parse
from dal.risk_rules import Verdict
from dal.scope import Actor
from dal.services import TxServices
from dal.valuation import OrderCheck
from dal.vocabulary import (
    ENDED_STATUSES,
    EXCHANGE_GATEWAYS,
    OPEN_STATUSES,
    NotificationKind,
    venue,
)
from trading.events import BrokerEvent, FillEvent, OrderGateway, OrderUpdate, event_from_json
from trading.mapping import apply_event, apply_fills
from trading.market import Market

log = logging.getLogger("tradebook.desk")


class Notify(Protocol):
    """Tell a user something unasked; ``kind`` is what /notify switches on or off."""

    def __call__(self, user_id: int, text: str, kind: NotificationKind) -> Awaitable[None]: ...


FillListener = Callable[[int, int, FillEvent], Awaitable[None]]  # (user, portfolio, fill)
APPLY_ATTEMPTS = 4  # tries of one broker event before it is kept for later
APPLY_PAUSE_S = 0.05  # first pause between tries; doubles each time
CANCEL_ANSWER_S = 5.0  # how long a cancel waits for the broker's answer
FILL_BATCH = 100  # fills applied in one transaction when they arrive together
NOTICE_EACH_UP_TO = 5  # fills applied together beyond this get one summary notice
SUMMARY_LINES = 20  # orders listed in that summary
ENDS_REMEMBERED = 10_000  # orders whose end was told, kept so a duplicate is not told again
RETRY_KEPT_EVERY_S = 60.0  # how often kept broker events are tried again


class GatewayFactory(Protocol):
    def __call__(self, portfolio: sa.Row[Any], account: sa.Row[Any]) -> OrderGateway: ...


# Checks an exchange account's keys against the exchange: one line for its owner.
AccountCheck = Callable[[sa.Row[Any]], Awaitable[str]]


@dataclass(frozen=True)
class GatewayOrder:
    """An orders row plus its symbol, as gateways take it."""

    id: int
    uid: str
    client_order_id: str
    symbol: str
    side: str
    type: str
    quantity: Decimal
    filled_quantity: Decimal
    price: Decimal | None
    stop_price: Decimal | None
    time_in_force: str | None
    broker_order_id: str | None
    placed_at: dt.datetime
    day_ends_at: dt.datetime | None  # DAY orders: the owner's next local midnight

    @classmethod
    def of(cls, row: sa.Row[Any], symbol: str, owner_zone: str, as_of: dt.datetime) -> GatewayOrder:
        """``as_of``: the market's time when the order was placed (DAY orders end at the
        owner's next local midnight after it)."""
        return cls(
            id=row.id,
            uid=row.uid,
            client_order_id=row.client_order_id or row.uid,
            symbol=symbol,
            side=row.side,
            type=row.type,
            quantity=row.quantity,
            filled_quantity=row.filled_quantity or Decimal(0),
            price=row.price,
            stop_price=row.stop_price,
            time_in_force=row.time_in_force,
            broker_order_id=row.broker_order_id,
            placed_at=row.placed_at,
            day_ends_at=local_midnight(min(as_of, row.placed_at), owner_zone, days=1)
            if row.time_in_force == "DAY"
            else None,
        )


@dataclass(frozen=True)
class CancelOutcome:
    order_id: int
    outcome: str  # "canceled" | "pending" | "failed" | "closed" (it had ended already)
    detail: str = ""

    def line(self) -> str:
        words = {
            "canceled": "canceled",
            "pending": "cancel sent, no answer from the broker yet",
            "failed": "could not be canceled",
            "closed": "already ended",
        }[self.outcome]
        return f"#{self.order_id}: {words}" + (f" ({self.detail})" if self.detail else "")


@dataclass(frozen=True)
class Preview:
    """What placing an order would meet now: the risk verdict and the account's refusal."""

    verdict: Verdict
    refusal: str | None
    venue: str = "PAPER"  # PAPER, TESTNET or LIVE: where the order would go

    @property
    def refused(self) -> bool:
        return self.refusal is not None or self.verdict.decision == "block"


class NoGateway(TradebookError):
    """The portfolio's broker has no gateway here: its trades are recorded by hand."""


class OrderDesk:
    def __init__(
        self,
        db: Database,
        market: Market,
        notify: Notify,
        gateway_factories: dict[str, GatewayFactory],
        *,
        cancel_answer_s: float = CANCEL_ANSWER_S,
        apply_pause_s: float = APPLY_PAUSE_S,
        retry_kept_every_s: float = RETRY_KEPT_EVERY_S,
        terms: Terms = NO_TERMS,
        account_checks: dict[str, AccountCheck] | None = None,
    ) -> None:
        self.db = db
        self.account_checks = account_checks or {}
        self.market = market
        self.notify = notify
        self.factories = gateway_factories
        self.cancel_answer_s = cancel_answer_s
        self.apply_pause_s = apply_pause_s
        self.retry_kept_every_s = retry_kept_every_s
        self.terms = terms  # the fee and slippage a BUY reserves for (the paper broker's)
        self.gateways: dict[int, OrderGateway] = {}  # portfolio id → gateway
        self.venues: dict[int, str] = {}  # portfolio id → PAPER / TESTNET / LIVE
        self._on_exchange: set[tuple[str, str]] = set()  # (exchange, symbol) with instrument
        self.fill_listeners: list[FillListener] = []
        self._pumps: dict[int, asyncio.Task[None]] = {}  # portfolio id → its event pump
        self._gateway_lock = asyncio.Lock()
        self._answers: dict[int, asyncio.Future[str]] = {}  # order id → its final status
        self._ends_told: dict[int, None] = {}  # order ids whose end was told, oldest first
        # Broker events that could be neither applied nor kept (the database was out of
        # reach): held here, tried with the kept ones, until one or the other works.
        self._held: list[tuple[ScopedDal, int, BrokerEvent]] = []
        self._retrying: asyncio.Task[None] | None = None

    # --- life cycle -----------------------------------------------------------------------
    async def start(self) -> None:
        """Gateways for every portfolio with open orders, which they take back; broker
        events kept from an earlier run are tried again."""
        owners: dict[int, sa.Row[Any]] = {}
        async with self.db.session(Actor.system(), readonly=True) as s:
            seen = 0
            while True:  # every open order of every user, a page at a time
                page = await s.orders.list(limit=1000, offset=seen)
                for order in page:
                    if order.portfolio_id not in owners:
                        owners[order.portfolio_id] = await s.portfolios.get(order.portfolio_id)
                seen += len(page)
                if len(page) < 1000:
                    break
        for portfolio_id in sorted(owners):
            user = Actor.user(owners[portfolio_id].user_id)
            try:
                await self.gateway_for(portfolio_id, self.db.scoped(user))
            except NoGateway:
                continue  # its orders are followed by hand (/fill, /cancel)
            except TradebookError as exc:
                log.warning("no gateway for portfolio #%s at start-up: %s", portfolio_id, exc)
                await self.notify(
                    owners[portfolio_id].user_id,
                    f"Portfolio #{portfolio_id} has open orders, but its broker could not be "
                    f"reached at start-up ({exc}); their fills and cancels are not followed "
                    "until it can be. Your next order or /cancel there tries again.",
                    NotificationKind.RISK,
                )
        await self.retry_kept()
        if self._retrying is None:
            self._retrying = asyncio.create_task(self._retry_kept_every(), name="desk-retry-kept")

    async def _retry_kept_every(self) -> None:
        while True:
            await asyncio.sleep(self.retry_kept_every_s)
            try:
                await self.retry_kept()
            except Exception:  # the database may still be out of reach: next time
                log.exception("kept broker events: retry failed")

    async def stop(self) -> None:
        if self._retrying is not None:
            self._retrying.cancel()
            await asyncio.gather(self._retrying, return_exceptions=True)
            self._retrying = None
        for portfolio_id in list(self.gateways):
            await self._drop_gateway(portfolio_id)

    async def _drop_gateway(self, portfolio_id: int) -> None:
        pump = self._pumps.pop(portfolio_id, None)
        if pump is not None:
            pump.cancel()
            await asyncio.gather(pump, return_exceptions=True)
        gateway = self.gateways.pop(portfolio_id, None)
        self.venues.pop(portfolio_id, None)
        if gateway is not None:
            await gateway.close()

    def _now(self) -> dt.datetime:
        """The market's time (paper fills follow it), else the wall clock."""
        return self.market.last_bar_time or dt.datetime.now(dt.UTC)

    # --- gateways -------------------------------------------------------------------------
    async def gateway_for(self, portfolio_id: int, dal: ScopedDal) -> OrderGateway:
        """The portfolio's gateway, created on first use (owner-checked); TradebookError
        when its broker has none here."""
        gateway = self.gateways.get(portfolio_id)
        if gateway is not None:
            await dal.portfolios.get(portfolio_id)  # the caller must own it all the same
            return gateway
        async with self._gateway_lock:
            gateway = self.gateways.get(portfolio_id)
            if gateway is not None:
                return gateway
            async with dal.session(readonly=True) as s:
                portfolio = await s.portfolios.get(portfolio_id)
                account = await s.accounts.get(portfolio.account_id)
                broker = await s.portfolios.broker_code(portfolio_id)
                user = await s.users.me()
                open_orders = await s.orders.open_orders(portfolio_id, limit=1000)
            factory = self.factories.get(broker)
            if factory is None:
                raise NoGateway(
                    f"no gateway for {broker} accounts in this tradebook; record their "
                    "trades with /fill"
                )
            gateway = factory(portfolio, account)
            self.venues[portfolio_id] = venue(broker, account.trading_mode)
            adopted = [
                GatewayOrder.of(o, o.symbol, user.timezone, self._now())
                for o in reversed(open_orders)
            ]
            await gateway.adopt(adopted)
            self.gateways[portfolio_id] = gateway
            self._pumps[portfolio_id] = asyncio.create_task(
                self._pump_events(portfolio_id, dal, gateway), name=f"gateway-{portfolio_id}"
            )
            return gateway

    # --- exchange accounts ------------------------------------------------------------------
    async def check_account(self, dal: ScopedDal, account_id: int) -> str:
        """Try an exchange account's keys against its exchange (owner-checked); one line."""
        account = await _account_with_broker(dal, account_id)
        check = self.account_checks.get(account.broker_code)
        if check is None:
            return f"{account.broker_code} accounts have no exchange connection to test here."
        return await check(account)

    async def check_trading_mode_switch(
        self, dal: ScopedDal, account_id: int
    ) -> tuple[sa.Row[Any], list[sa.Row[Any]]]:
        """The account and its portfolios, if its trading mode may change now (asked before a
        switch is confirmed, and again when it is made): InvalidInput for an account that is
        not an exchange's, Conflict while one of its portfolios has open orders."""
        account = await _account_with_broker(dal, account_id)
        if account.broker_code not in EXCHANGE_GATEWAYS:
            raise InvalidInput(f"account {account.name!r} is not an exchange account")
        portfolios = [p for p in await dal.portfolios.list() if p.account_id == account.id]
        for portfolio in portfolios:
            if await dal.orders.open_orders(portfolio.id, limit=1):
                raise Conflict(
                    f"portfolio {portfolio.name!r} has open orders on {account.trading_mode}; "
                    "cancel them first (/orders)"
                )
        return account, portfolios

    async def set_trading_mode(self, dal: ScopedDal, account_id: int, mode: str) -> sa.Row[Any]:
        """Send an exchange account's orders to its testnet or the live exchange. Refused
        while it has open orders (they live where they were placed); its gateways are closed
        and come back in the new mode at the next order."""
        account, portfolios = await self.check_trading_mode_switch(dal, account_id)
        async with self._gateway_lock:
            row = await dal.accounts.set_trading_mode(account.id, mode)
            for portfolio in portfolios:
                await self._drop_gateway(portfolio.id)
        return row

    async def has_gateway(self, portfolio_id: int, dal: ScopedDal) -> bool:
        broker = await dal.portfolios.broker_code(portfolio_id)
        return broker in self.factories

    # --- placing --------------------------------------------------------------------------
    async def preview(self, dal: ScopedDal, order: dict[str, Any]) -> Preview:
        """The risk verdict and balance check an order would get now (nothing is written);
        TradebookError when its portfolio has no gateway."""
        order = {"type": "MARKET", **order}
        gateway = await self.gateway_for(order["portfolio_id"], dal)
        order = await self._on_gateway_exchange(dal, order, gateway)
        marks = dict(self.market.marks.marks)
        verdict, check = await dal.run(lambda s: self._checks(s, order, marks))
        refusal = _gateway_refusal(gateway, order) or check.refusal
        return Preview(verdict, refusal, self.venues[order["portfolio_id"]])

    async def _on_gateway_exchange(
        self, dal: ScopedDal, order: dict[str, Any], gateway: OrderGateway
    ) -> dict[str, Any]:
        """An exchange gateway trades its exchange's instruments only: BTCUSDT of a Binance
        portfolio is Binance's (created from the exchange's rules on first use), never the
        paper one of the same name."""
        exchange = getattr(gateway, "exchange", None)
        if exchange is None or order.get("instrument_id"):
            return order
        if order.get("exchange") and str(order["exchange"]).upper() != exchange:
            raise InvalidInput(f"this portfolio trades on {exchange}, not {order['exchange']}")
        symbol = str(order["symbol"]).upper()
        ensure = getattr(gateway, "ensure_instrument", None)
        if ensure is not None:
            # Every time: a gateway made anew (a trading-mode switch) reads the exchange's
            # rules here before its first order, so the order is checked against them.
            await ensure(symbol)
            if (exchange, symbol) not in self._on_exchange:
                instrument = await dal.instruments.get(symbol=symbol, exchange=exchange)
                self.market.alias(symbol, instrument.id, exchange)  # real prices, if any
                self._on_exchange.add((exchange, symbol))  # instruments are never deleted
        return {**order, "exchange": exchange}

    def _checks(
        self, s: TxServices, order: NewOrder | dict[str, Any], marks: dict[int, Decimal]
    ) -> tuple[Verdict, OrderCheck]:
        """What an order meets before it is placed: the risk policies and the account."""
        new = parse(NewOrder, order)  # once, for both checks
        return s.risk.evaluate(new, marks), s.valuation.check_order(new, marks, self.terms)

    async def place(self, dal: ScopedDal, order: dict[str, Any]) -> sa.Row[Any]:
        """Pre-trade risk, then the order row, then the gateway. A BLOCK stores the order
        REJECTED with the reason; BLOCK and WARN both write breaches and tell the owner."""
        order = {"type": "MARKET", **order}
        order.setdefault("client_order_id", f"tb-{uuid.uuid4().hex}")  # ≤ 36: Binance's limit
        # No gateway, no order. An open gateway is not owner-checked again here: the order
        # row below is (orders.place), and nothing reaches the gateway before it is written.
        gateway = self.gateways.get(order["portfolio_id"]) or await self.gateway_for(
            order["portfolio_id"], dal
        )
        order = await self._on_gateway_exchange(dal, order, gateway)
        marks = dict(self.market.marks.marks)
        gateway_refusal = _gateway_refusal(gateway, order)

        def store(s: TxServices) -> tuple[Verdict, str | None, sa.Row[Any], str, str]:
            new = parse(NewOrder, order)  # once, for the checks and the order row
            verdict, check = self._checks(s, new, marks)
            blocked = verdict.decision == "block"
            refusal = gateway_refusal or check.refusal
            refusals = [refusal] if refusal else []
            if blocked:
                refusals.append(f"risk: {_breaches(verdict)}")
            row = s.orders.place(
                new,
                status="REJECTED" if refusals else "NEW",
                reason="; ".join(refusals) or None,
                reserve_price=check.reserve_price,
            )
            if verdict.breaches:
                s.risk.record_breach(verdict, row.portfolio_id, row.instrument_id, row.id)
            symbol = s.instruments.get(row.instrument_id).symbol
            # Only a DAY order needs its owner's zone (it ends at their local midnight).
            day = row.time_in_force == "DAY"
            zone = s.portfolios.owner_zone(row.portfolio_id) if day else "UTC"
            return verdict, refusal, row, symbol, zone

        # One transaction in one step, run again if PostgreSQL aborts it for a deadlock (it
        # has no side effects).
        verdict, refusal, row, symbol, owner_zone = await dal.run(store)
        blocked = verdict.decision == "block"
        what = f"order #{row.id} ({row.side} {row.quantity} {symbol})"
        if verdict.breaches:
            word = "blocked" if blocked else "warning"
            await self.notify(
                dal.actor.user_id or 0,
                f"Risk {word} on {what}: {_breaches(verdict)}",
                NotificationKind.RISK,
            )
        if refusal is not None:
            await self.notify(
                dal.actor.user_id or 0, f"Rejected {what}: {refusal}", NotificationKind.FILLS
            )
        if row.status == "REJECTED":
            return row
        await gateway.place(GatewayOrder.of(row, symbol, owner_zone, self._now()))
        return row

    async def sellable(
        self, dal: ScopedDal, portfolio_id: int, symbol: str, quantity: Decimal
    ) -> Decimal:
        """How much of ``quantity`` a SELL that closes a long position can really sell: on a
        spot account no more than the free balance of the base asset, down to the lot size.
        An exchange that charges a BUY's fee in the base asset (Binance) leaves less than
        the position's quantity; selling the position's quantity would be refused."""
        portfolio = await dal.portfolios.get(portfolio_id)
        account = await dal.accounts.get(portfolio.account_id)
        if account.margin_leverage is not None or quantity <= 0:
            return quantity
        gateway = await self.gateway_for(portfolio_id, dal)
        order = await self._on_gateway_exchange(
            dal, {"portfolio_id": portfolio_id, "symbol": symbol}, gateway
        )
        instrument = await dal.instruments.get(symbol=symbol, exchange=order.get("exchange"))
        held = {b.asset: b.free for b in await dal.valuation.balances(portfolio_id)}
        free = held.get(instrument.base_asset, Decimal(0))
        if free >= quantity:
            return quantity
        with localcontext(DECIMAL_CONTEXT):
            lot = instrument.lot_size
            capped = (free // lot) * lot if lot else free
        return capped if capped > 0 else quantity  # nothing to sell: let the check say so

    # --- canceling ------------------------------------------------------------------------
    async def cancel(self, dal: ScopedDal, order_id: int) -> CancelOutcome:
        """Ask the order's gateway to cancel it and wait (a while) for the answer. An order of
        a portfolio without a gateway (trades recorded by hand) is canceled at once."""
        async with dal.session() as s:
            row = await s.orders.get(order_id)  # owner-checked
            symbol = (await s.instruments.get(row.instrument_id)).symbol
            owner_zone = (await s.users.me()).timezone
            if row.status not in OPEN_STATUSES:
                return CancelOutcome(row.id, "closed", row.status)
            broker = await s.portfolios.broker_code(row.portfolio_id)
            if broker not in self.factories:
                await s.orders.cancel(row.id, reason="canceled by its owner")
                return CancelOutcome(row.id, "canceled")
        gateway = await self.gateway_for(row.portfolio_id, dal)
        answer = self._answers.setdefault(row.id, asyncio.get_running_loop().create_future())
        try:
            try:
                order = GatewayOrder.of(row, symbol, owner_zone, self._now())
                held = await gateway.cancel(order)
            except TradebookError as exc:
                return CancelOutcome(row.id, "failed", str(exc))
            if not held:
                return await self._settle_unheld(dal, row.id)
            try:
                status = await asyncio.wait_for(asyncio.shield(answer), self.cancel_answer_s)
            except TimeoutError:
                return CancelOutcome(row.id, "pending")
        finally:
            self._answers.pop(row.id, None)
        if status == "CANCELED":
            return CancelOutcome(row.id, "canceled")
        return CancelOutcome(row.id, "closed", status)

    async def _settle_unheld(self, dal: ScopedDal, order_id: int) -> CancelOutcome:
        """The gateway does not hold the order: it ended meanwhile, or the broker never had
        it. Settle it here unless a fill or a final status got there first."""
        async with dal.session() as s:
            row = await s.orders.get(order_id)
            if row.status not in OPEN_STATUSES:
                return CancelOutcome(row.id, "closed", row.status)
            await s.orders.cancel(row.id, reason="canceled by its owner")
        return CancelOutcome(order_id, "canceled")

    async def kill_switch(self, dal: ScopedDal) -> list[CancelOutcome]:
        """Cancel every open order of the user, each with its outcome (the cancels run
        together, so the wait for answers is one wait)."""
        outcomes: dict[int, CancelOutcome] = {}
        while True:
            batch = [o for o in await dal.orders.open_orders(limit=1000) if o.id not in outcomes]
            if not batch:
                break
            results = await asyncio.gather(
                *(self.cancel(dal, o.id) for o in batch), return_exceptions=True
            )
            for order, result in zip(batch, results, strict=True):
                if isinstance(result, BaseException):
                    if not isinstance(result, Exception):
                        raise result
                    detail = str(result) if isinstance(result, TradebookError) else "error"
                    if not isinstance(result, TradebookError):
                        log.error("cancel of order #%s failed", order.id, exc_info=result)
                    outcomes[order.id] = CancelOutcome(order.id, "failed", detail)
                else:
                    outcomes[order.id] = result
        return [outcomes[k] for k in sorted(outcomes)]

    # --- broker events --------------------------------------------------------------------
    async def _pump_events(self, portfolio_id: int, dal: ScopedDal, gateway: OrderGateway) -> None:
        ready_fills = getattr(gateway, "ready_fills", None)
        async for event in gateway.events():
            batch: list[FillEvent] = []
            if isinstance(event, FillEvent) and ready_fills is not None:
                batch = [event, *ready_fills(FILL_BATCH - 1)]
            try:
                if len(batch) > 1:
                    await self.apply_fills(dal, portfolio_id, batch)
                else:
                    await self.apply(dal, portfolio_id, event)
            except Exception:  # keep the stream alive whatever one event does
                log.exception("broker event %s failed", event)
            finally:
                for _ in range(max(len(batch), 1)):
                    gateway.event_done()

    async def apply_fills(self, dal: ScopedDal, portfolio_id: int, fills: list[FillEvent]) -> None:
        """A burst of fills in one transaction; if that fails, each on its own (with its
        retries, and kept when it still fails)."""
        try:
            results = await apply_fills(dal, portfolio_id, fills)
        except Exception as exc:
            log.warning(
                "a batch of %d fills failed (%s); applying them one by one", len(fills), exc
            )
            for fill in fills:
                await self.apply(dal, portfolio_id, fill)
            return
        user_id = dal.actor.user_id or 0
        new = [(fill, r.trade) for fill, r in zip(fills, results, strict=True) if not r.replayed]
        each = len(new) <= NOTICE_EACH_UP_TO
        for fill, result in zip(fills, results, strict=True):
            await self._after(user_id, portfolio_id, fill, result, notice=each)
        if not each:  # a catch-up: one notice, not one per fill
            text = fills_summary(new, self.venues.get(portfolio_id))
            await self.notify(user_id, text, NotificationKind.FILLS)

    async def apply(self, dal: ScopedDal, portfolio_id: int, event: BrokerEvent) -> None:
        """Apply one broker event, retried; kept durably (and its owner told) when it still
        fails. Then the notices and listeners that follow from it."""
        user_id = dal.actor.user_id or 0
        row = None
        error: Exception | None = None
        for attempt in range(APPLY_ATTEMPTS):
            try:
                row = await apply_event(dal, portfolio_id, event)
                break
            except Exception as exc:  # a bug or an outage must not lose the event
                error = exc
                log.warning("broker event not applied (try %d): %s", attempt + 1, exc)
                if isinstance(exc, Conflict):
                    break  # it contradicts what is stored: trying again cannot help
                await asyncio.sleep(self.apply_pause_s * 2**attempt)
        if row is None:
            assert error is not None
            await self._keep(dal, portfolio_id, event, error)
            return
        await self._after(user_id, portfolio_id, event, row)

    async def _after(
        self, user_id: int, portfolio_id: int, event: BrokerEvent, row: Any, notice: bool = True
    ) -> None:
        """What follows an applied event: ``row`` is what ``apply_event`` returned (for a fill,
        its IngestResult)."""
        if isinstance(event, FillEvent):
            # A fill stored before (a catch-up or reconcile fetches it again, a stream repeats
            # it) changed nothing: it was told, and handed to the strategies, the first time.
            if row.replayed:
                return
            trade = row.trade
            what = f"{event.side} {event.quantity} {event.symbol} at {event.price}"
            order = f" (order #{trade.order_id})" if trade.order_id else ""
            where = self.venues.get(portfolio_id)
            venue_tag = f" [{where}]" if where else ""
            if notice:
                await self.notify(
                    user_id,
                    f"Filled: {what}{order}{realized_text(trade)}{venue_tag}",
                    NotificationKind.FILLS,
                )
            waiting = self._answers.get(trade.order_id) if trade.order_id else None
            if waiting is not None and not waiting.done():  # a cancel meets a fill that ends it
                filled = await self.db.scoped(Actor.user(user_id)).orders.get(trade.order_id)
                if filled.status not in OPEN_STATUSES:
                    waiting.set_result(filled.status)
            for listener in self.fill_listeners:
                try:
                    await listener(user_id, portfolio_id, event)
                except Exception:  # a listener must never stop the event stream
                    log.exception("fill listener failed")
            return
        answer = self._answers.get(row.id)
        awaited = answer is not None and not answer.done()
        if answer is not None and awaited and row.status not in OPEN_STATUSES:
            answer.set_result(row.status)
        # An order that ended here is told once. A cancel someone waits for is told by its
        # outcome; a later one (a cancel reported pending, one made on the exchange) here.
        # Told by its outcome counts as told: Binance reports a cancel twice (the answer, then
        # the stream), and the second comes when nobody waits any more.
        ended_here = event.status in ENDED_STATUSES and row.status == event.status
        if ended_here and self._told(row.id) and not (awaited and event.status == "CANCELED"):
            reason = f": {event.reason}" if event.reason else ""
            await self.notify(
                user_id, f"Order #{row.id} {event.status.lower()}{reason}", NotificationKind.FILLS
            )

    def _told(self, order_id: int) -> bool:
        """True the first time an order's end is told (a duplicated event is not told again)."""
        if order_id in self._ends_told:
            return False
        self._ends_told[order_id] = None
        if len(self._ends_told) > ENDS_REMEMBERED:
            self._ends_told.pop(next(iter(self._ends_told)))
        return True

    async def _keep(
        self, dal: ScopedDal, portfolio_id: int, event: BrokerEvent, error: Exception
    ) -> None:
        text = f"{type(error).__name__}: {error}"[:500]
        try:
            kept = await dal.unapplied_events.keep(portfolio_id, event_to_json(event), text)
        except Exception:
            log.critical(
                "broker event could not even be kept; held in memory and tried again: %s",
                event,
                exc_info=True,
            )
            self._held.append((dal, portfolio_id, event))
            return
        log.error("broker event kept as unapplied #%s: %s", kept.id, text)
        await self.notify(
            dal.actor.user_id or 0,
            f"A broker event for portfolio #{portfolio_id} could not be applied and is kept "
            f"(#{kept.id}); tradebook tries it again. Reason: {text}",
            NotificationKind.RISK,
        )

    async def retry_kept(self) -> int:
        """Apply the broker events kept earlier (oldest first), then those held in memory
        (that could not even be kept); returns how many of the kept ones applied."""
        applied = await self._retry_stored()
        held, self._held = self._held, []
        for dal, portfolio_id, event in held:
            await self.apply(dal, portfolio_id, event)  # held again if the database is still out
        return applied

    async def _retry_stored(self) -> int:
        async with self.db.session(Actor.system(), readonly=True) as s:
            kept = await s.unapplied_events.pending()
        applied = 0
        for row in kept:
            dal = self.db.scoped(Actor.user(row.user_id))
            event = event_from_json(row.event_json)
            try:
                result = await apply_event(dal, row.portfolio_id, event)
            except Exception as exc:
                await dal.unapplied_events.failed_again(row.id, f"{type(exc).__name__}: {exc}")
                continue
            await dal.unapplied_events.applied(row.id)
            applied += 1
            await self._after(row.user_id, row.portfolio_id, event, result)
        return applied

    # --- waiting (tests, shutdown) --------------------------------------------------------
    async def idle(self) -> None:
        """Wait until every gateway's events so far are applied."""
        for gateway in list(self.gateways.values()):
            await gateway.drained()


async def _account_with_broker(dal: ScopedDal, account_id: int) -> sa.Row[Any]:
    """One of the actor's accounts with its broker's code (``broker_code``)."""
    for row in await dal.accounts.list():
        if row.id == account_id:
            return row
    raise NotFound(f"no account #{account_id}")


def fills_summary(applied: list[tuple[FillEvent, Any]], venue: str | None) -> str:
    """One notice for many fills applied at once: per order, side and symbol, the quantity,
    the average price (exact: notional over quantity, 18 places) and the realized PnL."""
    groups: dict[tuple[int | None, str, str], list[tuple[FillEvent, Any]]] = {}
    for fill, trade in applied:
        groups.setdefault((trade.order_id, fill.side, fill.symbol), []).append((fill, trade))
    lines = [f"Filled {len(applied)} times" + (f" [{venue}]" if venue else "") + ":"]
    with localcontext(DECIMAL_CONTEXT):
        for (order_id, side, symbol), group in list(groups.items())[:SUMMARY_LINES]:
            quantity = sum((f.quantity for f, _ in group), Decimal(0))
            notional = sum((f.quantity * f.price for f, _ in group), Decimal(0))
            average = (notional / quantity).quantize(Decimal("1e-18")).normalize()
            realized = sum((t.realized_pnl or Decimal(0) for _, t in group), Decimal(0))
            order = f" (order #{order_id})" if order_id else ""
            pnl = f", realized {realized:+f}" if realized else ""
            lines.append(
                f"• {side} {quantity.normalize():f} {symbol} at avg {average:f}{order}, "
                f"{len(group)} fill{'' if len(group) == 1 else 's'}{pnl}"
            )
    if len(groups) > SUMMARY_LINES:
        lines.append(f"… and {len(groups) - SUMMARY_LINES} more orders (/orders)")
    return "\n".join(lines)


def realized_text(trade: Any) -> str:
    """ ", realized +96.95 (+3.23%)" for a fill that reduced a position, else "". The % is of
    what the closed quantity cost: the fill's notional less (long) or plus (short) the PnL."""
    realized = trade.realized_pnl
    if not realized:
        return ""
    with localcontext(DECIMAL_CONTEXT):
        notional = trade.quantity * trade.price
        cost = notional - realized if trade.side == "SELL" else notional + realized
        pct = f" ({realized / cost * 100:+.2f}%)" if cost > 0 else ""
    return f", realized {realized:+f}{pct}"


def _gateway_refusal(gateway: OrderGateway, order: dict[str, Any]) -> str | None:
    """Why the order's broker would refuse it, when its gateway knows before sending it."""
    refusal = getattr(gateway, "refusal", None)
    return refusal(order) if refusal is not None else None


def _breaches(verdict: Verdict) -> str | None:
    return "; ".join(b.message for b in verdict.breaches) or None


def event_to_json(event: BrokerEvent) -> dict[str, Any]:
    """A broker event as JSON (decimals and times as text): what ``unapplied_events`` keeps."""
    data: dict[str, Any] = _jsonable(dataclasses.asdict(event))
    data["kind"] = "fill" if isinstance(event, FillEvent) else "order"
    return data


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dt.datetime):
        return value.isoformat()
    return value


__all__ = ["CancelOutcome", "GatewayOrder", "OrderDesk", "OrderUpdate", "event_to_json"]
