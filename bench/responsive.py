"""The bot while a strategy ingests at full speed: the event loop's lag and bot replies.

One writer sends fills back to back through the DAL, as a strategy does (single fills, and
batches of 100), while a task measures the event loop's lag (it sleeps 1 ms at a time and
records how late it wakes up): first alone, then while the bot answers ``/positions`` and
``/pnl 30d`` for a user with a seeded history, driven through aiogram (``bench/botdriver.py``)
one command every 20 ms. The bot is also timed with no ingestion in the same rounds (``bot
alone``), and the probe alone (``nothing``) shows what the machine itself adds to the lag (a
shared, busy machine delays any process by tens of milliseconds now and then), so what the
ingestion costs shows beside the absolute figures. Every run ends with the exact check of the
writer's portfolio. Collections of the garbage collector's
oldest generation hold the loop too, whatever runs: they are recorded, and the lag is also
given for the samples that overlap none of them.
"""

from __future__ import annotations

import asyncio
import gc
import os
import time
from dataclasses import dataclass, field
from typing import Any

from bench.common import BenchDb, check_portfolios, make_users, median, percentile
from bench.ingest import make_fills, make_targets
from bench.seed import seed

BOT_COMMANDS = ("/positions", "/pnl 30d")
COMMAND_PAUSE_S = 0.02
PROBE_SLEEP_S = 0.001


@dataclass
class LagRun:
    """One run of one mode: loop lag samples (ms), bot latencies (ms), fills/s, GC pauses."""

    mode: str  # e.g. "1 fill/tx", "1 fill/tx + bot", "bot alone"
    lags: list[float] = field(default_factory=list)
    # the lag of the samples that overlap no collection of the oldest generation
    lags_outside_gc: list[float] = field(default_factory=list)
    bot: dict[str, list[float]] = field(default_factory=dict)
    fills_per_s: float | None = None
    gc_pauses: list[float] = field(default_factory=list)  # ms, oldest generation
    load: float = 0.0


class _GcPauses:
    """Collections of the oldest generation (the long ones) while active, as (start, end)
    on the event loop's clock."""

    def __init__(self) -> None:
        self.spans: list[tuple[float, float]] = []
        self._start = 0.0

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            self._start = time.monotonic()
        else:
            self.spans.append((self._start, time.monotonic()))

    def __enter__(self) -> _GcPauses:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)


async def _run_mode(
    mode: str,
    batch: int,
    fills_n: int,
    with_bot: bool,
    db: Any,
    driver: Any,
    bot_tid: int,
    writer: Any,
    iid: int,
) -> LagRun:
    loop = asyncio.get_running_loop()  # its clock is time.monotonic()
    run = LagRun(mode, bot={c: [] for c in BOT_COMMANDS}, load=os.getloadavg()[0])
    done = asyncio.Event()
    samples: list[tuple[float, float]] = []

    async def probe() -> None:
        while not done.is_set():
            start = loop.time()
            await asyncio.sleep(PROBE_SLEEP_S)
            samples.append((start, loop.time()))

    async def bot() -> None:
        while not done.is_set():
            for command in BOT_COMMANDS:
                start = time.perf_counter()
                await driver.send(bot_tid, command)
                run.bot[command].append((time.perf_counter() - start) * 1000)
                await asyncio.sleep(COMMAND_PAUSE_S)

    tag = f"lag{id(run)}"
    (target,) = await make_targets(db, [writer], iid, tag) if batch else (None,)

    async def ingest() -> None:
        if target is None:  # no writer, for as long as a short ingestion run
            await asyncio.sleep(1.5)
            return
        trades = db.scoped(writer).trades
        start = time.perf_counter()
        for i in range(0, fills_n, batch):
            # Made as they are sent, as a strategy makes them: thousands of fills built ahead
            # would fill the oldest generation and make the collector walk it, mid-run.
            fills: list[Any] = make_fills(target, batch, tag, first=i)
            if batch == 1:
                await trades.ingest_fill(fills[0])
            else:
                await trades.ingest_fills(fills)
        run.fills_per_s = fills_n / (time.perf_counter() - start)

    gc.collect()
    tasks = [asyncio.create_task(probe())]
    if with_bot:
        tasks.append(asyncio.create_task(bot()))
    with _GcPauses() as pauses:
        try:
            await asyncio.sleep(2 * PROBE_SLEEP_S)  # the probe is asleep: it sees any stall
            await ingest()
        finally:
            done.set()
            await asyncio.gather(*tasks)
    if target is not None:  # once the clock has stopped: the check replays every trade
        await check_portfolios(db, {target.portfolio_id: fills_n + 1})
    run.gc_pauses = [(end - start) * 1000 for start, end in pauses.spans]
    for start, end in samples:
        lag = (end - start - PROBE_SLEEP_S) * 1000
        run.lags.append(lag)
        if not any(a < end and b > start for a, b in pauses.spans):
            run.lags_outside_gc.append(lag)
    return run


