"""The realized-PnL summary: kept exact by every fill (late ones too), read by /pnl periods,
rebuilt on a time-zone change, checked by verify and rewritten by repair."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from dal import schema as t
from dal.database import Database
from dal.models import Fill
from dal.periods import parse_period
from dal.pnl_summary import (
    DAY,
    MONTH,
    Entry,
    Ranges,
    daily_summary_rows,
    daily_totals,
    split_range,
    summarize,
    summarize_daily,
    summary_rows,
)
from dal.scope import Actor, Tx
from dal.trades import _pnl_from_trades
from dal.types import decimal_add, decimal_sum
from tests.factories import default_portfolio, fill, make_instrument, make_strategy, make_user

ZONE = "America/New_York"
START = dt.datetime(2025, 12, 20, tzinfo=dt.UTC)
NOW = dt.datetime(2026, 3, 10, 15, 0, tzinfo=dt.UTC)
PERIODS = [
    "today",
    "7d",
    "30d",
    "mtd",
    "ytd",
    "all",
    "2026-01-01..2026-02-28",
    "2025-12-31..2026-01-01",
]


async def _history(db: Database, actor: Actor, pid: int, fills: int = 300) -> None:
    """Fills over ~80 days in two instruments, manual and strategy, two fee currencies, and
    one in five arriving late (before fills already applied)."""
    btc = await make_instrument(db, "BTCUSDT")
    eth = await make_instrument(db, "ETHBTC", currency="BTC")
    strategy = await make_strategy(db, actor)
    rng = random.Random(20261201)
    latest = 0
    async with db.session(actor) as s:
        for i in range(fills):
            latest += rng.randint(0, 800)
            minute = latest if rng.random() > 0.2 else rng.randint(0, latest)
            fee = Decimal(rng.randint(0, 500)) / 1000
            await s.trades.ingest_fill(
                fill(
                    pid,
                    rng.choice([btc, eth]),
                    rng.choice(["BUY", "SELL"]),
                    str(Decimal(rng.randint(1, 5000)) / 1000),
                    str(Decimal(rng.randint(100, 900_000)) / 100),
                    at=START + dt.timedelta(minutes=minute),
                    trade_id=f"h{i}",
                    strategy_id=rng.choice([None, strategy]),
                    fee=fee,
                    fee_currency=rng.choice(["USDT", "BNB"]) if fee else None,
                )
            )


@pytest.fixture
async def history(db: Database) -> tuple[Actor, int]:
    actor = await make_user(db)
    async with db.session(actor) as s:
        await s.users.set_timezone(ZONE)
    pid = await default_portfolio(db, actor)
    await _history(db, actor, pid)
    return actor, pid


async def _both_ways(s: Any, pid: int, word: str, zone: str) -> tuple[object, object]:
    """/pnl for a bot period as the DAL answers it, and summed from the trades themselves."""
    period, tz = parse_period(word, zone, NOW), ZoneInfo(zone)
    from_summary = await s.trades.pnl(pid, period.since, period.until, tz)
    from_trades = await s.run(
        lambda tx: _pnl_from_trades(tx.conn, pid, period.since, period.until, tz)
    )
    return from_summary, from_trades


def _as_plain(summary: object) -> dict:
    return {
        k: getattr(summary, k)
        for k in ("realized", "fees", "trade_count", "by_instrument", "daily")
    }


async def test_every_period_reads_the_same_numbers_as_the_trades(
    db: Database, history: tuple[Actor, int]
) -> None:
    actor, pid = history
    async with db.session(actor) as s:
        assert await s.positions.verify(pid) == []
        for word in PERIODS:
            from_summary, from_trades = await _both_ways(s, pid, word, ZONE)
            assert _as_plain(from_summary) == _as_plain(from_trades), word
        everything = await s.trades.pnl(pid, None, None, ZoneInfo(ZONE))
    assert everything.trade_count == 300
    assert everything.fees.keys() == {"USDT", "BNB"}
    assert {cur for _, cur, _ in everything.daily} == {"USDT", "BTC"}


async def test_daily_series_is_the_day_rows_summed_per_currency(
    db: Database, history: tuple[Actor, int]
) -> None:
    """pnl_daily (what the chart reads) holds, for every local day and quote currency, exactly
    the sum of that day's per-instrument DAY rows: the two summaries agree to the digit."""
    actor, pid = history
    summary = t.pnl_summary
    day_rows = (
        sa.select(
            summary.c.period_start,
            t.instruments.c.currency,
            decimal_sum(summary.c.realized_pnl).label("amount"),
        )
        .join(t.instruments, t.instruments.c.id == summary.c.instrument_id)
        .where(summary.c.portfolio_id == pid, summary.c.period == DAY)
        .group_by(summary.c.period_start, t.instruments.c.currency)
        .order_by(summary.c.period_start, t.instruments.c.currency)
    )

    def both(tx: Any) -> tuple[list, list]:
        summed = [(r.period_start, r.currency, r.amount) for r in tx.conn.execute(day_rows)]
        return summed, daily_totals(tx.conn, pid, None, None)

    async with db.session(actor) as s:
        summed, daily = await s.run(both)
    assert len(daily) > 50
    assert {c for _, c, _ in daily} == {"USDT", "BTC"}
    assert [(d, c, Decimal(v)) for d, c, v in daily] == summed


