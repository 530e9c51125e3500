"""`tradebook db downgrade REV`: nothing destructive without consent, nothing half-done.

* A downgrade drops tables and columns. While the database holds any rows it is refused
  unless ``--force``, with the tables that hold rows and how many.
* It is refused while tradebook runs on that SQLite file (the run lock `db restore` uses).
* On SQLite a backup is taken first, and if the downgrade fails the file is restored from it
  (SQLite's schema changes are not all transactional). PostgreSQL runs it in one transaction.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from dal import migrations
from dal.engine import create_engine
from tradebook.ops import OpsError
from tradebook.ops.backup import RunLock, backup_sqlite, restore_sqlite
from tradebook.ops.sqlite_access import sqlite_path


@dataclass(frozen=True)
class Downgraded:
    revision: str | None
    backup: Path | None


async def rows_held(url: str) -> dict[str, int]:
    """Every table (but alembic's own) that holds rows, with its row count."""
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:

            def count(sync: sa.Connection) -> dict[str, int]:
                names = sa.inspect(sync).get_table_names()
                counts = {}
                for name in sorted(n for n in names if n != "alembic_version"):
                    table = sa.table(name)
                    n = sync.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
                    if n:
                        counts[name] = int(n)
                return counts

            return await conn.run_sync(count)
    finally:
        await engine.dispose()


def downgrade_database(url: str, revision: str, backup_dir: Path, force: bool) -> Downgraded:
    """Migrate the database at ``url`` down to ``revision`` (see the module docstring)."""
    held = asyncio.run(rows_held(url))
    # Seed rows the migrations write themselves (brokers) are not anyone's data.
    data = {name: n for name, n in held.items() if name != "brokers"}
    if data and not force:
        listing = ", ".join(f"{name} {n}" for name, n in data.items())
        raise OpsError(
            f"downgrading to {revision} drops tables and columns, and the database holds rows "
            f"({listing}); run again with --force to go ahead (on SQLite a backup is taken "
            "first)"
        )
    path = sqlite_path(url)
    if path is None:
        migrations.downgrade(url, revision)  # one transaction: all or nothing
        return Downgraded(migrations.current(url), None)
    backup = None
    with RunLock(path, purpose="downgrade"):
        if path.exists():
            backup = backup_sqlite(path, backup_dir)
        try:
            migrations.downgrade(url, revision)
        except Exception as exc:
            failure = exc
        else:
            return Downgraded(migrations.current(url), backup)
    if backup is not None:
        restore_sqlite(backup, path)
    raise OpsError(
        f"the downgrade to {revision} failed ({type(failure).__name__}: {failure}); the "
        f"database was restored from the backup taken first ({backup})"
    ) from failure
