"""Backups while the bot writes, retention, restore and its refusals, the run lock."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from dal import migrations
from dal.database import Database
from tests.factories import T0, default_portfolio, fill, make_instrument, make_user
from tradebook.ops import OpsError
from tradebook.ops.backup import (
    AlreadyRunning,
    RunLock,
    backup_name,
    backup_sqlite,
    list_backups,
    lock_holder,
    prune,
    restore_sqlite,
)
from tradebook.ops.verify import verify_database

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def sqlite_db(tmp_path: Path, sqlite_template: Path) -> Path:
    path = tmp_path / "live" / "tradebook.db"
    path.parent.mkdir()
    path.write_bytes(sqlite_template.read_bytes())
    return path


async def test_backup_while_writing_restores_consistent(sqlite_db: Path, tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{sqlite_db}"
    backups = tmp_path / "backups"
    async with Database(url) as db:
        actor = await make_user(db)
        portfolio = await default_portfolio(db, actor)
        instrument = await make_instrument(db)
        stop = asyncio.Event()
        written = 0

        async def writer() -> None:
            nonlocal written
            while not stop.is_set():
                side = "BUY" if written % 3 else "SELL"
                at = T0 + dt.timedelta(microseconds=written)
                async with db.session(actor) as s:
                    await s.trades.ingest_fill(
                        fill(portfolio, instrument, side, "0.1", str(100 + written % 7), at=at)
                    )
                written += 1
                await asyncio.sleep(0)

        task = asyncio.create_task(writer())
        taken: list[Path] = []
        for _ in range(3):
            while written < 20 * (len(taken) + 1):
                await asyncio.sleep(0.01)
            taken.append(await asyncio.to_thread(backup_sqlite, sqlite_db, backups))
        stop.set()
        await task
    assert [p.name for p in list_backups(backups)] == sorted(p.name for p in taken)
    assert not list(backups.glob("*.partial")) and not list(backups.glob("*-wal"))

    restored = tmp_path / "restored" / "tradebook.db"
    done = await asyncio.to_thread(restore_sqlite, taken[-1], restored)
    assert done.replaced is None and done.upgraded_from is None
    report = await verify_database(f"sqlite+aiosqlite:///{restored}")
    assert report.ok, report.lines()
    assert report.portfolios >= 1
    with sqlite3.connect(restored) as conn:
        trades = conn.execute("SELECT count(*) FROM trades").fetchone()[0]
    assert 40 <= trades <= written  # a snapshot taken while the writer ran


def _touch_backups(directory: Path, times: list[dt.datetime]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for when in times:
        (directory / backup_name(when)).write_bytes(b"")


def test_retention_keeps_exactly_the_configured_set(tmp_path: Path) -> None:
    def at(day: int, hour: int, minute: int) -> dt.datetime:
        return dt.datetime(2024, 5, day, hour, minute, tzinfo=dt.UTC)

    times = [
        at(3, 10, 50),
        at(3, 10, 20),
        at(3, 9, 40),
        at(3, 9, 10),
        at(3, 8, 30),
        at(3, 7, 0),
        at(2, 23, 0),
        at(2, 12, 0),
        at(1, 18, 0),
    ]
    _touch_backups(tmp_path, times)
    (tmp_path / "notes.txt").write_text("not a backup")
    result = prune(tmp_path, keep_hourly=3, keep_daily=2)
    # Hourly: the newest of 10h, 9h, 8h on May 3. Daily: the newest of May 3 and of May 2.
    expected = {at(3, 10, 50), at(3, 9, 40), at(3, 8, 30), at(2, 23, 0)}
    assert {p.name for p in list_backups(tmp_path)} == {backup_name(t) for t in expected}
    assert {p.name for p in result.kept} == {backup_name(t) for t in expected}
    assert len(result.deleted) == len(times) - len(expected)
    assert (tmp_path / "notes.txt").exists()
    # Running it again changes nothing; zero and zero keeps everything.
    assert prune(tmp_path, 3, 2).deleted == []
    assert prune(tmp_path, 0, 0).deleted == []


def test_backup_command_with_retention(sqlite_db: Path, tmp_path: Path) -> None:
    backups = tmp_path / "b"
    _touch_backups(backups, [dt.datetime(2020, 1, d, tzinfo=dt.UTC) for d in (1, 2, 3)])
    result = _cli(sqlite_db, "backup", "--dir", str(backups), "--keep-hourly", "1",
                  "--keep-daily", "2")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "integrity ok" in result.stdout and "deleted 2" in result.stdout
    names = [p.name for p in list_backups(backups)]
    assert len(names) == 2 and names[0] == backup_name(dt.datetime(2020, 1, 3, tzinfo=dt.UTC))


def _cli(database: Path | str, *args: str) -> subprocess.CompletedProcess[str]:
    url = database if isinstance(database, str) else f"sqlite+aiosqlite:///{database}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRADEBOOK_")}
    env.update({"TRADEBOOK_DATABASE_URL": url, "PYTHONPATH": str(ROOT)})
    return subprocess.run(
        [sys.executable, "-m", "tradebook.cli", "db", *args],
        cwd=Path(database).parent if not isinstance(database, str) else ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


async def _one_trade(path: Path) -> None:
    async with Database(f"sqlite+aiosqlite:///{path}") as db:
        actor = await make_user(db)
        portfolio = await default_portfolio(db, actor)
        instrument = await make_instrument(db)
        async with db.session(actor) as s:
            await s.trades.ingest_fill(fill(portfolio, instrument, "BUY", "2", "10"))


async def test_restore_keeps_the_replaced_file_and_refuses_bad_backups(
    sqlite_db: Path, tmp_path: Path
) -> None:
    await _one_trade(sqlite_db)
    backup = await asyncio.to_thread(backup_sqlite, sqlite_db, tmp_path / "b")
    await _one_trade(sqlite_db)  # the live database moves on

    done = await asyncio.to_thread(restore_sqlite, backup, sqlite_db)
    assert done.replaced is not None and done.replaced.exists()
    with sqlite3.connect(done.replaced) as conn:
        assert conn.execute("SELECT count(*) FROM trades").fetchone()[0] == 2
    with sqlite3.connect(sqlite_db) as conn:
        assert conn.execute("SELECT count(*) FROM trades").fetchone()[0] == 1

    # A damaged file: refused before anything is touched.
    damaged = tmp_path / "damaged.db"
    data = bytearray(backup.read_bytes())
    data[4096 * 2 : 4096 * 4] = b"\xff" * (4096 * 2)
    damaged.write_bytes(bytes(data))
    before = sqlite_db.read_bytes()
    with pytest.raises(OpsError, match=r"integrity|not a SQLite"):
        await asyncio.to_thread(restore_sqlite, damaged, sqlite_db)
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"hello" * 1000)
    with pytest.raises(OpsError, match="not a SQLite database"):
        await asyncio.to_thread(restore_sqlite, garbage, sqlite_db)
    assert sqlite_db.read_bytes() == before

    # A newer schema than the code knows: refused.
    newer = tmp_path / "newer.db"
    newer.write_bytes(backup.read_bytes())
    with sqlite3.connect(newer) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999_future'")
    with pytest.raises(OpsError, match="newer than this code"):
        await asyncio.to_thread(restore_sqlite, newer, sqlite_db)
    assert sqlite_db.read_bytes() == before


async def test_restore_upgrades_an_older_schema(tmp_path: Path) -> None:
    old = tmp_path / "old.db"
    await asyncio.to_thread(migrations.upgrade, f"sqlite+aiosqlite:///{old}", "0003")
    target = tmp_path / "live.db"
    done = await asyncio.to_thread(restore_sqlite, old, target)
    assert done.upgraded_from == "0003"
    url = f"sqlite+aiosqlite:///{target}"
    assert await asyncio.to_thread(migrations.current, url) == migrations.head_revision()
    assert old.exists()  # the backup itself is never changed


def test_restore_refused_while_the_bot_runs(sqlite_db: Path, tmp_path: Path) -> None:
    backup = backup_sqlite(sqlite_db, tmp_path / "b")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from tradebook.ops.backup import RunLock\n"
            "with RunLock(Path(sys.argv[1])):\n    print('ready', flush=True); time.sleep(60)",
            str(sqlite_db),
        ],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        assert lock_holder(sqlite_db) == f"pid {holder.pid}, run"
        before = sqlite_db.read_bytes()
        with pytest.raises(AlreadyRunning, match=f"pid {holder.pid}"):
            restore_sqlite(backup, sqlite_db)
        assert sqlite_db.read_bytes() == before
        result = _cli(sqlite_db, "restore", str(backup))
        assert result.returncode == 1
        assert result.stderr.strip().splitlines() == [
            f"tradebook: tradebook is running on {sqlite_db} (pid {holder.pid}, run); stop it first"
        ]
    finally:
        holder.kill()
        holder.wait()
    # The kernel dropped the lock with the process: restore goes ahead now.
    assert lock_holder(sqlite_db) is None
    restore_sqlite(backup, sqlite_db)
    with RunLock(sqlite_db), pytest.raises(AlreadyRunning):
        RunLock(sqlite_db).acquire()


def test_run_lock_is_a_no_op_on_postgresql() -> None:
    class S:
        database_url = "postgresql+asyncpg://u@h/db"

    with RunLock.for_settings(S()) as lock:
        assert lock.path is None


def test_backup_on_postgresql_prints_the_pg_dump_command() -> None:
    result = _cli("postgresql+asyncpg://tb:s3cret@db.example:5432/tradebook", "backup")
    assert result.returncode == 2
    assert "pg_dump --format=custom" in result.stderr
    assert "--dbname=postgresql://tb@db.example:5432/tradebook" in result.stderr
    assert "s3cret" not in result.stderr