async def bench_lag(bdb: BenchDb, days: int, rounds: int, scale: float) -> list[LagRun]:
    """``rounds`` rounds of every mode, interleaved."""
    from bench.botdriver import BotDriver

    seeded = await seed(bdb, users=2, portfolios_per_user=1, days=days, per_day=200)
    db = seeded.db
    try:
        bot_tid, _ = seeded.users[0]
        (writer,) = await make_users(db, [900201])
        async with db.session(writer) as s:
            iid = (await s.instruments.list())[0].id
        driver = BotDriver(db)
        for command in BOT_COMMANDS:  # warm up: imports, caches, the chart process
            await driver.send(bot_tid, command)
        n_single = max(150, int(1500 * scale))
        n_batch = max(1500, int(15000 * scale) // 100 * 100)
        modes = [
            ("nothing", 0, 0, False),  # the probe alone: what the machine itself adds
            ("1 fill/tx", 1, n_single, False),
            ("100 fills/tx", 100, n_batch, False),
            ("bot alone", 0, 0, True),
            ("1 fill/tx + bot", 1, n_single, True),
            ("100 fills/tx + bot", 100, n_batch, True),
        ]
        runs = []
        for _ in range(rounds):
            for mode, batch, n, with_bot in modes:
                runs.append(
                    await _run_mode(mode, batch, n, with_bot, db, driver, bot_tid, writer, iid)
                )
        return runs
    finally:
        await db.dispose()


def summarize(runs: list[LagRun]) -> dict[str, dict[str, Any]]:
    """Per mode: lag max / p99 over all its runs (and outside collections of the oldest
    generation), bot p50 / p95, fills/s (median), GC pauses."""
    out: dict[str, dict[str, Any]] = {}
    for mode in dict.fromkeys(r.mode for r in runs):
        mine = [r for r in runs if r.mode == mode]
        lags = [x for r in mine for x in r.lags] or [0.0]
        outside = [x for r in mine for x in r.lags_outside_gc]
        row: dict[str, Any] = {
            "lag_max_ms": round(max(lags), 1),
            "lag_p99_ms": round(percentile(lags, 99), 1),
            "lag_max_outside_gc_ms": round(max(outside), 1) if outside else None,
            "lag_max_per_run_ms": [round(max(r.lags, default=0.0), 1) for r in mine],
            "lag_samples": len(lags),
            "gc_gen2_pauses_ms": [round(p, 1) for r in mine for p in r.gc_pauses],
            "load": [round(r.load, 2) for r in mine],
        }
        for command in BOT_COMMANDS:
            samples = [x for r in mine for x in r.bot[command]]
            if samples:
                row[f"bot {command} p50_ms"] = round(percentile(samples, 50), 2)
                row[f"bot {command} p95_ms"] = round(percentile(samples, 95), 2)
                row[f"bot {command} n"] = len(samples)
        rates = [r.fills_per_s for r in mine if r.fills_per_s is not None]
        if rates:
            row["fills_per_s"] = round(median(rates))
        out[mode] = row
    return out
