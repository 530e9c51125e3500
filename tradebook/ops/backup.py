"""SQLite backups, retention, restore, and the run lock that keeps restore away from a live bot.

* ``backup_sqlite``: an online, consistent copy through SQLite's backup API in one step
  (``pages=-1``) on a dedicated read-only connection — writers keep going (docs/performance.md,
  "Backups"). Written as ``tradebook-YYYYMMDDTHHMMSSffffffZ.db`` next
  to a ``.partial`` name, integrity-checked, switched to a self-contained rollback journal
  (no -wal needed), then renamed: a file with the final name is always a complete backup.
* ``prune``: keeps the newest backup of each of the last N hours and of the last N days that
  have a backup (UTC buckets); deletes the rest.
* ``restore_sqlite``: integrity check first; refused while the bot holds the run lock on that
  database; refused for a schema newer than the code; upgraded when older; the replaced file
  (with its -wal) is kept aside as ``<name>.replaced-<timestamp>``.
* ``RunLock``: an exclusive ``flock`` on ``<database>.lock`` holding the owner's pid. The kernel
  releases it when the process dies, so there are no stale locks.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import os
import re
import shutil
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alembic.script import ScriptDirectory

from dal import migrations
from tradebook.ops import OpsError
from tradebook.ops.sqlite_access import connect_readonly, integrity_problems, sqlite_path

PREFIX = "tradebook-"
SUFFIX = ".db"
_NAME_RE = re.compile(r"^tradebook-(\d{8}T\d{12})Z\.db$")
_STAMP = "%Y%m%dT%H%M%S%f"


# --- run lock --------------------------------------------------------------------------------


class AlreadyRunning(OpsError):
    """Another process holds the run lock on this database."""


class RunLock:
    """``with RunLock(path): ...`` — exclusive use of the SQLite database at ``path``.

    ``tradebook run`` holds it for its whole life; ``tradebook db restore`` takes it, so a
    restore never replaces the file under a running bot and a bot cannot start mid-restore.
    Entering raises ``AlreadyRunning`` (naming the holder's pid) if it is held elsewhere.
    ``RunLock.for_settings(settings)`` is a no-op lock when the database is not a SQLite file.
    """

    def __init__(self, database: Path | None, purpose: str = "run") -> None:
        self.database = database
        self.path = None if database is None else lock_path(database)
        self.purpose = purpose
        self._fd: int | None = None

    @classmethod
    def for_settings(cls, settings: Any, purpose: str = "run") -> RunLock:
        return cls(sqlite_path(settings.database_url), purpose)

    def acquire(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise AlreadyRunning(
                f"tradebook is running on {self.database} ({holder}); stop it first"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {self.purpose}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    async def __aenter__(self) -> RunLock:
        return self.__enter__()

    async def __aexit__(self, *exc: object) -> None:
        self.release()


def lock_path(database: Path) -> Path:
    return database.with_name(database.name + ".lock")


def _read_holder(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 100).decode(errors="replace").split()
    if len(text) >= 2:
        return f"pid {text[0]}, {text[1]}"
    return "pid unknown"


def lock_holder(database: Path) -> str | None:
    """Who holds the run lock on ``database`` (None when nobody does)."""
    path = lock_path(database)
    if not path.exists():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_holder(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


# --- backup ----------------------------------------------------------------------------------


def backup_name(at: dt.datetime) -> str:
    return f"{PREFIX}{at.astimezone(dt.UTC).strftime(_STAMP)}Z{SUFFIX}"


def backup_time(path: Path) -> dt.datetime | None:
    """The time in a backup's name (None for files that are not backups)."""
    match = _NAME_RE.match(path.name)
    if not match:
        return None
    return dt.datetime.strptime(match.group(1), _STAMP).replace(tzinfo=dt.UTC)


def list_backups(directory: Path) -> list[Path]:
    """Backups in ``directory``, oldest first."""
    if not directory.is_dir():
        return []
    found = [(when, p) for p in directory.iterdir() if p.is_file() and (when := backup_time(p))]
    return [p for _, p in sorted(found)]


def backup_sqlite(database: Path, directory: Path, now: dt.datetime | None = None) -> Path:
    """Take an online, consistent backup of ``database`` into ``directory``; return its path."""
    directory.mkdir(parents=True, exist_ok=True)
    at = now or dt.datetime.now(dt.UTC)
    final = directory / backup_name(at)
    while final.exists():  # two backups in the same microsecond: move on by one
        at += dt.timedelta(microseconds=1)
        final = directory / backup_name(at)
    partial = final.with_name(final.name + ".partial")
    source = connect_readonly(database)
    try:
        target = sqlite3.connect(partial, isolation_level=None)
        try:
            source.backup(target, pages=-1)  # one step: a consistent snapshot
            target.execute("PRAGMA journal_mode=DELETE")  # self-contained: no -wal next to it
            problems = integrity_problems(target)
        finally:
            target.close()
    finally:
        source.close()
    if problems:
        partial.unlink(missing_ok=True)
        raise OpsError(f"the backup failed its integrity check: {problems[0]}")
    os.replace(partial, final)
    _fsync_dir(directory)
    return final


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- retention -------------------------------------------------------------------------------


@dataclass
class Pruned:
    kept: list[Path] = field(default_factory=list)
    deleted: list[Path] = field(default_factory=list)


def retained(times: list[dt.datetime], keep_hourly: int, keep_daily: int) -> set[dt.datetime]:
    """The times to keep: the newest of each of the ``keep_hourly`` most recent hours that have
    a backup, and likewise for days (UTC). Both zero keeps everything."""
    if keep_hourly <= 0 and keep_daily <= 0:
        return set(times)
    keep: set[dt.datetime] = set()
    for count, key_format in ((keep_hourly, "%Y%m%d%H"), (keep_daily, "%Y%m%d")):
        seen: set[str] = set()
        for when in sorted(times, reverse=True):
            key = when.strftime(key_format)
            if key in seen:
                continue
            if len(seen) == count:
                break
            seen.add(key)
            keep.add(when)
    return keep


def prune(directory: Path, keep_hourly: int, keep_daily: int) -> Pruned:
    backups = list_backups(directory)
    times = {when: p for p in backups if (when := backup_time(p)) is not None}
    keep = retained(list(times), keep_hourly, keep_daily)
    result = Pruned()
    for when, path in times.items():
        if when in keep:
            result.kept.append(path)
        else:
            path.unlink(missing_ok=True)
            result.deleted.append(path)
    for stale in directory.glob(f"{PREFIX}*{SUFFIX}.partial") if directory.is_dir() else []:
        stale.unlink(missing_ok=True)  # left by a crash during a backup
    return result


# --- restore ---------------------------------------------------------------------------------


@dataclass
class Restored:
    database: Path
    backup: Path
    revision: str
    upgraded_from: str | None
    replaced: Path | None


def _revision_of(path: Path) -> str | None:
    conn = connect_readonly(path)
    try:
        has_table = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'alembic_version'"
        ).fetchone()
        if not has_table:
            return None
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        return row[0] if row else None
    finally:
        conn.close()


