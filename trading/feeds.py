"""Price feeds (no OHLCV in the database): where the bars come from.

* ``RandomWalkFeed``: a seeded random walk, endless by default — the default paper feed. It
  starts from given prices (after a restart: the last stored marks) so prices continue instead
  of replaying the same walk. No permissively licensed historical price series could be
  verified offline when this was built, so tradebook does not ship one.
* ``CsvReplayFeed``: replays a CSV with the header ``time,symbol,open,high,low,close``
  (ISO-8601 times with a zone, decimal text prices), one step per distinct time, in file order.

Feed time is the wall clock: a step is one bar per symbol, every step is stamped with the time
it is handed out and the next comes ``interval`` later, however many symbols there are (the
warm-up steps, handed out at once for indicator history, lie just before now). Tests and
backtests give ``start`` instead: step ``n`` is then stamped ``start + n × interval`` and the
steps come as fast as they are taken.
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import random
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Literal

from dal.decimals import check_amount
from trading.market import Bar

__all__ = ["Candle", "CsvReplayFeed", "FeedInstrument", "PriceFeed", "RandomWalkFeed"]


@dataclass(frozen=True)
class FeedInstrument:
    """What a feed trades; created in the instruments table on first run (idempotent)."""

    symbol: str
    exchange: str
    asset_type: str
    currency: str
    tick_size: Decimal
    lot_size: Decimal


@dataclass(frozen=True)
class Candle:
    """One step's prices of one symbol, before the feed stamps its time."""

    symbol: str
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal


class PriceFeed:
    instruments: list[FeedInstrument]
    warmup: int = 0  # steps handed out at once before pacing starts (indicator history)
    interval: dt.timedelta = dt.timedelta(seconds=1)
    start: dt.datetime | None = None  # None: the wall clock
    # The exchange whose real prices these are (its instruments of the same symbols are
    # marked by them too); None: simulated or replayed prices, which mark nothing else.
    prices_of: str | None = None

    def steps(self) -> Iterator[list[Candle]]:
        """One list of candles (one per symbol) per step; ends when the prices end."""
        raise NotImplementedError

    async def stream(self, paced: bool = True) -> AsyncIterator[Bar]:
        """The bars, stamped (see the module docstring); ``paced`` waits ``interval`` between
        steps after the warm-up."""
        wait = self.interval.total_seconds() if paced else 0.0
        first = self.start or _now() - self.warmup * self.interval
        last: dt.datetime | None = None
        for n, candles in enumerate(self.steps()):
            if self.start is not None or n < self.warmup:
                time = first + n * self.interval
            else:  # the wall clock, strictly after the previous step
                time = _now()
                if last is not None and time <= last:
                    time = last + dt.timedelta(microseconds=1)
            last = time
            for c in candles:
                yield Bar(c.symbol, time, c.open, c.high, c.low, c.close)
            if n + 1 >= self.warmup and wait:
                await asyncio.sleep(wait)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


DEFAULT_INSTRUMENTS = [
    FeedInstrument("BTCUSDT", "PAPER", "CRYPTO", "USDT", Decimal("0.01"), Decimal("0.0001")),
    FeedInstrument("ETHUSDT", "PAPER", "CRYPTO", "USDT", Decimal("0.01"), Decimal("0.001")),
]
_START_PRICES = {"BTCUSDT": Decimal("60000"), "ETHUSDT": Decimal("3000")}


