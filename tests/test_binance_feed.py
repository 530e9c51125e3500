"""Binance's public klines as a price feed (trading/binance_feed.py), through ccxt against the
local fake of Binance's documented REST and WebSocket API (tests/fake_binance.py). No
database: the feed only hands out bars."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal
from typing import Any

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dal.decimals import AmountError
from tests.factories import wait_until
from tests.fake_binance import MINUTE_MS, FakeBinance
from trading.binance_feed import BinanceFeed, closed_bars, kline_bar
from trading.feeds import FeedInstrument, market_data_setting
from trading.market import Bar

D = Decimal
EXACT = D("60123.456789012345")  # 17 significant digits: a float keeps 16
UTC = dt.UTC


def at(ms: int) -> dt.datetime:
    return dt.datetime(1970, 1, 1, tzinfo=UTC) + dt.timedelta(milliseconds=ms)


async def wait_for(condition: Callable[[], object], timeout: float = 5.0) -> None:
    await wait_until(condition, timeout)


class Reader:
    """Takes the feed's bars in the background, as the app's pump does."""

    def __init__(self, feed: BinanceFeed) -> None:
        self.feed = feed
        self.bars: list[Bar] = []
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for bar in self.feed.stream():
            self.bars.append(bar)

    def after(self, n: int) -> list[Bar]:
        return self.bars[n:]

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


@pytest.fixture
async def fake() -> AsyncIterator[FakeBinance]:
    fake = FakeBinance(prices={"BTCUSDT": EXACT, "ETHUSDT": D("3000")})
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


@pytest.fixture
async def feeds(fake: FakeBinance) -> AsyncIterator[Callable[..., BinanceFeed]]:
    made: list[BinanceFeed] = []

    def make(**kw: Any) -> BinanceFeed:
        kw.setdefault("warmup", 5)
        kw.setdefault("reconnect_pause_s", 0.05)
        kw.setdefault("timeout_ms", 3000)
        feed = BinanceFeed(["BTCUSDT", "ETHUSDT"], base_url=fake.url, **kw)
        made.append(feed)
        return feed

    yield make
    for feed in made:
        await feed.close()


@pytest.fixture
async def running(
    feeds: Callable[..., BinanceFeed],
) -> AsyncIterator[Callable[..., Awaitable[Reader]]]:
    readers: list[Reader] = []

    async def start(**kw: Any) -> Reader:
        feed = feeds(**kw)
        await feed.load()
        reader = Reader(feed)
        readers.append(reader)
        await wait_for(lambda: feed.connected.is_set())
        await wait_for(lambda: len(reader.bars) == 2 * feed.warmup)
        return reader

    yield start
    for reader in readers:
        await reader.stop()


# --- start-up -------------------------------------------------------------------------------
async def test_load_reads_rules_and_exact_warmup(
    fake: FakeBinance, feeds: Callable[..., BinanceFeed]
) -> None:
    feed = feeds()
    await feed.load()
    assert feed.instruments == [
        FeedInstrument("BTCUSDT", "PAPER", "CRYPTO", "USDT", D("0.01"), D("0.00001")),
        FeedInstrument("ETHUSDT", "PAPER", "CRYPTO", "USDT", D("0.01"), D("0.0001")),
    ]
    reader = Reader(feed)
    try:
        await wait_for(lambda: len(reader.bars) == 10)
    finally:
        await reader.stop()
    latest = at(fake.kline_open("BTCUSDT") - MINUTE_MS)
    btc = [b for b in reader.bars if b.symbol == "BTCUSDT"]
    assert [b.time for b in btc] == [latest - n * feed.interval for n in range(4, -1, -1)]
    assert all(b.open == b.high == b.low == b.close == EXACT for b in btc)
    assert str(btc[0].close) == "60123.456789012345"  # the float ccxt would give: ...01234
    assert float(EXACT) != EXACT  # what a float would have lost
    assert [b.time for b in reader.bars] == sorted(b.time for b in reader.bars)
    # Public endpoints only: no key was ever needed.
    assert {path for method, path in fake.requests if method != "WS"} == {
        "/api/v3/exchangeInfo",
        "/api/v3/klines",
    }


async def test_unknown_symbol_is_refused(fake: FakeBinance) -> None:
    feed = BinanceFeed(["BTCUSDT", "NOPEUSDT"], base_url=fake.url, warmup=0)
    try:
        with pytest.raises(ValueError, match="no spot symbol NOPEUSDT"):
            await feed.load()
    finally:
        await feed.close()


# --- live bars ------------------------------------------------------------------------------
async def test_closed_klines_are_bars_open_ones_and_repeats_are_not(
    fake: FakeBinance, running: Callable[..., Awaitable[Reader]]
) -> None:
    reader = await running()
    n = len(reader.bars)
    assert ("WS", "SUBSCRIBE btcusdt@kline_1m ethusdt@kline_1m") in fake.requests

    await fake.set_price("BTCUSDT", D("61000"))  # the minute in progress: no bar
    first = await fake.close_kline("BTCUSDT", "61000", "61500.5", "60900", "61200.12345678901234")
    await wait_for(lambda: len(reader.bars) == n + 1)
    await fake.repeat_kline("BTCUSDT", first)  # the same closed minute again
    await fake.repeat_kline("BTCUSDT", first - MINUTE_MS)  # an older one (out of order)
    await fake.set_price("BTCUSDT", D("61300"))
    second = await fake.close_kline("BTCUSDT", "61200", "61400", "61100", "61300")
    eth = await fake.close_kline("ETHUSDT", "3000", "3010", "2990", "3005.5")
    await wait_for(lambda: len(reader.bars) == n + 3)
    await asyncio.sleep(0.05)
    assert reader.after(n) == [
        Bar("BTCUSDT", at(first), D("61000"), D("61500.5"), D("60900"), D("61200.12345678901234")),
        Bar("BTCUSDT", at(second), D("61200"), D("61400"), D("61100"), D("61300")),
        Bar("ETHUSDT", at(eth), D("3000"), D("3010"), D("2990"), D("3005.5")),
    ]
    assert reader.bars[n].close == D("61200.12345678901234")
    assert reader.feed.stale_since is None


async def test_reconnect_recovers_the_minute_closed_while_disconnected(
    fake: FakeBinance, running: Callable[..., Awaitable[Reader]]
) -> None:
    reader = await running()
    feed = reader.feed
    n = len(reader.bars)
    before = await fake.close_kline("BTCUSDT", "60000", "60100", "59900", "60050")
    await wait_for(lambda: len(reader.bars) == n + 1)

    await fake.drop_market_streams()
    missed = await fake.close_kline("BTCUSDT", "60050", "60500", "60000", "60400.25")
    await wait_for(lambda: feed.connections == 2)
    assert feed.recovered == 1  # by REST, from the last bar's minute + 1
    after = await fake.close_kline("BTCUSDT", "60400.25", "60450", "60300", "60310")
    await fake.repeat_kline("BTCUSDT", missed)  # the stream repeating it changes nothing
    await wait_for(lambda: len(reader.bars) == n + 3)
    await asyncio.sleep(0.05)
    assert [(b.time, b.close) for b in reader.after(n)] == [
        (at(before), D("60050")),
        (at(missed), D("60400.25")),
        (at(after), D("60310")),
    ]
    assert fake.requests.count(("WS", "/ws/0")) == 2  # ccxt's URL for its spot streams
    assert fake.requests.count(("WS", "SUBSCRIBE btcusdt@kline_1m ethusdt@kline_1m")) == 2


async def test_reconnects_back_off_doubling_up_to_the_cap(
    fake: FakeBinance, running: Callable[..., Awaitable[Reader]], caplog: Any
) -> None:
    reader = await running(reconnect_pause_s=0.05, reconnect_max_s=0.2)
    feed = reader.feed
    for _ in range(4):  # the catch-up after each reconnect fails 4 times
        fake.fail_next("klines", 503, -1001, "Internal error; unable to process your request.")
    caplog.set_level(logging.WARNING, logger="tradebook.binance_feed")
    await fake.drop_market_streams()
    await wait_for(lambda: feed.connections == 2)
    pauses = [
        r.getMessage().rpartition("reconnecting in ")[2]
        for r in caplog.records
        if "reconnecting in" in r.getMessage()
    ]
    assert pauses == ["0.05 s", "0.1 s", "0.2 s", "0.2 s", "0.2 s"]
    missed = await fake.close_kline("BTCUSDT", "1", "1", "1", "1")
    await wait_for(lambda: reader.bars[-1].time == at(missed))


async def test_stale_feed_is_flagged_and_cleared_when_bars_resume(
    fake: FakeBinance, running: Callable[..., Awaitable[Reader]]
) -> None:
    reader = await running(stale_after=dt.timedelta(seconds=0.4))
    feed = reader.feed
    n = len(reader.bars)
    assert feed.stale_since is None
    started = dt.datetime.now(UTC)
    await wait_for(lambda: feed.stale_since is not None)
    stale_since = feed.stale_since
    assert stale_since is not None and stale_since.tzinfo is not None
    assert stale_since <= dt.datetime.now(UTC)
    assert stale_since >= started - dt.timedelta(seconds=1)
    assert reader.after(n) == []  # no bar is made up while stale
    # The silent connection is renewed (it may be half dead).
    await wait_for(lambda: fake.requests.count(("WS", "/ws/0")) >= 2)

    start = await fake.close_kline("ETHUSDT", "3000", "3001", "2999", "3000.5")
    await wait_for(lambda: len(reader.bars) == n + 1)
    assert feed.stale_since is None
    assert reader.after(n) == [Bar("ETHUSDT", at(start), D(3000), D(3001), D(2999), D("3000.5"))]


# --- REST rows and kline events -----------------------------------------------------------
def test_rest_rows_in_progress_or_float_are_left_out() -> None:
    now = 1_700_000_000_000 // MINUTE_MS * MINUTE_MS + 30_000  # mid-minute
    start = now // MINUTE_MS * MINUTE_MS

    def row(t: int, price: Any) -> list[Any]:
        return [t, price, price, price, price, "1", t + MINUTE_MS - 1, "1", 1, "0", "0", "0"]

    rows = [
        row(start - MINUTE_MS, "60123.456789012345"),
        row(start - 2 * MINUTE_MS, 1.5),
        row(start, "1"),
    ]
    bars = closed_bars("BTCUSDT", rows, now)
    assert [(b.time, b.close) for b in bars] == [(at(start - MINUTE_MS), EXACT)]
    with pytest.raises(AmountError):
        kline_bar("BTCUSDT", start, 1.5, 1.5, 1.5, 1.5)


async def test_fake_klines_follow_binance_docs(fake: FakeBinance) -> None:
    """REST ``startTime``/``limit``; ``/ws/<stream>`` sends raw payloads, ``/stream`` wraps
    them (web-socket-streams.md)."""
    first = await fake.close_kline("BTCUSDT", "1", "2", "0.5", "1.5")
    await fake.close_kline("BTCUSDT", "1.5", "2", "1", "1.75")
    async with aiohttp.ClientSession() as http:
        query = {"symbol": "BTCUSDT", "interval": "1m", "startTime": str(first), "limit": "1"}
        async with http.get(f"{fake.url}/api/v3/klines", params=query) as answer:
            rows = await answer.json()
        assert rows == [
            [first, "1.00000000", "2.00000000", "0.50000000", "1.50000000", *rows[0][5:]]
        ]
        assert rows[0][6] == first + MINUTE_MS - 1
        ws_url = "ws" + fake.url.removeprefix("http")
        raw = await http.ws_connect(f"{ws_url}/ws/btcusdt@kline_1m")
        combined = await http.ws_connect(f"{ws_url}/stream?streams=btcusdt@kline_1m")
        await wait_for(lambda: len(fake._kline_sockets) == 2)
        start = await fake.close_kline("BTCUSDT", "2", "3", "1", "2.5")
        event = json.loads((await raw.receive(timeout=2)).data)
        wrapped = json.loads((await combined.receive(timeout=2)).data)
        assert wrapped == {"stream": "btcusdt@kline_1m", "data": event}
        assert event["e"] == "kline" and event["k"]["t"] == start
        assert (event["k"]["x"], event["k"]["c"], event["k"]["i"]) == (True, "2.50000000", "1m")
        await raw.close()
        await combined.close()


# --- the setting ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("random", ("random", None)),
        (" RANDOM ", ("random", None)),
        ("binance", ("binance", None)),
        ("Binance", ("binance", None)),
        ("csv:prices.csv", ("csv", "prices.csv")),
        ("CSV:/data/My Prices.csv", ("csv", "/data/My Prices.csv")),
        ("csv:C:\\data\\p.csv", ("csv", "C:\\data\\p.csv")),
    ],
)
def test_market_data_setting(value: str, expected: tuple[str, str | None]) -> None:
    assert market_data_setting(value) == expected


@pytest.mark.parametrize("value", ["", "csv", "csv:", "csv:  ", "binance:x", "kraken", "random:"])
def test_market_data_setting_refuses(value: str) -> None:
    with pytest.raises(ValueError, match="TRADEBOOK_MARKET_DATA must be") as info:
        market_data_setting(value)
    assert "\n" not in str(info.value)


@given(st.text(max_size=20))
def test_market_data_setting_is_total(value: str) -> None:
    """Any text is a kind or a one-line ValueError, never anything else."""
    try:
        kind, arg = market_data_setting(value)
    except ValueError as exc:
        assert "\n" not in str(exc).replace(repr(value), "")
        return
    assert kind in ("random", "binance", "csv")
    assert (arg is None) == (kind != "csv")
