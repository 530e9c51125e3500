"""Price feeds (no OHLCV in the database): bars in, latest marks and recent bars in memory.

* ``RandomWalkFeed``: a seeded random walk (deterministic for a seed) — the default paper feed.
  No permissively licensed historical price series could be verified offline when this was
  built, so tradebook does not ship one; ``CsvReplayFeed`` replays any CSV you provide.
* ``CsvReplayFeed``: replays a CSV with the header ``time,symbol,open,high,low,close``
  (ISO-8601 times with a zone, decimal text prices), in file order.

A feed yields ``Bar``s; ``pace`` (bars per second) throttles the replay. ``MarkBook`` keeps the
latest close per instrument (the marks for unrealized PnL and risk) and a window of recent bars
(for indicators).
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import random
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from dal.types import check_amount
from strategies.paper_engine import Bar

__all__ = ["Bar", "CsvReplayFeed", "FeedInstrument", "MarkBook", "RandomWalkFeed"]


@dataclass(frozen=True)
class FeedInstrument:
    """What a feed trades; created in the instruments table on first run (idempotent)."""

    symbol: str
    exchange: str
    asset_type: str
    currency: str
    tick_size: Decimal
    lot_size: Decimal


class PriceFeed:
    instruments: list[FeedInstrument]
    warmup: int = 0  # bars handed out at once before pacing starts (indicator history)

    def bars(self) -> Iterator[Bar]:
        raise NotImplementedError

    async def stream(self, pace: Decimal | None = None) -> AsyncIterator[Bar]:
        """The bars, at ``pace`` bars per second (as fast as possible when None)."""
        delay = float(1 / pace) if pace else 0.0
        for n, bar in enumerate(self.bars()):
            yield bar
            await asyncio.sleep(delay if n >= self.warmup * len(self.instruments) else 0)


DEFAULT_INSTRUMENTS = [
    FeedInstrument("BTCUSDT", "PAPER", "CRYPTO", "USDT", Decimal("0.01"), Decimal("0.0001")),
    FeedInstrument("ETHUSDT", "PAPER", "CRYPTO", "USDT", Decimal("0.01"), Decimal("0.001")),
]
_START_PRICES = {"BTCUSDT": Decimal("60000"), "ETHUSDT": Decimal("3000")}


class RandomWalkFeed(PriceFeed):
    """Seeded random walk; ``length`` bars per symbol, ``interval`` apart. By default the bars
    keep pace with the wall clock when replayed at 1 / interval bars per second (the warm-up
    bars lie just before now), so paper fills carry real times."""

    def __init__(
        self,
        instruments: list[FeedInstrument] | None = None,
        seed: int = 7,
        length: int = 10_000,
        start: dt.datetime | None = None,
        volatility_bps: int = 20,
        warmup: int = 60,
        interval: dt.timedelta = dt.timedelta(minutes=1),
    ) -> None:
        self.instruments = instruments or DEFAULT_INSTRUMENTS
        self.warmup = warmup
        self.seed = seed
        self.length = length
        self.interval = interval
        self.start = start  # None: the warm-up ends "now", when the replay starts
        self.volatility_bps = volatility_bps

    def bars(self) -> Iterator[Bar]:
        rng = random.Random(self.seed)
        start = self.start or dt.datetime.now(dt.UTC) - self.warmup * self.interval
        prices = {i.symbol: _START_PRICES.get(i.symbol, Decimal("100")) for i in self.instruments}
        for n in range(self.length):
            time = start + n * self.interval
            for inst in self.instruments:
                open_ = prices[inst.symbol]
                moves = [
                    Decimal(rng.randint(-self.volatility_bps, self.volatility_bps))
                    for _ in range(3)
                ]
                path = [open_ * (1 + m / 10_000) for m in moves]
                close = _tick(path[-1], inst.tick_size)
                high = _tick(max([open_, *path]), inst.tick_size)
                low = _tick(min([open_, *path]), inst.tick_size)
                prices[inst.symbol] = close
                yield Bar(inst.symbol, time, open_, high, low, close)


def _tick(value: Decimal, tick: Decimal) -> Decimal:
    return (value / tick).quantize(Decimal(1)) * tick


class CsvReplayFeed(PriceFeed):
    def __init__(self, path: Path, exchange: str = "PAPER", currency: str = "USDT") -> None:
        self.path = Path(path)
        rows = list(self._read())
        symbols = sorted({bar.symbol for bar in rows})
        self._rows = rows
        self.instruments = [
            FeedInstrument(
                s, exchange, "CRYPTO", currency, Decimal("0.00000001"), Decimal("0.00000001")
            )
            for s in symbols
        ]

    def _read(self) -> Iterable[Bar]:
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
                    yield Bar(
                        row["symbol"].strip().upper(),
                        time.astimezone(dt.UTC),
                        *(check_amount(row[k]) for k in ("open", "high", "low", "close")),
                    )
                except Exception as exc:
                    raise ValueError(f"{self.path}:{line}: {exc}") from None

    def bars(self) -> Iterator[Bar]:
        return iter(self._rows)


class MarkBook:
    """Latest marks per instrument id and the last ``window`` bars per symbol."""

    def __init__(self, window: int = 500) -> None:
        self.marks: dict[int, Decimal] = {}
        self.by_symbol: dict[str, Decimal] = {}
        self.recent: dict[str, deque[Bar]] = defaultdict(lambda: deque(maxlen=window))

    def update(self, bar: Bar, instrument_id: int | None) -> None:
        self.by_symbol[bar.symbol] = bar.close
        if instrument_id is not None:
            self.marks[instrument_id] = bar.close
        self.recent[bar.symbol].append(bar)

    def closes(self, symbol: str, n: int) -> list[Decimal]:
        return [b.close for b in list(self.recent[symbol])[-n:]]