async def test_summary_holds_day_and_month_rows_and_reads_whole_months(
    db: Database, history: tuple[Actor, int]
) -> None:
    actor, pid = history
    async with db.session(actor) as s:
        rows = await s.run(
            lambda tx: list(
                tx.conn.execute(
                    sa.select(t.pnl_summary.c.period, sa.func.sum(t.pnl_summary.c.trade_count))
                    .where(t.pnl_summary.c.portfolio_id == pid)
                    .group_by(t.pnl_summary.c.period)
                )
            )
        )
    assert dict(rows) == {DAY: 300, MONTH: 300}


async def test_ranges_not_at_local_midnight_sum_the_trades(
    db: Database, history: tuple[Actor, int]
) -> None:
    actor, pid = history
    since = dt.datetime(2026, 1, 5, 13, 17, tzinfo=dt.UTC)
    until = dt.datetime(2026, 2, 2, 1, 2, tzinfo=dt.UTC)
    async with db.session(actor) as s:
        odd = await s.trades.pnl(pid, since, until, ZoneInfo(ZONE))
        # The same local days in UTC: the summary is kept in New York days, so UTC periods
        # are summed from the trades, and still exact.
        utc = await s.trades.pnl(pid, since.replace(hour=0, minute=0), until, dt.UTC)
        trades = await s.trades.list(pid, since, until, limit=None)
    assert odd.trade_count == len(trades)
    assert utc.trade_count >= odd.trade_count


async def test_time_zone_change_rebuilds_the_summary(
    db: Database, history: tuple[Actor, int]
) -> None:
    actor, pid = history
    async with db.session(actor) as s:
        before = await s.run(lambda tx: _summary_rows(tx.conn, pid))
        await s.users.set_timezone("Asia/Kolkata")  # +05:30: other day boundaries
        assert await s.positions.verify(pid) == []
        after = await s.run(lambda tx: _summary_rows(tx.conn, pid))
        from_summary, from_trades = await _both_ways(s, pid, "30d", "Asia/Kolkata")
    assert before != after
    assert _as_plain(from_summary) == _as_plain(from_trades)


def _summary_rows(conn: sa.Connection, pid: int) -> list[tuple]:
    query = sa.select(t.pnl_summary).where(t.pnl_summary.c.portfolio_id == pid)
    return sorted(tuple(r) for r in conn.execute(query))


