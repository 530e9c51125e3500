"""Binance's REST and WebSocket client for tradebook: ccxt's, with Binance's answers kept as
Binance sent them.

``BinanceClient`` hands every user-data ``executionReport`` to a sink as it came (before ccxt
folds it into its order cache) and raises errors with what Binance said: 418/429 as
``Throttled`` with the Retry-After, other 4xx as ``BinanceApiError`` with Binance's code.
``make_client`` points one at the live exchange, the Spot testnet or another server speaking
Binance's API (the tests' fake). ``binance_account_check`` is ``/account test``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import ccxt.pro as ccxtpro
import sqlalchemy as sa
from ccxt.base.errors import BaseError, DDoSProtection, ExchangeError, ExchangeNotAvailable

from dal.errors import NotFound, TradebookError
from trading.brokers.credentials import Credentials, load_credentials
from trading.desk import AccountCheck

# ccxt's DEBUG lines show every signed request with its API key header: never emitted.
logging.getLogger("ccxt").setLevel(logging.INFO)


class Throttled(DDoSProtection):  # type: ignore[misc]  # ccxt's errors are untyped
    """429 (too many requests) or 418 (banned), with Binance's Retry-After."""

    def __init__(self, status: int, retry_after_s: float, body: str) -> None:
        super().__init__(f"binance {status} {body}")
        self.status = status
        self.retry_after_s = retry_after_s


class Refused(TradebookError):
    """Binance refused the request (the message carries Binance's code when it gave one)."""


class NotOnExchange(Refused):
    """Binance does not know the order (-2013 on a query, -2011 on a cancel)."""


class Ambiguous(TradebookError):
    """No answer (time-out, 5xx, connection lost): the request may or may not have acted."""


class BinanceApiError(ExchangeError):  # type: ignore[misc]  # ccxt's errors are untyped
    """A 4xx answer with Binance's ``{"code": …, "msg": …}``, as Binance sent it (ccxt's own
    mapping matches on the message and drops the code)."""

    def __init__(self, status: int, code: int, msg: str) -> None:
        super().__init__(f"binance {status} {code}: {msg}")
        self.status, self.code, self.msg = status, code, msg


