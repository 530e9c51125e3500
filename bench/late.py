"""A late fill against an in-order fill, on positions with a year and with 30 days of history.

A fill older than its position's last fill re-derives the position: per-trade realized PnL,
the summary's corrections, the position row. With checkpoints (dal/checkpoints.py) it replays
only the trades after the position's last checkpoint before the late fill, so a fill one day
late should cost about the same whatever the length of the history, and a small multiple of
an in-order fill.

Each position (one instrument, manual fills, 20 a day: buy, buy, sell at moving prices, so
a late buy changes the realized PnL of every later sell) is built through the DAL's
``ingest_fills`` in batches of 100, which write the daily checkpoints as a bot's fills would.
Then, in interleaved rounds, fills go through ``db.scoped(actor).trades.ingest_fill(dict)`` as
the bot sends them, alternating an in-order fill (the history's pace goes on: 72 minutes
after the position's last one, so now and then the first of a UTC day, which writes a
checkpoint) and a fill one day late (a day before the position's last fill): A B A B …, for
the year's position and the 30 days' in turn. Per round and position: the median of each
kind and their ratio late / in-order; the table gives the median of the rounds' ratios and
their spread. The run ends with the exact check of both portfolios (``verify``: positions,
checkpoints, per-trade PnL, summary and daily rows against a replay from the first trade).
"""

from __future__ import annotations

import datetime as dt
import os
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from bench.common import (
    BenchDb,
    check_portfolios,
    make_instrument,
    make_portfolio,
    make_users,
    median,
)
from dal.database import Database
from dal.models import Fill
from dal.scope import Actor

PER_DAY = 20
PAIRS_PER_ROUND = 10  # in-order / late pairs per position and round
STEP = dt.timedelta(days=1) / PER_DAY
TARGET_RATIO = 3.0  # late ≤ 3× in-order


@dataclass
class Position:
    name: str  # "year", "30 days"
    days: int
    actor: Actor
    portfolio_id: int
    instrument_id: int
    last: dt.datetime = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)  # the newest fill's time
    fills: int = 0
    inorder_ms: list[list[float]] = field(default_factory=list)  # per round
    late_ms: list[list[float]] = field(default_factory=list)


def _fill(p: Position, side: str, price: Decimal, at: dt.datetime, tag: str) -> dict[str, Any]:
    p.fills += 1
    return {
        "portfolio_id": p.portfolio_id,
        "instrument_id": p.instrument_id,
        "side": side,
        "quantity": Decimal(1),
        "price": price,
        "fee": Decimal("0.01"),
        "fee_currency": "USDT",
        "exec_time": at,
        "broker_trade_id": f"{p.name}-{tag}-{p.fills}",
    }


async def _history(db: Database, p: Position, end: dt.datetime) -> None:
    """``p.days`` days of 20 fills a day up to ``end``, in batches of 100."""
    step = STEP
    start = end - dt.timedelta(days=p.days)
    n = p.days * PER_DAY
    dal = db.scoped(p.actor)
    for first in range(0, n, 100):
        batch: list[Fill | dict[str, Any]] = []
        for i in range(first, min(n, first + 100)):
            side = "SELL" if i % 3 == 2 else "BUY"
            price = Decimal(100) + Decimal(i % 211) / 10
            batch.append(_fill(p, side, price, start + step * i, "h"))
        await dal.trades.ingest_fills(batch)
    p.last = start + step * (n - 1)


def _in_order(p: Position) -> dict[str, Any]:
    p.last += STEP  # the history's pace goes on (a position's first fill of a day included)
    return _fill(p, "SELL" if p.fills % 3 == 2 else "BUY", Decimal("101.5"), p.last, "in")


def _late(p: Position) -> dict[str, Any]:
    # One day before the newest fill; alternately a buy (it moves the average cost of every
    # later sell) and a sell.
    side = "BUY" if p.fills % 2 else "SELL"
    return _fill(p, side, Decimal("99.5"), p.last - dt.timedelta(days=1), "late")


