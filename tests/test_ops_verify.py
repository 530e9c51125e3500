"""`tradebook db verify` and `db maintain` on both engines; the scheduled jobs loop."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from dal import schema as t
from dal.database import Database
from dal.scope import Actor
from tests.factories import T0, default_portfolio, fill, make_instrument, make_user
from tradebook.ops.jobs import Job, run_due, run_scheduled_jobs
from tradebook.ops.maintain import maintain_database
from tradebook.ops.verify import verify_database

ROOT = Path(__file__).resolve().parent.parent


async def _trade(db: Database) -> None:
    actor = await make_user(db)
    portfolio = await default_portfolio(db, actor)
    instrument = await make_instrument(db)
    async with db.session(actor) as s:
        order = await s.orders.place(
            {"portfolio_id": portfolio, "instrument_id": instrument, "side": "BUY",
             "type": "LIMIT", "quantity": "3", "price": "10"}
        )  # fmt: skip
        await s.trades.ingest_fill(fill(portfolio, instrument, "BUY", "2", "10", order_id=order.id))
        await s.trades.ingest_fill(
            fill(portfolio, instrument, "SELL", "1", "12", at=T0 + dt.timedelta(seconds=1))
        )


async def test_verify_detects_a_hand_corrupted_position(
    db: Database, db_url: str, engine: AsyncEngine, engine_name: str
) -> None:
    await _trade(db)
    report = await verify_database(db_url)
    assert report.ok, report.lines()
    async with engine.begin() as conn:
        await conn.execute(t.positions.update().values(quantity=Decimal("999")))
        await conn.execute(t.orders.update().values(filled_quantity=Decimal("3")))
    report = await verify_database(db_url)
    assert not report.ok
    assert any("quantity is 999, trades say 1" in p for p in report.positions)
    assert len(report.orders) == 1 and "filled_quantity is 3, trades say 2" in report.orders[0]
    assert "positions: 1 portfolio(s)" in "\n".join(report.lines())
    async with engine.begin() as conn:
        await conn.execute(t.orders.update().values(filled_quantity=Decimal("2")))
        await conn.execute(
            t.orders.update().values(avg_fill_price=Decimal("10.000000000000000001"))
        )
    report = await verify_database(db_url)
    assert report.orders == ["order #1: avg_fill_price is 10.000000000000000001, trades say 10"]
    if engine_name == "sqlite":
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRADEBOOK_")}
        env.update({"TRADEBOOK_DATABASE_URL": db_url, "PYTHONPATH": str(ROOT)})
        result = subprocess.run(
            [sys.executable, "-m", "tradebook.cli", "db", "verify"],
            env=env, capture_output=True, text=True, timeout=60, cwd=ROOT,
        )  # fmt: skip
        assert result.returncode == 1
        assert "quantity is 999, trades say 1" in result.stdout
        assert result.stderr.strip() == "tradebook: verify found differences (listed above)"


async def test_verify_checks_balances_and_equity_snapshots(
    db: Database, db_url: str, engine: AsyncEngine
) -> None:
    await _trade(db)
    async with db.session(Actor.system()) as s:
        await s.equity.snapshot_all(T0, {})
    report = await verify_database(db_url)
    assert report.ok, report.lines()
    async with engine.begin() as conn:
        await conn.execute(
            t.pnl_summary.update()
            .where(t.pnl_summary.c.period == "MONTH")
            .values(net_proceeds=Decimal("-9"))
        )
        await conn.execute(t.equity_snapshots.update().values(equity=Decimal("1")))
    report = await verify_database(db_url)
    # 10,000 deposited − 2 × 10 + 1 × 12 = 9,992; the summary now says −9 instead of −8.
    assert report.balances == [
        "portfolio #1: USDT balance is 9991, trades and cash say 9992",
        f"portfolio #1: equity on {T0.date()} is 1, its trades and marks say 9992",
    ]
    assert "balances and equity snapshots: 2 difference(s)" in "\n".join(report.lines())


async def test_verify_checks_when_each_reduced_position_was_opened(
    db: Database, db_url: str, engine: AsyncEngine
) -> None:
    await _trade(db)  # BUY 2 at T0, then SELL 1: the sell reduced a position opened at T0
    async with engine.begin() as conn:
        await conn.execute(
            t.trades.update().where(t.trades.c.side == "SELL").values(position_opened_at=None)
        )
    report = await verify_database(db_url)
    assert any(
        "trade #2 position_opened_at is None, trades say 2024-05-01 09:00:00+00:00" in p
        for p in report.positions
    )
    # ... and the summary's holding time no longer matches the trades either.
    assert any("1 closing 1 s held" in p for p in report.positions)


async def test_repair_rewrites_what_verify_finds_and_dry_run_writes_nothing(
    db: Database, db_url: str, engine: AsyncEngine, engine_name: str
) -> None:
    from tradebook.ops.repair import repair_database

    await _trade(db)
    async with engine.begin() as conn:
        await conn.execute(t.positions.update().values(quantity=Decimal("999")))
    dry = await repair_database(db_url, dry_run=True)
    assert dry.portfolios >= 1 and list(dry.repaired) == [1]
    assert "would repair 1:" in "\n".join(dry.lines())
    assert not (await verify_database(db_url)).ok  # the dry run wrote nothing
    done = await repair_database(db_url, dry_run=False)
    assert any("quantity is 999, trades say 1" in d for d in done.repaired[1])
    assert (await verify_database(db_url)).ok
    again = await repair_database(db_url, dry_run=False)
    assert again.repaired == {} and "nothing to repair" in again.lines()[0]
    if engine_name == "sqlite":
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRADEBOOK_")}
        env.update({"TRADEBOOK_DATABASE_URL": db_url, "PYTHONPATH": str(ROOT)})
        result = subprocess.run(
            [sys.executable, "-m", "tradebook.cli", "db", "repair", "--dry-run"],
            env=env, capture_output=True, text=True, timeout=60, cwd=ROOT,
        )  # fmt: skip
        assert result.returncode == 0 and "nothing to repair" in result.stdout


async def test_maintain(db: Database, db_url: str, engine: AsyncEngine, engine_name: str) -> None:
    await _trade(db)
    if engine_name == "sqlite":
        async with engine.begin() as conn:
            for _ in range(300):
                await conn.execute(
                    t.audit_log.insert().values(
                        entity_type="USER", action="UPDATE", details_json={"pad": "x" * 2000},
                        created_at=T0,
                    )
                )  # fmt: skip
        async with engine.begin() as conn:
            await conn.execute(t.audit_log.delete().where(t.audit_log.c.created_at == T0))
        await db.dispose()
    report = await maintain_database(db_url, vacuum_free_percent=20)
    text = "\n".join(report.lines())
    if engine_name == "sqlite":
        assert report.vacuumed, text
        assert "checkpoint:" in text and "ANALYZE" in text
        again = await maintain_database(db_url, vacuum_free_percent=20)
        assert not again.vacuumed and "PRAGMA optimize" in "\n".join(again.lines())
    else:
        assert "ANALYZE" in text
    assert (await verify_database(db_url)).ok


async def test_a_failing_job_is_logged_and_the_others_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ran: list[str] = []
    now = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)

    async def boom() -> str:
        raise RuntimeError("disk full")

    async def fine() -> str:
        ran.append("fine")
        return "ok"

    jobs = [Job("backup", "0 * * * *", boom, now), Job("maintain", "30 3 * * *", fine, now)]
    caplog.set_level(logging.INFO, "tradebook.ops")
    await run_due(jobs, now)
    assert ran == ["fine"]
    assert "scheduled backup failed" in caplog.text and "disk full" in caplog.text
    assert jobs[0].next_run == dt.datetime(2024, 5, 1, 13, 0, tzinfo=dt.UTC)
    assert jobs[1].next_run == dt.datetime(2024, 5, 2, 3, 30, tzinfo=dt.UTC)


async def test_run_scheduled_jobs_backs_up_on_schedule(
    tmp_path: Path, sqlite_template: Path
) -> None:
    path = tmp_path / "tradebook.db"
    path.write_bytes(sqlite_template.read_bytes())
    settings = SimpleNamespace(
        database_url=f"sqlite+aiosqlite:///{path}",
        backup_dir=tmp_path / "backups",
        backup_schedule="0 * * * *",
        backup_keep_hourly=2,
        backup_keep_daily=0,
        maintain_schedule="",
        maintain_vacuum_free_percent=20,
    )
    start = dt.datetime(2024, 5, 1, 11, 59, 59, tzinfo=dt.UTC)
    ticks = iter([start] + [start + dt.timedelta(hours=h, seconds=2) for h in range(3)])
    stop = asyncio.Event()
    calls = 0

    def clock() -> dt.datetime:
        nonlocal calls
        calls += 1
        try:
            return next(ticks)
        except StopIteration:
            stop.set()
            return start + dt.timedelta(hours=3)

    await asyncio.wait_for(run_scheduled_jobs(settings, None, stop=stop, clock=clock), 30)
    backups = list((tmp_path / "backups").glob("tradebook-*.db"))
    assert 1 <= len(backups) <= 2  # retention keeps the newest of the last two hours
