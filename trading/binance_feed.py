"""Real market data: Binance Spot's public 1-minute klines as a price feed (no API keys).

``BinanceFeed`` reads Binance's own decimal text, never ccxt's floats: the warm-up and every
catch-up come from the raw ``GET /api/v3/klines`` rows (ccxt's ``public_get_klines``), live
bars from the raw kline events of the market stream, taken by a hook on ccxt's
``handle_ohlcv`` before ccxt turns them into float candles (``watch_ohlcv_for_symbols`` only
drives the subscription; what it returns is never read).

* **Start-up** reads ``instruments`` before it streams, so the app awaits ``load()`` first: it
  reads ``exchangeInfo`` (tick and lot size from ``PRICE_FILTER.tickSize`` and
  ``LOT_SIZE.stepSize``, the currency is the quote asset) and the warm-up bars (the last
  ``warmup`` closed minutes per symbol). ``stream()`` calls ``load()`` itself when it was not.
* **Bars** are closed klines only (``"x": true`` on the stream; on REST a row whose close time
  has passed), stamped with the kline's open time (UTC), so every bar is one finished minute.
  Per symbol the times strictly increase: a kline seen twice (stream and REST, or a repeated
  event) is one bar.
* **Reconnects** back off from ``reconnect_pause_s`` (1 s) doubling to 60 s. After every
  (re)subscription the closed minutes since the last bar are fetched by REST (``startTime`` =
  last bar + 1 minute) before the stream's own events (held meanwhile) are taken, so no closed
  minute is skipped and none is taken twice.
* **Staleness:** when no bar has come for ``stale_after`` (default 3 minutes), ``stale_since``
  is the moment that happened (else None) — for ``/status`` — and the connection is renewed
  (it may be half dead), once per ``stale_after`` while it lasts. The feed never repeats an old
  price: while stale no bar comes at all, so paper matching (which matches on bars only) does
  not fill on old prices. The next bar clears ``stale_since``.

Bar times are kline open times: a bar arrives when its minute has closed, about a minute after
its stamp. Paper matching fills an order only on bars stamped after the order was accepted, so
an order is first matched against the minute that opens after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import ccxt.pro as ccxtpro

from dal.decimals import check_amount
from trading.binance_client import rebased_urls
from trading.brokers import binance_rest
from trading.feeds import FeedInstrument, PriceFeed
from trading.market import Bar

__all__ = ["BinanceFeed", "MarketDataClient", "closed_bars", "kline_bar", "make_market_client"]

log = logging.getLogger("tradebook.binance_feed")

INTERVAL = dt.timedelta(minutes=1)
RECONNECT_MAX_S = 60.0
REST_LIMIT = 1000  # Binance's largest page of klines
MAX_WARMUP = REST_LIMIT - 1  # one row of the page is the minute in progress
# A REST kline counts as closed once its close time lies this far behind our clock: a clock a
# little ahead of Binance's must not take a minute still in progress for a closed one (the
# stream delivers that minute's close instead).
CLOSE_MARGIN_MS = 2_000
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


class MarketDataClient(ccxtpro.binance):  # type: ignore[misc]  # ccxt is untyped
    """ccxt's Binance with two hooks on the market stream: every kline event goes to
    ``on_kline`` as Binance sent it (before ccxt parses its prices into floats), and every
    answer to a SUBSCRIBE to ``on_subscribed``."""

    on_kline: Callable[[dict[str, Any]], None] | None = None
    on_subscribed: Callable[[dict[str, Any]], None] | None = None

    def handle_ohlcv(self, client: Any, message: dict[str, Any]) -> Any:
        if self.on_kline is not None:
            self.on_kline(message)
        return super().handle_ohlcv(client, message)

    def handle_subscription_status(self, client: Any, message: dict[str, Any]) -> Any:
        if self.on_subscribed is not None:
            self.on_subscribed(message)
        return super().handle_subscription_status(client, message)


def make_market_client(base_url: str | None = None, timeout_ms: int = 10_000) -> MarketDataClient:
    """A keyless client for public market data: the real exchange, or (``base_url``) a server
    speaking Binance's API elsewhere, such as the fake the tests run."""
    client = MarketDataClient(
        {
            "enableRateLimit": True,
            "timeout": timeout_ms,
            "options": {
                "fetchMarkets": {"types": ["spot"]},  # exchangeInfo only
                "fetchCurrencies": False,
                "fetchMargins": False,
                "adjustForTimeDifference": False,
            },
        }
    )
    if base_url:
        http = base_url.rstrip("/")
        client.urls["api"] = rebased_urls(
            client.urls["api"], http, "ws" + http.removeprefix("http")
        )
    return client