async def _timed(db: Database, p: Position, fill: dict[str, Any]) -> float:
    trades = db.scoped(p.actor).trades
    start = time.perf_counter()
    await trades.ingest_fill(fill)
    return (time.perf_counter() - start) * 1000


async def _checkpoint_count(db: Database, pid: int) -> int | None:
    from dal import schema as t

    table = getattr(t, "position_checkpoints", None)
    if table is None:  # the code before checkpoints
        return None
    async with db.session(Actor.system(), admin=True, readonly=True) as s:
        return int(
            await s.run(
                lambda tx: tx.conn.execute(
                    sa.select(sa.func.count())
                    .select_from(table)
                    .join(t.positions, t.positions.c.id == table.c.position_id)
                    .where(t.positions.c.portfolio_id == pid)
                ).scalar_one()
            )
        )


async def bench_late(bdb: BenchDb, rounds: int, year_days: int = 365) -> dict[str, Any]:
    db = Database(bdb.url)
    try:
        (actor,) = await make_users(db, [930001])
        iid = await make_instrument(db, "LATEUSDT")
        # Far enough back that the timed in-order fills, at the history's pace, stay before
        # "now".
        end = dt.datetime.now(dt.UTC) - STEP * (PAIRS_PER_ROUND * rounds + 4)
        positions = []
        for name, days in (("year", year_days), ("30 days", 30)):
            pid = await make_portfolio(db, actor, f"late-{name}")
            positions.append(Position(name, days, actor, pid, iid))
        built = time.perf_counter()
        for p in positions:
            await _history(db, p, end)
        build_s = time.perf_counter() - built
        for p in positions:  # warm-up (statement caches; a first fill of a new UTC day)
            await _timed(db, p, _in_order(p))
            await _timed(db, p, _late(p))
        loads = []
        for r in range(rounds):
            loads.append(round(os.getloadavg()[0], 2))
            for p in positions:
                a: list[float] = []
                b: list[float] = []
                for _ in range(PAIRS_PER_ROUND):
                    a.append(await _timed(db, p, _in_order(p)))
                    b.append(await _timed(db, p, _late(p)))
                p.inorder_ms.append(a)
                p.late_ms.append(b)
                print(
                    f"  {bdb.engine:10} {p.name:8} round {r + 1}: in-order {median(a):6.2f} ms, "
                    f"late {median(b):6.2f} ms, × {median(b) / median(a):4.2f} (load {loads[-1]})"
                )
        started = time.perf_counter()
        await check_portfolios(db, {p.portfolio_id: p.fills for p in positions})
        check_s = time.perf_counter() - started
        rows = []
        for p in positions:
            ratios = [median(b) / median(a) for a, b in zip(p.inorder_ms, p.late_ms, strict=True)]
            rows.append(
                {
                    "engine": bdb.engine,
                    "position": p.name,
                    "history_fills": p.days * PER_DAY,
                    "checkpoints": await _checkpoint_count(db, p.portfolio_id),
                    "inorder_p50_ms": round(median([median(a) for a in p.inorder_ms]), 2),
                    "late_p50_ms": round(median([median(b) for b in p.late_ms]), 2),
                    "ratio": round(median(ratios), 2),
                    "ratio_runs": [round(x, 2) for x in ratios],
                    "ratio_spread": f"{min(ratios):.2f}–{max(ratios):.2f}",
                    "verdict": "ok" if median(ratios) <= TARGET_RATIO else "MISS",
                }
            )
        late_year = [median(b) for b in positions[0].late_ms]
        late_month = [median(b) for b in positions[1].late_ms]
        history = [y / m for y, m in zip(late_year, late_month, strict=True)]
        return {
            "rows": rows,
            "late_year_over_30_days": round(median(history), 2),
            "late_year_over_30_days_spread": f"{min(history):.2f}–{max(history):.2f}",
            "loads": loads,
            "build_s": round(build_s, 1),
            "check_s": round(check_s, 1),
            "check": "ok",
        }
    finally:
        await db.dispose()
