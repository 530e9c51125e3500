"""`tradebook db downgrade`: refused while there are rows unless --force, refused while
tradebook runs, and on SQLite all or nothing (a backup first, restored on failure)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from dal import migrations
from dal.database import Database
from tests.factories import make_user
from tradebook.ops import OpsError
from tradebook.ops.backup import AlreadyRunning, RunLock
from tradebook.ops.downgrade import downgrade_database, rows_held
from tradebook.ops.sqlite_access import sqlite_path


async def _in_thread(fn: Any, *args: Any) -> Any:
    return await asyncio.to_thread(fn, *args)


async def _with_a_user(url: str) -> None:
    db = Database(url)
    try:
        await make_user(db)
    finally:
        await db.dispose()


async def test_a_downgrade_that_would_drop_rows_needs_force(db_url: str, tmp_path: Path) -> None:
    await _with_a_user(db_url)
    head = migrations.head_revision()
    with pytest.raises(OpsError) as refused:
        await _in_thread(downgrade_database, db_url, "base", tmp_path / "backups", False)
    assert "holds rows (" in str(refused.value) and "users 1" in str(refused.value)
    assert "--force" in str(refused.value)
    assert await _in_thread(migrations.current, db_url) == head
    assert (await rows_held(db_url))["users"] == 1


async def test_sqlite_refuses_while_tradebook_runs_and_keeps_a_backup(
    empty_db_url: str, tmp_path: Path, engine_name: str
) -> None:
    if engine_name != "sqlite":
        pytest.skip("the run lock and the backup are SQLite's")
    url = empty_db_url
    await _in_thread(migrations.upgrade, url, "head")
    await _with_a_user(url)
    path = sqlite_path(url)
    assert path is not None
    with RunLock(path), pytest.raises(AlreadyRunning):
        await _in_thread(downgrade_database, url, "0009", tmp_path / "backups", True)
    assert await _in_thread(migrations.current, url) == migrations.head_revision()
    done = await _in_thread(downgrade_database, url, "0009", tmp_path / "backups", True)
    assert done.revision == "0009" and done.backup is not None and done.backup.exists()


async def test_a_failed_sqlite_downgrade_is_rolled_back_from_the_backup(
    empty_db_url: str, tmp_path: Path, engine_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if engine_name != "sqlite":
        pytest.skip("PostgreSQL runs a downgrade in one transaction")
    url = empty_db_url
    await _in_thread(migrations.upgrade, url, "head")
    await _with_a_user(url)
    real = migrations.downgrade

    def half_done(url: str, revision: str) -> None:
        real(url, "0010")  # some steps done (tables and columns dropped) …
        raise RuntimeError("disk full")  # … then it fails

    monkeypatch.setattr(migrations, "downgrade", half_done)
    with pytest.raises(OpsError, match=r"failed \(RuntimeError: disk full\); the database was"):
        await _in_thread(downgrade_database, url, "base", tmp_path / "backups", True)
    assert await _in_thread(migrations.current, url) == migrations.head_revision()
    assert (await rows_held(url))["users"] == 1
    assert await _in_thread(migrations.check, url) is None
