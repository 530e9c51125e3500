"""`tradebook db maintain`: keep the database fast and small.

SQLite (on its own connection, next to a running bot; the busy timeout waits for writers):

1. ``PRAGMA wal_checkpoint(TRUNCATE)``: fold the WAL into the database and truncate it.
   Between runs the engine's own settings bound the WAL (dal/engine.py, on every connection):
   ``wal_autocheckpoint`` = ``WAL_AUTOCHECKPOINT_PAGES`` (1000 pages, ≈ 4 MB) checkpoints
   automatically after each commit that grows the WAL past it, and ``journal_size_limit`` =
   ``JOURNAL_SIZE_LIMIT_BYTES`` (64 MB) truncates the WAL back after a checkpoint, so a burst
   of writes does not leave a large file behind. A long read holds checkpoints back; the
   report says when a checkpoint could not finish (``busy``).
2. ``VACUUM`` when free pages exceed ``vacuum_free_percent`` of the file (it rewrites the file
   and needs a moment of exclusive access).
3. ``ANALYZE`` the first time (no statistics yet), else ``PRAGMA optimize``.

PostgreSQL: ``ANALYZE`` (autovacuum does the rest).
"""

from __future__ import annotations

import asyncio
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa

from dal.engine import BUSY_TIMEOUT_MS, JOURNAL_SIZE_LIMIT_BYTES, WAL_AUTOCHECKPOINT_PAGES
from tradebook.ops import OpsError
from tradebook.ops.sqlite_access import sqlite_path


@dataclass
class MaintainReport:
    steps: list[str] = field(default_factory=list)
    vacuumed: bool = False

    def lines(self) -> list[str]:
        return list(self.steps)


def maintain_sqlite(path: Path, vacuum_free_percent: int = 20) -> MaintainReport:
    if not path.is_file():
        raise OpsError(f"no SQLite database at {path}")
    report = MaintainReport()
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        conn.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
        conn.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT_BYTES}")
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
        busy, log, done = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        state = "busy (a reader held it back; it will finish later)" if busy else "complete"
        report.steps.append(
            f"checkpoint: {done}/{log} WAL pages written back, {state} (journal_mode {mode}, "
            f"wal_autocheckpoint {WAL_AUTOCHECKPOINT_PAGES} pages, journal_size_limit "
            f"{JOURNAL_SIZE_LIMIT_BYTES} bytes)"
        )
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        percent = 100 * free / pages if pages else 0
        if pages and percent > vacuum_free_percent:
            conn.execute("VACUUM")
            after = conn.execute("PRAGMA page_count").fetchone()[0]
            report.vacuumed = True
            report.steps.append(
                f"vacuum: {free} of {pages} pages were free ({percent:.0f}% > "
                f"{vacuum_free_percent}%), file now {after} pages"
            )
        else:
            report.steps.append(
                f"vacuum: not needed ({free} of {pages} pages free, {percent:.0f}% <= "
                f"{vacuum_free_percent}%)"
            )
        has_stats = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE name = 'sqlite_stat1'"
        ).fetchone()
        if has_stats:
            conn.execute("PRAGMA optimize")
            report.steps.append("statistics: PRAGMA optimize")
        else:
            conn.execute("ANALYZE")
            report.steps.append("statistics: ANALYZE (first run)")
    finally:
        conn.close()
    return report


async def maintain_database(url: str, vacuum_free_percent: int = 20) -> MaintainReport:
    path = sqlite_path(url)
    if path is not None:
        return await asyncio.to_thread(maintain_sqlite, path, vacuum_free_percent)
    from dal.engine import create_engine

    engine = create_engine(url, pool_size=1, max_overflow=0)
    try:
        async with engine.connect() as conn:
            await conn.execute(sa.text("ANALYZE"))
            await conn.commit()
    finally:
        await engine.dispose()
    return MaintainReport(["statistics: ANALYZE (autovacuum reclaims space on PostgreSQL)"])