class RollingWindow:
    """ccxt's rolling-window rate limit: a request goes at once while the requests of the
    last ``window_ms`` weigh less than ``max_weight``, else it waits, in order, until the
    oldest leave the window. The same rule in constant time per request: ccxt's own throttler
    rebuilds its list of the window's requests at every request (hundreds at 10 orders a
    second) and makes even a request with room wait a turn of the event loop."""

    def __init__(
        self, window_ms: float, max_weight: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.window_s = window_ms / 1000
        self.max_weight = max_weight
        self.clock = clock
        self._sent: deque[tuple[float, float]] = deque()  # (time, cost), oldest first
        self._weight = 0.0
        self._queue = asyncio.Lock()  # requests that had to wait go in their order

    async def wait(self, cost: float) -> None:
        if not self._queue.locked() and self._take(cost):
            return
        async with self._queue:
            while not self._take(cost):
                await asyncio.sleep(max(self._sent[0][0] + self.window_s - self.clock(), 0.001))

    def _take(self, cost: float) -> bool:
        """Count the request in if the window has room for it (an empty window always has)."""
        now = self.clock()
        while self._sent and self._sent[0][0] <= now - self.window_s:
            self._weight -= self._sent.popleft()[1]
        if not self._sent:
            self._weight = 0.0  # no drift from adding and taking away float costs
        elif self._weight + cost > self.max_weight:
            return False
        self._sent.append((now, cost))
        self._weight += cost
        return True


class BinanceClient(ccxtpro.binance):  # type: ignore[misc]  # ccxt is untyped
    """ccxt's Binance with three hooks: every ``executionReport`` goes to ``sink`` as it came;
    errors keep what Binance said (418/429 raise ``Throttled`` with its Retry-After, other
    4xx ``BinanceApiError`` with its code; 5xx stay ccxt's network errors: the outcome is
    unknown, as Binance's docs say of them); REST requests are rate-limited by
    ``RollingWindow`` with ccxt's own figures for Binance."""

    sink: Callable[[dict[str, Any]], None] | None = None
    _window: RollingWindow | None = None

    async def throttle(self, cost: float | None = None) -> None:
        bucket = self.tokenBucket
        if self._window is None:
            size = bucket["windowSize"]
            self._window = RollingWindow(size, size / bucket["rateLimit"])
        await self._window.wait(bucket["cost"] if cost is None else cost)

    def handle_order_update(self, client: Any, message: dict[str, Any]) -> Any:
        if self.sink is not None:
            self.sink(message)
        return super().handle_order_update(client, message)

    def handle_errors(
        self,
        code: int,
        reason: str,
        url: str,
        method: str,
        headers: Any,
        body: str,
        response: Any,
        request_headers: Any,
        request_body: Any,
    ) -> Any:
        if code in (418, 429):
            retry_after = (headers or {}).get("Retry-After") or "1"
            try:
                seconds = float(retry_after)
            except ValueError:
                seconds = 1.0
            raise Throttled(code, max(seconds, 0.0), body)
        if code >= 500:  # Binance: the request may or may not have been executed
            raise ExchangeNotAvailable(f"binance {code} {reason}")
        if 400 <= code < 500 and body:
            try:
                answer = json.loads(body)
            except ValueError:
                answer = None
            if isinstance(answer, dict) and isinstance(answer.get("code"), int):
                raise BinanceApiError(code, answer["code"], str(answer.get("msg", ""))[:200])
        return super().handle_errors(
            code, reason, url, method, headers, body, response, request_headers, request_body
        )


def make_client(
    credentials: Credentials, mode: str, base_url: str | None, timeout_ms: int = 10_000
) -> BinanceClient:
    """A client for one account: the live exchange, Binance's Spot testnet, or (``base_url``)
    a server speaking Binance's API elsewhere, such as the fake the tests run."""
    client = BinanceClient(
        {
            "apiKey": credentials.api_key.get_secret_value(),
            "secret": credentials.api_secret.get_secret_value(),
            "enableRateLimit": True,
            # Binance limits request weight per minute: a rolling minute lets a request go at
            # once while the minute's budget lasts (BinanceClient.throttle). ccxt's default
            # leaky bucket refills only while requests wait, so every order waited its cost,
            # 10 ms, however idle.
            "rateLimiterAlgorithm": "rollingWindow",
            "timeout": timeout_ms,  # then the answer counts as lost (see _resolve)
            "options": {
                "fetchMarkets": {"types": ["spot"]},
                "fetchCurrencies": False,
                "fetchMargins": False,
                "adjustForTimeDifference": False,
            },
        }
    )
    if base_url:
        ws_base = "ws" + base_url.removeprefix("http")
        client.urls["api"] = rebased_urls(
            client.urls["api"], base_url.rstrip("/"), ws_base.rstrip("/")
        )
    elif mode != "live":
        client.set_sandbox_mode(True)
    return client


def rebased_urls(urls: Any, http: str, ws: str) -> Any:
    """ccxt's URL table with every host replaced (``http`` for REST, ``ws`` for streams)."""
    if isinstance(urls, dict):
        return {k: rebased_urls(v, http, ws) for k, v in urls.items()}
    if isinstance(urls, str):
        parts = urlsplit(urls)
        return (ws if parts.scheme.startswith("ws") else http) + parts.path
    return urls


def binance_account_check(
    secrets_dir: Path, base_url: str | None = None, timeout_ms: int = 10_000
) -> AccountCheck:
    """``/account test``: ask Binance for the account with its keys; one line either way."""

    async def check(account: sa.Row[Any]) -> str:
        try:
            credentials = load_credentials(account, secrets_dir)
        except NotFound as exc:
            return str(exc)
        client = make_client(credentials, account.trading_mode, base_url, timeout_ms)
        where = f"Binance {account.trading_mode.upper()}"
        try:
            answer = await client.private_get_account({})
        except BinanceApiError as exc:
            return f"{where} refused the keys of {account.name!r}: {exc.msg} ({exc.code})."
        except Throttled as exc:
            return f"{where} is limiting this connection ({exc.status}); try again later."
        except BaseError as exc:
            return f"{where} could not be reached ({type(exc).__name__}); try again later."
        finally:
            await client.close()
        trading = "trading allowed" if answer.get("canTrade") else "trading NOT allowed"
        permissions = ", ".join(str(p) for p in answer.get("permissions", [])) or "none"
        return f"Keys of {account.name!r} work on {where}: {trading}; permissions {permissions}."

    return check
