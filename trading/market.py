"""Market data: bars, the latest marks, and the feed pump that hands bars to whoever listens.

No database access happens here. ``Market`` runs one price feed: every bar updates the marks
(latest close per instrument) and the window of recent bars, then goes to each listener in the
order they subscribed — the paper gateways (matching), the strategy runtime, alerts.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal

from dal.decimals import check_amount

log = logging.getLogger("tradebook.market")


def aware(value: object, name: str) -> dt.datetime:
    if not isinstance(value, dt.datetime):
        raise TypeError(f"{name} must be a datetime, not {type(value).__name__}")
    if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
        raise ValueError(f"{name} {value.isoformat()} is naive; give an aware datetime")
    return value


def exact_decimal(value: object, name: str) -> Decimal:
    if not isinstance(value, Decimal) or isinstance(value, bool):
        raise TypeError(f"{name} must be a Decimal, not {type(value).__name__}")
    if not value.is_finite():
        raise ValueError(f"{name} must be finite, not {value}")
    return value


@dataclass(frozen=True)
class Bar:
    """One OHLC bar of ``symbol`` starting at ``time`` (aware). Checked on creation."""

    symbol: str
    time: dt.datetime
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal

    def __post_init__(self) -> None:
        if not isinstance(self.symbol, str) or not self.symbol:
            raise ValueError("a bar needs a symbol")
        aware(self.time, "bar time")
        for name in ("open", "high", "low", "close"):
            value = exact_decimal(getattr(self, name), f"bar {name}")
            if value <= 0:
                raise ValueError(f"bar {name} must be positive, not {value}")
            check_amount(value)
        if not (self.low <= min(self.open, self.close) and self.high >= max(self.open, self.close)):
            raise ValueError(
                f"bar of {self.symbol} at {self.time.isoformat()} is inconsistent: "
                f"open {self.open}, high {self.high}, low {self.low}, close {self.close}"
            )


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


BarListener = Callable[[Bar], Awaitable[None]]


class Market:
    """The marks and the bar listeners of one running feed (the feed itself is pumped by
    ``pump``)."""

    def __init__(self) -> None:
        self.marks = MarkBook()
        self.instrument_ids: dict[str, int] = {}  # symbol → instruments.id
        # The exchange whose real prices the feed carries (None: simulated prices), and its
        # instruments priced by the same bars as the feed's own: symbol → their ids.
        self.priced_exchange: str | None = None
        self.also_marks: dict[str, list[int]] = {}
        # Since when the feed has sent nothing new (None: it is current, or cannot tell).
        self.stale_since: Callable[[], dt.datetime | None] = lambda: None
        self.last_bar_time: dt.datetime | None = None
        self._listeners: list[tuple[str, BarListener]] = []
        self.ended = asyncio.Event()

    def alias(self, symbol: str, instrument_id: int, exchange: str | None) -> None:
        """Price an exchange's instrument with the feed's bars of the same symbol, when the
        feed carries that exchange's real prices (never simulated prices)."""
        if exchange is None or exchange != self.priced_exchange:
            return
        ids = self.also_marks.setdefault(symbol, [])
        if instrument_id not in ids:
            ids.append(instrument_id)
        price = self.marks.by_symbol.get(symbol)
        if price is not None:
            self.marks.marks[instrument_id] = price

    def subscribe(self, name: str, listener: BarListener) -> None:
        self._listeners.append((name, listener))

    def unsubscribe(self, listener: BarListener) -> None:
        self._listeners = [(n, li) for n, li in self._listeners if li != listener]

    async def on_bar(self, bar: Bar) -> None:
        """One bar: marks first, then every listener; a failing listener is logged and the
        others still get the bar."""
        self.last_bar_time = bar.time
        self.marks.update(bar, self.instrument_ids.get(bar.symbol))
        for instrument_id in self.also_marks.get(bar.symbol, ()):
            self.marks.marks[instrument_id] = bar.close
        for name, listener in list(self._listeners):
            try:
                await listener(bar)
            except Exception:
                log.exception("bar listener %s failed", name)