@pytest.mark.parametrize("single", [True, False], ids=["one fill", "batch"])
async def test_a_time_zone_change_during_a_fill_waits_for_it(db: Database, single: bool) -> None:
    """/tz while a fill of the same user is still open (a strategy's session, say): the
    rebuild waits for the fill and includes it, in the new zone. A fill late in the UTC day
    lands on the next day in Berlin, so the old zone's rows would be visibly wrong."""
    actor = await make_user(db)
    pid = await default_portfolio(db, actor)
    iid = await make_instrument(db, "BTCUSDT")
    late = dt.datetime(2026, 5, 31, 23, 30, tzinfo=dt.UTC)
    opened, release = asyncio.Event(), asyncio.Event()

    async def strategy() -> None:
        async with db.session(actor) as s:
            fills: list[Fill | dict[str, Any]] = [
                fill(pid, iid, "BUY", "1", "100", trade_id="z1", at=late),
                fill(pid, iid, "SELL", "1", "150", trade_id="z2", at=late),
            ]
            if single:
                for f in fills:
                    await s.trades.ingest_fill(f)
            else:
                await s.trades.ingest_fills(fills)
            opened.set()
            await release.wait()

    task = asyncio.create_task(strategy())
    await asyncio.wait_for(opened.wait(), 10)
    change = asyncio.create_task(db.scoped(actor).users.set_timezone("Europe/Berlin"))
    await asyncio.sleep(0.2)
    release.set()
    await asyncio.wait_for(asyncio.gather(task, change), 20)
    dal = db.scoped(actor)
    assert await dal.positions.verify(pid) == []
    june = await dal.trades.pnl(
        pid,
        dt.datetime(2026, 6, 1, tzinfo=ZoneInfo("Europe/Berlin")),
        dt.datetime(2026, 6, 2, tzinfo=ZoneInfo("Europe/Berlin")),
        ZoneInfo("Europe/Berlin"),
    )
    assert june.trade_count == 2 and june.realized == {"USDT": Decimal(50)}


async def test_verify_reports_a_wrong_summary_row_and_repair_rewrites_it(
    db: Database, history: tuple[Actor, int]
) -> None:
    actor, pid = history
    summary = t.pnl_summary
    async with db.session(actor) as s:
        await s.run(
            lambda tx: tx.conn.execute(
                summary.update()
                .where(
                    summary.c.portfolio_id == pid,
                    summary.c.period == MONTH,
                    summary.c.period_start == dt.date(2026, 1, 1),
                )
                .values(realized_pnl=Decimal("12345.6"))
            )
        )
        await s.run(
            lambda tx: tx.conn.execute(
                summary.delete().where(
                    summary.c.portfolio_id == pid,
                    summary.c.period == DAY,
                    summary.c.period_start == dt.date(2025, 12, 21),
                )
            )
        )
        january = parse_period("2026-01-01..2026-01-31", ZONE, NOW)
        read = await s.trades.pnl(pid, january.since, january.until, ZoneInfo(ZONE))
        # /pnl reads the summary: the tampered month shows (this is what verify is for).
        rows = await s.run(lambda tx: _summary_rows(tx.conn, pid))
        tampered = sum(1 for r in rows if r[1] == MONTH and r[2] == dt.date(2026, 1, 1))
        assert tampered >= 2
        assert sum(read.realized.values()) == tampered * Decimal("12345.6")
        differences = [str(d) for d in await s.positions.verify(pid)]
        assert any("PnL summary of 2026-01 is realized 12345.6" in d for d in differences)
        assert any(
            "PnL summary of 2025-12-21 is missing, trades say realized" in d for d in differences
        )
        repaired = await s.positions.repair(pid)
        assert len(repaired) == len(differences)
        assert await s.positions.verify(pid) == []


async def test_a_fill_and_its_summary_rows_are_one_transaction(
    db: Database, history: tuple[Actor, int]
) -> None:
    actor, pid = history
    async with db.session(actor) as s:
        before = await s.run(lambda tx: _summary_rows(tx.conn, pid))
        (instrument,) = [
            r.instrument_id for r in (await s.positions.snapshot(pid, include_flat=True))[:1]
        ]
    with pytest.raises(RuntimeError):
        async with db.session(actor) as s:
            await s.trades.ingest_fill(
                fill(pid, instrument, "SELL", "1", "10", at=NOW, trade_id="rolled-back")
            )
            raise RuntimeError("the business action fails after the fill")
    async with db.session(actor) as s:
        assert await s.run(lambda tx: _summary_rows(tx.conn, pid)) == before