def check_backup(backup: Path) -> tuple[str, bool]:
    """(revision, needs upgrade) of a restorable backup; OpsError if it must be refused."""
    if not backup.is_file():
        raise OpsError(f"no backup at {backup}")
    try:
        conn = connect_readonly(backup)
        try:
            problems = integrity_problems(conn)
        finally:
            conn.close()
        revision = _revision_of(backup)
    except sqlite3.DatabaseError as exc:
        raise OpsError(f"{backup} is not a SQLite database ({exc})") from None
    if problems:
        raise OpsError(f"{backup} failed the integrity check: {problems[0]}; nothing was changed")
    if revision is None:
        raise OpsError(f"{backup} is not a tradebook database (no schema revision)")
    script = ScriptDirectory.from_config(migrations.alembic_config("sqlite://"))
    known = {rev.revision for rev in script.walk_revisions()}
    head = migrations.head_revision()
    if revision not in known:
        raise OpsError(
            f"{backup} has schema {revision}, newer than this code (head {head}); "
            "restore it with the tradebook version that wrote it"
        )
    return revision, revision != head


def restore_sqlite(backup: Path, database: Path, now: dt.datetime | None = None) -> Restored:
    """Replace ``database`` with ``backup`` (see the module docstring for the refusals)."""
    revision, needs_upgrade = check_backup(backup)
    with RunLock(database, purpose="restore"):
        staging = database.with_name(database.name + ".restoring")
        for leftover in _with_sidecars(staging):
            leftover.unlink(missing_ok=True)
        database.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(backup, staging)
        try:
            if needs_upgrade:
                migrations.upgrade(f"sqlite+aiosqlite:///{staging}", "head")
            conn = sqlite3.connect(staging, isolation_level=None)
            try:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                conn.execute("PRAGMA journal_mode=DELETE")
                problems = integrity_problems(conn)
            finally:
                conn.close()
            if problems:
                raise OpsError(f"the restored copy failed the integrity check: {problems[0]}")
        except BaseException:
            for leftover in _with_sidecars(staging):
                leftover.unlink(missing_ok=True)
            raise
        replaced = None
        if database.exists():
            stamp = (now or dt.datetime.now(dt.UTC)).strftime(_STAMP) + "Z"
            replaced = database.with_name(f"{database.name}.replaced-{stamp}")
            # The database and its -wal move together, so the kept copy stays consistent.
            for path, suffix in ((database, ""), *_sidecars(database)):
                if path.exists():
                    os.replace(path, replaced.with_name(replaced.name + suffix))
        os.replace(staging, database)
        _fsync_dir(database.parent)
    return Restored(database, backup, migrations.head_revision(), revision if needs_upgrade
                    else None, replaced)  # fmt: skip


def _sidecars(path: Path) -> list[tuple[Path, str]]:
    return [(path.with_name(path.name + s), s) for s in ("-wal", "-shm", "-journal")]


def _with_sidecars(path: Path) -> list[Path]:
    return [path, *(p for p, _ in _sidecars(path))]


def pg_dump_command(url: str, directory: Path, now: dt.datetime | None = None) -> str:
    """The pg_dump command line for a PostgreSQL URL (password left to PGPASSWORD/.pgpass)."""
    from sqlalchemy.engine import URL, make_url

    given = make_url(url)
    parsed = URL.create(
        "postgresql", given.username, None, given.host, given.port, given.database, given.query
    )
    stamp = (now or dt.datetime.now(dt.UTC)).strftime("%Y%m%dT%H%M%SZ")
    target = directory / f"tradebook-{stamp}.dump"
    return (
        f"pg_dump --format=custom --file={target} "
        f"--dbname={parsed.render_as_string(hide_password=False)}"
    )