def _time(ms: Any) -> dt.datetime:
    if not isinstance(ms, int) or isinstance(ms, bool):
        raise ValueError(f"kline time {ms!r} is not epoch milliseconds")
    return _EPOCH + dt.timedelta(milliseconds=ms)


def kline_bar(symbol: str, start_ms: Any, open_: Any, high: Any, low: Any, close: Any) -> Bar:
    """A bar from a kline's open time and its decimal-text prices (a float is refused)."""
    prices = [check_amount(p) for p in (open_, high, low, close)]
    return Bar(symbol, _time(start_ms), *prices)


def closed_bars(symbol: str, rows: list[Any], now_ms: int) -> list[Bar]:
    """The closed klines of a ``GET /api/v3/klines`` answer as bars, oldest first. A row whose
    close time has not passed ``now_ms`` (by ``CLOSE_MARGIN_MS``) is the minute in progress
    and left out; a malformed row is logged and left out."""
    bars = []
    for row in rows:
        try:
            if int(row[6]) + CLOSE_MARGIN_MS >= now_ms:
                continue
            bars.append(kline_bar(symbol, row[0], row[1], row[2], row[3], row[4]))
        except (ValueError, TypeError, IndexError, ArithmeticError) as exc:
            log.warning("Binance kline of %s left out: %s (%r)", symbol, exc, row)
    return sorted(bars, key=lambda b: b.time)