def test_split_range_takes_whole_months_and_ragged_ends() -> None:
    d = dt.date
    # ytd on 2026-03-10: January and February whole, March 1..10 as days.
    assert split_range(d(2026, 1, 1), d(2026, 3, 11)) == Ranges(
        d(2026, 1, 1), d(2026, 3, 1), d(2026, 1, 1), d(2026, 1, 1), d(2026, 3, 1), d(2026, 3, 11)
    )
    # 30 days inside two months: no whole month, days only.
    assert split_range(d(2026, 2, 9), d(2026, 3, 11)) == Ranges(
        d(2026, 3, 1), d(2026, 3, 1), d(2026, 2, 9), d(2026, 3, 11), d(2026, 3, 11), d(2026, 3, 11)
    )
    # Mid-month to mid-month around a whole month (December into January).
    assert split_range(d(2025, 11, 20), d(2026, 1, 5)) == Ranges(
        d(2025, 12, 1), d(2026, 1, 1), d(2025, 11, 20), d(2025, 12, 1), d(2026, 1, 1), d(2026, 1, 5)
    )
    # "all": every month before the current one, then its days.
    whole = split_range(None, d(2026, 3, 11))
    assert whole.month_from == d(1, 1, 1) and whole.month_to == d(2026, 3, 1)
    assert (whole.day2_from, whole.day2_to) == (d(2026, 3, 1), d(2026, 3, 11))
    assert whole.day_from == whole.day_to


def test_summary_rows_come_in_key_order_whatever_order_the_fills_came_in() -> None:
    """Concurrent batches on PostgreSQL lock the summary and daily rows they share in the
    order of these parameters: key order for everyone means no lock-order deadlock."""
    at = dt.datetime(2026, 3, 10, 12, tzinfo=dt.UTC)
    entries = [
        Entry.of_trade(2, at, "USDT", "SELL", Decimal(1), Decimal(5), Decimal(1), Decimal(0), at),
        Entry.of_trade(
            1,
            at - dt.timedelta(days=40),
            "USDT",
            "BUY",
            Decimal(1),
            Decimal(5),
            Decimal(2),
            Decimal(0),
            None,
        ),
        Entry.of_trade(
            1,
            at - dt.timedelta(days=1),
            None,
            "SELL",
            Decimal(1),
            Decimal(5),
            Decimal(3),
            Decimal(0),
            at - dt.timedelta(days=2),
        ),
    ]
    rows = summary_rows(7, summarize(entries, "UTC"))
    keys = [(r["period"], r["period_start"], r["instrument_id"], r["fee_currency"]) for r in rows]
    assert len(keys) == 6 and keys == sorted(keys)
    days = daily_summary_rows(7, summarize_daily(entries, "UTC", {1: "USDT", 2: "BTC"}))
    day_keys = [(r["day"], r["currency"]) for r in days]
    assert len(day_keys) == 3 and day_keys == sorted(day_keys)


async def test_decimal_add_and_sum_are_exact_in_sql(db: Database, engine_name: str) -> None:
    values = [
        Decimal("0.1"),
        Decimal("0.2"),
        Decimal("-0.3"),
        Decimal("123456789012345678.000000000000000001"),
    ]
    column = sa.literal_column("v", type_=t.pnl_summary.c.fees.type)

    def run(tx: Tx) -> tuple[Decimal, Decimal]:
        rows = sa.union_all(
            *(sa.select(sa.literal(v, t.pnl_summary.c.fees.type).label("v")) for v in values)
        ).subquery()
        total = tx.conn.execute(sa.select(decimal_sum(rows.c.v))).scalar_one()
        added = tx.conn.execute(
            sa.select(
                decimal_add(sa.literal(values[0], column.type), sa.literal(values[1], column.type))
            )
        ).scalar_one()
        return total, added

    async with db.session(Actor.system()) as s:
        total, added = await s.run(run)
    assert total == Decimal("123456789012345678.000000000000000001")
    assert added == Decimal("0.3")