class RandomWalkFeed(PriceFeed):
    """Seeded random walk: ``length`` steps (None: endless), from ``start_prices`` (by symbol;
    defaults for the rest)."""

    def __init__(
        self,
        instruments: list[FeedInstrument] | None = None,
        seed: int | None = 7,
        length: int | None = None,
        start: dt.datetime | None = None,
        volatility_bps: int = 20,
        warmup: int = 60,
        interval: dt.timedelta = dt.timedelta(minutes=1),
        start_prices: Mapping[str, Decimal] | None = None,
    ) -> None:
        self.instruments = instruments or DEFAULT_INSTRUMENTS
        self.warmup = warmup
        self.seed = seed
        self.length = length
        self.interval = interval
        self.start = start
        self.volatility_bps = volatility_bps
        self.start_prices = dict(start_prices or {})

    def steps(self) -> Iterator[list[Candle]]:
        rng = random.Random(self.seed)
        prices = {
            i.symbol: self.start_prices.get(i.symbol) or _START_PRICES.get(i.symbol, Decimal(100))
            for i in self.instruments
        }
        n = 0
        while self.length is None or n < self.length:
            n += 1
            step = []
            for inst in self.instruments:
                open_ = prices[inst.symbol]
                moves = [
                    Decimal(rng.randint(-self.volatility_bps, self.volatility_bps))
                    for _ in range(3)
                ]
                path = [open_ * (1 + m / 10_000) for m in moves]
                # Never below one tick: an endless walk must not reach zero.
                close = max(_tick(path[-1], inst.tick_size), inst.tick_size)
                high = _tick(max([open_, *path]), inst.tick_size)
                low = max(_tick(min([open_, *path]), inst.tick_size), inst.tick_size)
                prices[inst.symbol] = close
                step.append(
                    Candle(
                        inst.symbol, open_, max(high, open_, close), min(low, open_, close), close
                    )
                )
            yield step


def _tick(value: Decimal, tick: Decimal) -> Decimal:
    return (value / tick).quantize(Decimal(1)) * tick


class CsvReplayFeed(PriceFeed):
    """The rows of a CSV, one step per distinct time (in file order). Restamped to the wall
    clock (or to ``start``) like every feed; the file's own times only order the rows."""

    def __init__(
        self,
        path: Path,
        exchange: str = "PAPER",
        currency: str = "USDT",
        interval: dt.timedelta = dt.timedelta(seconds=1),
        start: dt.datetime | None = None,
    ) -> None:
        self.path = Path(path)
        self.interval = interval
        self.start = start
        self._steps = self._read()
        symbols = sorted({c.symbol for step in self._steps for c in step})
        self.instruments = [
            FeedInstrument(
                s, exchange, "CRYPTO", currency, Decimal("0.00000001"), Decimal("0.00000001")
            )
            for s in symbols
        ]

    def _read(self) -> list[list[Candle]]:
        steps: list[list[Candle]] = []
        previous: dt.datetime | None = None
        with self.path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            missing = {"time", "symbol", "open", "high", "low", "close"} - set(
                reader.fieldnames or []
            )
            if missing:
                raise ValueError(f"{self.path}: missing columns {', '.join(sorted(missing))}")
            for line, row in enumerate(reader, start=2):
                try:
                    time = dt.datetime.fromisoformat(row["time"].replace("Z", "+00:00"))
                    if time.tzinfo is None:
                        raise ValueError("time has no zone")
                    prices = [check_amount(row[k]) for k in ("open", "high", "low", "close")]
                    candle = Candle(row["symbol"].strip().upper(), *prices)
                    Bar(candle.symbol, time, *prices)  # the same checks as every bar
                except Exception as exc:
                    raise ValueError(f"{self.path}:{line}: {exc}") from None
                if time != previous:
                    steps.append([])
                    previous = time
                steps[-1].append(candle)
        return steps

    def steps(self) -> Iterator[list[Candle]]:
        return iter(self._steps)


MarketDataKind = Literal["random", "csv", "binance"]


def market_data_setting(value: str) -> tuple[MarketDataKind, str | None]:
    """``TRADEBOOK_MARKET_DATA``: ``random`` (the default: the random walk, offline),
    ``csv:PATH`` (replay that file) or ``binance`` (Binance's public klines,
    trading/binance_feed.py). The kind is case-insensitive, the path is kept as written.
    Returns ``(kind, path or None)``; anything else is a ValueError of one line."""
    text = value.strip() if isinstance(value, str) else ""
    kind, colon, arg = text.partition(":")
    kind = kind.strip().lower()
    if kind in ("random", "binance") and not colon:
        return ("random" if kind == "random" else "binance"), None
    if kind == "csv" and colon and arg.strip():
        return "csv", arg.strip()
    raise ValueError(
        f"TRADEBOOK_MARKET_DATA must be 'random', 'csv:PATH' or 'binance', not {value!r}"
    )