class BinanceFeed(PriceFeed):
    """Binance Spot's closed 1-minute klines of ``symbols`` (Binance ids such as "BTCUSDT").

    ``await feed.load()`` before reading ``instruments`` (the app's start-up does); then
    ``stream()`` yields the warm-up bars at once and after them every minute as it closes,
    until the stream is closed. ``stale_since`` is set while no bar has come for
    ``stale_after``. ``close()`` releases the connections (``stream()`` does when it ends)."""

    interval = INTERVAL
    prices_of = "BINANCE"

    def __init__(
        self,
        symbols: Sequence[str] = ("BTCUSDT", "ETHUSDT"),
        *,
        base_url: str | None = None,
        exchange: str = "PAPER",
        warmup: int = 60,
        stale_after: dt.timedelta | None = None,
        reconnect_pause_s: float = 1.0,
        reconnect_max_s: float = RECONNECT_MAX_S,
        timeout_ms: int = 10_000,
    ) -> None:
        wanted = [s.strip().upper() for s in symbols]
        if not wanted or not all(wanted):
            raise ValueError("a Binance feed needs at least one symbol, such as BTCUSDT")
        if not 0 <= warmup <= MAX_WARMUP:
            raise ValueError(f"warm-up must be 0 to {MAX_WARMUP} minutes, not {warmup}")
        self.symbols = list(dict.fromkeys(wanted))
        self.exchange = exchange
        self.warmup = warmup
        self.stale_after = stale_after if stale_after is not None else 3 * INTERVAL
        if self.stale_after <= dt.timedelta(0):
            raise ValueError("stale_after must be positive")
        self.reconnect_pause_s = reconnect_pause_s
        self.reconnect_max_s = reconnect_max_s
        self.timeout_s = timeout_ms / 1000
        self.instruments: list[FeedInstrument] = []  # filled by load()
        self.stale_since: dt.datetime | None = None
        self.last_time: dict[str, dt.datetime] = {}  # symbol → time of its latest bar
        self.connected = asyncio.Event()  # subscribed and caught up
        self.connections = 0  # completed (re)subscriptions with their catch-up
        self.recovered = 0  # bars taken from REST after a (re)subscription
        self.client = make_market_client(base_url, timeout_ms)
        self.client.on_kline = self._on_kline
        self.client.on_subscribed = self._on_subscribed
        self._unified: dict[str, str] = {}  # Binance id → ccxt's symbol
        self._warm: list[Bar] = []
        self._loaded = False
        self._bars: asyncio.Queue[Bar] = asyncio.Queue()
        self._pending: list[dict[str, Any]] | None = None  # stream events held during catch-up
        self._subscribed = asyncio.Event()
        self._kick = asyncio.Event()  # renew the connection (set while stale)
        self._fresh_at = 0.0  # loop time of the latest bar (or of the stream's start)
        self._fresh_wall = dt.datetime.now(dt.UTC)

    # --- start-up ---------------------------------------------------------------------------
    async def load(self) -> None:
        """Instruments from ``exchangeInfo`` and the warm-up bars (REST klines). Idempotent;
        an unknown symbol raises ValueError, a network failure ccxt's error."""
        if self._loaded:
            return
        await self.client.load_markets()
        infos: dict[str, dict[str, Any]] = {}
        for market in self.client.markets.values():
            info = market.get("info") or {}
            if market.get("spot") and info.get("symbol") in self.symbols:
                infos[info["symbol"]] = info
                self._unified[info["symbol"]] = market["symbol"]
        missing = [s for s in self.symbols if s not in infos]
        if missing:
            raise ValueError(f"Binance has no spot symbol {', '.join(missing)}")
        instruments = []
        for symbol in self.symbols:
            rules = binance_rest.symbol_rules(infos[symbol])
            if rules["tick_size"] is None or rules["lot_size"] is None:
                raise ValueError(f"Binance gives no tick or lot size for {symbol}")
            instruments.append(
                FeedInstrument(
                    symbol,
                    self.exchange,
                    "CRYPTO",
                    rules["currency"],
                    rules["tick_size"],
                    rules["lot_size"],
                )
            )
        warm: list[Bar] = []
        if self.warmup:
            for symbol in self.symbols:
                rows = await self.client.public_get_klines(
                    {"symbol": symbol, "interval": "1m", "limit": self.warmup + 1}
                )
                bars = closed_bars(symbol, rows, _now_ms())[-self.warmup :]
                if bars:
                    self.last_time[symbol] = bars[-1].time
                warm.extend(bars)
        order = {s: n for n, s in enumerate(self.symbols)}
        self._warm = sorted(warm, key=lambda b: (b.time, order[b.symbol]))
        self.instruments = instruments
        self._loaded = True

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.client.close()

    # --- the bars ---------------------------------------------------------------------------
    async def stream(self, paced: bool = True) -> AsyncIterator[Bar]:
        """The warm-up bars, then each closed minute as Binance reports it (``paced`` has no
        effect: real minutes come when they close). Ends only when closed or cancelled."""
        await self.load()
        loop = asyncio.get_running_loop()
        self._fresh_at, self._fresh_wall = loop.time(), dt.datetime.now(dt.UTC)
        tasks = [
            asyncio.create_task(self._run(), name="binance-feed"),
            asyncio.create_task(self._watchdog(), name="binance-feed-stale"),
        ]
        getter: asyncio.Future[Bar] | None = None
        try:
            warm, self._warm = self._warm, []
            for bar in warm:
                yield bar
            while True:
                getter = asyncio.ensure_future(self._bars.get())
                done, _ = await asyncio.wait([getter, *tasks], return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    bar, getter = getter.result(), None
                    yield bar
                    continue
                for task in tasks:  # a background task ended: a bug, not a network failure
                    if task.done():
                        task.result()
                        raise RuntimeError(f"{task.get_name()} ended")
        finally:
            if getter is not None:
                getter.cancel()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.connected.clear()
            await self.close()

    def _accept(self, bar: Bar) -> bool:
        """Queue ``bar`` unless its symbol already has a bar at or after its time."""
        last = self.last_time.get(bar.symbol)
        if last is not None and bar.time <= last:
            return False
        self.last_time[bar.symbol] = bar.time
        self._fresh_at = asyncio.get_running_loop().time()
        self._fresh_wall = dt.datetime.now(dt.UTC)
        if self.stale_since is not None:
            log.info("Binance market data fresh again (stale since %s)", self.stale_since)
            self.stale_since = None
            self._kick.clear()
        self._bars.put_nowait(bar)
        return True

    def _on_kline(self, message: dict[str, Any]) -> None:
        """A raw kline event from the stream (inside ccxt's handler: never raises)."""
        if self._pending is not None:
            self._pending.append(message)
            return
        self._take(message)

    def _take(self, message: dict[str, Any]) -> None:
        try:
            kline = message.get("k") or {}
            symbol = kline.get("s") or message.get("s")
            if kline.get("x") is not True or kline.get("i") != "1m":
                return
            if symbol not in self.symbols:
                return
            bar = kline_bar(symbol, kline["t"], kline["o"], kline["h"], kline["l"], kline["c"])
        except (ValueError, TypeError, KeyError, AttributeError, ArithmeticError) as exc:
            log.warning("Binance kline event left out: %s (%r)", exc, message)
            return
        self._accept(bar)

    def _on_subscribed(self, message: dict[str, Any]) -> None:
        self._subscribed.set()

    # --- the connection ---------------------------------------------------------------------
    async def _run(self) -> None:
        pause = self.reconnect_pause_s
        while True:
            self._subscribed.clear()
            self._pending = []
            watch = asyncio.create_task(self._watch(), name="binance-feed-watch")
            try:
                await self._until(self._subscribed.wait(), watch, "subscription")
                await self._catch_up()
                pending, self._pending = self._pending or [], None
                for message in pending:
                    self._take(message)
                self.connections += 1
                self.connected.set()
                pause = self.reconnect_pause_s
                await self._until(self._kick.wait(), watch, "stream")
                log.warning("Binance market data stale: renewing the connection")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                reason = str(exc) or type(exc).__name__
                log.warning("Binance market data lost (%s); reconnecting in %g s", reason, pause)
            finally:
                self.connected.clear()
                self._pending = None
                watch.cancel()
                await asyncio.gather(watch, return_exceptions=True)
                with contextlib.suppress(Exception):
                    await self.client.close_ws_clients()
            self._kick.clear()
            await asyncio.sleep(pause)
            pause = min(pause * 2, self.reconnect_max_s)

    async def _until(self, event: Awaitable[Any], watch: asyncio.Task[None], what: str) -> None:
        """Wait for ``event`` unless the stream fails first (its error is raised)."""
        waiter = asyncio.ensure_future(event)
        try:
            timeout = self.timeout_s if what == "subscription" else None
            done, _ = await asyncio.wait(
                [waiter, watch], timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            waiter.cancel()
        if watch in done:
            if watch.cancelled():  # ccxt cancels its futures when a connection is closed
                raise ConnectionError("the market stream was closed")
            watch.result()
            raise ConnectionError("the market stream ended")
        if not done:
            raise TimeoutError(f"no answer to the {what} within {self.timeout_s:.0f} s")

    async def _watch(self) -> None:
        """Keep ccxt's kline subscription running (what it returns is not read: floats)."""
        wanted = [[self._unified[s], "1m"] for s in self.symbols]
        while True:
            await self.client.watch_ohlcv_for_symbols(wanted)

    async def _catch_up(self) -> None:
        """Every closed minute after each symbol's latest bar, by REST."""
        for symbol in self.symbols:
            while (last := self.last_time.get(symbol)) is not None:
                start = last + INTERVAL
                rows = await self.client.public_get_klines(
                    {
                        "symbol": symbol,
                        "interval": "1m",
                        "startTime": _ms(start),
                        "limit": REST_LIMIT,
                    }
                )
                taken = sum(self._accept(b) for b in closed_bars(symbol, rows, _now_ms()))
                self.recovered += taken
                if taken:
                    log.info(
                        "Binance market data: %d closed minute(s) of %s by REST", taken, symbol
                    )
                if len(rows) < REST_LIMIT or not taken:
                    break

    async def _watchdog(self) -> None:
        """Mark the feed stale after ``stale_after`` without a bar, and renew the connection
        then and every ``stale_after`` while it stays stale."""
        loop = asyncio.get_running_loop()
        period = self.stale_after.total_seconds()
        while True:
            wait = self._fresh_at + period - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            if self.stale_since is None:
                self.stale_since = self._fresh_wall + self.stale_after
                log.warning(
                    "Binance market data stale: no closed minute since %s", self._fresh_wall
                )
            self._kick.set()
            await asyncio.sleep(period)


def _ms(value: dt.datetime) -> int:
    return (value - _EPOCH) // dt.timedelta(milliseconds=1)


def _now_ms() -> int:
    return int(time.time() * 1000)
