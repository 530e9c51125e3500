"""The `tradebook` command: database migrations and running the bot."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from tradebook.settings import Settings, SettingsError, load_settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tradebook", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    commands.add_parser("run", help="start the bot (console mode without TELEGRAM_BOT_TOKEN)")
    export = commands.add_parser("export", help="a user's trades, orders or daily PnL as CSV")
    export.add_argument("kind", choices=["trades", "orders", "pnl"])
    export.add_argument("--user", required=True, help="Telegram id or @username")
    export.add_argument("--portfolio", help="portfolio name (default: the user's default)")
    export.add_argument("--period", default="all", help="today, 7d, 30d, mtd, ytd, all, A..B")
    export.add_argument("--out", help="file to write (default: standard output)")

    commands.add_parser(
        "health", help="exit 0 when the running bot's heartbeat is fresh (a healthcheck)"
    )
    db = commands.add_parser("db", help="database schema commands").add_subparsers(
        dest="db_command", required=True
    )
    up = db.add_parser("upgrade", help="migrate the database to REV (default: head)")
    up.add_argument("revision", nargs="?", default="head")
    down = db.add_parser(
        "downgrade",
        help="migrate the database down to REV (e.g. base); drops data: needs --force",
        description="Refused while the database holds rows unless --force, and while "
        "tradebook runs on it. On SQLite a backup is taken first and restored if the "
        "downgrade fails.",
    )
    down.add_argument("revision")
    down.add_argument("--force", action="store_true", help="go ahead although rows will be dropped")
    db.add_parser("current", help="print the revision the database is at")
    stamp = db.add_parser("stamp", help="record REV as applied without running migrations")
    stamp.add_argument("revision")
    db.add_parser("check", help="compare the model with the database; exit 1 on drift")

    copy = db.add_parser(
        "copy",
        help="copy the configured SQLite database into PostgreSQL and validate the copy",
        description="Migrate the target to head, copy every table, validate (counts, "
        "checksums, constraints, positions) and commit; exit 1 on any mismatch. "
        "The source is never modified.",
    )
    copy.add_argument("--to", required=True, metavar="URL", help="postgresql+asyncpg://…")
    copy.add_argument("--dry-run", action="store_true", help="do it all, then roll back")
    copy.add_argument(
        "--force", action="store_true", help="delete the target's rows first (listed)"
    )
    copy.add_argument(
        "--validate-only", action="store_true", help="compare an existing copy; write nothing"
    )
    copy.add_argument("--batch-size", type=_positive_int, default=1000, metavar="N")

    backup = db.add_parser("backup", help="online SQLite backup, then retention")
    backup.add_argument("--dir", type=Path, help="default: TRADEBOOK_BACKUP_DIR")
    backup.add_argument("--keep-hourly", type=_count, metavar="N")
    backup.add_argument("--keep-daily", type=_count, metavar="N")

    restore = db.add_parser("restore", help="replace the SQLite database with a backup")
    restore.add_argument("file", type=Path)

    maintain = db.add_parser("maintain", help="checkpoint, VACUUM if needed, optimize/ANALYZE")
    maintain.add_argument(
        "--vacuum-free-percent", type=_count, metavar="P", help="default: from settings"
    )
    db.add_parser("verify", help="integrity + positions vs trades; exit 1 on any difference")
    repair = db.add_parser(
        "repair",
        help="rewrite positions, per-trade PnL and the PnL summary from the trades",
        description="Every portfolio that verify finds different from its trades is "
        "rewritten from them, one audited transaction each.",
    )
    repair.add_argument("--dry-run", action="store_true", help="list what would change only")
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def _db(args: argparse.Namespace, settings: Settings) -> int:
    from dal import migrations

    url = settings.database_url
    settings.ensure_database_dir()
    if args.db_command in OPS_COMMANDS:
        from tradebook.ops import OpsError

        try:
            return OPS_COMMANDS[args.db_command](args, settings)
        except OpsError as exc:
            print(f"tradebook: {exc}", file=sys.stderr)
            return 1
    match args.db_command:
        case "upgrade":
            migrations.upgrade(url, args.revision)
            print(f"database at {migrations.current(url)} ({_describe(settings)})")
        case "current":
            rev = migrations.current(url)
            head = migrations.head_revision()
            state = "up to date" if rev == head else f"head is {head}"
            print(f"{rev or 'base (empty)'} ({state})")
        case "stamp":
            migrations.stamp(url, args.revision)
            print(f"database stamped at {args.revision}")
        case "check":
            behind = not_at_head(url)
            if behind is not None:
                print(f"tradebook: {behind}", file=sys.stderr)
                return 1
            drift = migrations.check(url)
            if drift:
                print(f"schema drift: {drift}", file=sys.stderr)
                return 1
            print("model and database agree")
    return 0


def _db_copy(args: argparse.Namespace, settings: Settings) -> int:
    import asyncio

    from tradebook.ops.copy import copy_database, stderr_progress, validate_copy

    if args.validate_only:
        report = asyncio.run(validate_copy(settings.database_url, args.to, args.batch_size))
    else:
        report = asyncio.run(
            copy_database(
                settings.database_url,
                args.to,
                dry_run=args.dry_run,
                force=args.force,
                batch_size=args.batch_size,
                progress=stderr_progress,
            )
        )
    print("\n".join(report.lines()))
    return 0 if report.ok else 1


def _db_backup(args: argparse.Namespace, settings: Settings) -> int:
    from tradebook.ops.backup import backup_sqlite, pg_dump_command, prune

    directory = args.dir or settings.backup_dir
    path = settings.sqlite_path()
    if path is None:
        command = pg_dump_command(settings.database_url, directory)
        print(
            "tradebook: db backup is for SQLite; on PostgreSQL pg_dump is the tool (password "
            f"from PGPASSWORD or ~/.pgpass):\n  {command}",
            file=sys.stderr,
        )
        return 2
    made = backup_sqlite(path, directory)
    hourly = settings.backup_keep_hourly if args.keep_hourly is None else args.keep_hourly
    daily = settings.backup_keep_daily if args.keep_daily is None else args.keep_daily
    pruned = prune(directory, hourly, daily)
    print(f"backup {made} ({made.stat().st_size} bytes, integrity ok)")
    print(
        f"retention (keep hourly {hourly}, daily {daily}): kept {len(pruned.kept)}, "
        f"deleted {len(pruned.deleted)}"
    )
    for gone in pruned.deleted:
        print(f"  deleted {gone.name}")
    return 0


def _db_restore(args: argparse.Namespace, settings: Settings) -> int:
    from tradebook.ops.backup import restore_sqlite

    path = settings.sqlite_path()
    if path is None:
        print(
            "tradebook: db restore is for SQLite; on PostgreSQL use pg_restore, e.g.\n  "
            "pg_restore --clean --if-exists --no-owner --dbname=<url> <file>.dump",
            file=sys.stderr,
        )
        return 2
    done = restore_sqlite(args.file, path)
    if done.upgraded_from:
        print(f"upgraded the restored copy from schema {done.upgraded_from} to {done.revision}")
    if done.replaced:
        print(f"the replaced database is kept as {done.replaced}")
    print(f"restored {done.backup} → {done.database} (schema {done.revision}, integrity ok)")
    return 0


def _db_maintain(args: argparse.Namespace, settings: Settings) -> int:
    import asyncio

    from tradebook.ops.maintain import maintain_database

    percent = (
        settings.maintain_vacuum_free_percent
        if args.vacuum_free_percent is None
        else args.vacuum_free_percent
    )
    report = asyncio.run(maintain_database(settings.database_url, percent))
    print("\n".join(report.lines()))
    return 0


def _db_verify(args: argparse.Namespace, settings: Settings) -> int:
    import asyncio

    from tradebook.ops import OpsError
    from tradebook.ops.verify import verify_database

    behind = not_at_head(settings.database_url)
    if behind is not None:
        raise OpsError(behind)
    report = asyncio.run(verify_database(settings.database_url))
    print("\n".join(report.lines()))
    if not report.ok:
        print("tradebook: verify found differences (listed above)", file=sys.stderr)
        return 1
    return 0


def _db_repair(args: argparse.Namespace, settings: Settings) -> int:
    import asyncio

    from tradebook.ops.repair import repair_database

    report = asyncio.run(repair_database(settings.database_url, args.dry_run))
    print("\n".join(report.lines()))
    return 0


def _db_downgrade(args: argparse.Namespace, settings: Settings) -> int:
    from tradebook.ops.downgrade import downgrade_database

    url = settings.database_url
    done = downgrade_database(url, args.revision, settings.backup_dir, args.force)
    kept = f"; backup taken first: {done.backup}" if done.backup else ""
    print(f"database at {done.revision or 'base'}{kept}")
    return 0


OPS_COMMANDS = {
    "downgrade": _db_downgrade,
    "repair": _db_repair,
    "copy": _db_copy,
    "backup": _db_backup,
    "restore": _db_restore,
    "maintain": _db_maintain,
    "verify": _db_verify,
}


def _describe(settings: Settings) -> str:
    path = settings.sqlite_path()
    return f"SQLite file {path}" if path else "PostgreSQL"


def not_at_head(url: str) -> str | None:
    """Why the database at ``url`` is not at the schema this code needs (None: it is)."""
    from dal import migrations

    current, head = migrations.current(url), migrations.head_revision()
    if current == head:
        return None
    return (
        f"the database is at {current or 'base (empty)'}, the code needs {head}; "
        "run `tradebook db upgrade` first"
    )


def _run(settings: Settings) -> int:
    import asyncio

    settings.ensure_database_dir()
    behind = not_at_head(settings.database_url)
    if behind is not None:
        print(f"tradebook: {behind}", file=sys.stderr)
        return 1  # a refusal: the database is fine, only not migrated yet
    from tradebook.app import run
    from tradebook.ops.backup import AlreadyRunning, RunLock

    try:
        # The lock tells `tradebook db restore` (and a second `run`) that the bot is using
        # this database file.
        with RunLock.for_settings(settings):
            return asyncio.run(run(settings))
    except AlreadyRunning as exc:
        print(f"tradebook: {exc}", file=sys.stderr)
        return 1


def _export(args: argparse.Namespace, settings: Settings) -> int:
    import asyncio
    import datetime as dt
    from pathlib import Path

    from dal.database import Database
    from dal.errors import TradebookError
    from dal.periods import PeriodError, parse_period
    from dal.scope import Actor
    from tradebook.exports import export_csv

    async def export() -> str:
        db = Database.from_settings(settings)
        try:
            async with db.session(Actor.system(), readonly=True) as s:
                user = await s.users.find(args.user)
            dal = db.scoped(Actor.user(user.id))
            portfolio = (
                await dal.portfolios.by_name(args.portfolio)
                if args.portfolio
                else await dal.portfolios.default()
            )
            period = parse_period(args.period, user.timezone, dt.datetime.now(dt.UTC))
            return await export_csv(
                dal, args.kind, portfolio, period.since, period.until, user.timezone
            )
        finally:
            await db.dispose()

    try:
        text = asyncio.run(export())
    except (TradebookError, PeriodError) as exc:
        print(f"tradebook: {exc}", file=sys.stderr)
        return 1
    if args.out:
        Path(args.out).write_text(text)
        print(f"wrote {text.count(chr(10)) - 1} row(s) to {args.out}")
    else:
        sys.stdout.write(text)
    return 0


# Everything tradebook creates (the SQLite file, its WAL and lock, backups, exports, console
# media) holds trading data: readable by its owner only, whatever the shell's umask.
PRIVATE_UMASK = 0o077


def main(argv: Sequence[str] | None = None) -> int:
    os.umask(PRIVATE_UMASK)
    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"tradebook: {exc}", file=sys.stderr)
        return 2
    from tradebook.logs import configure_logging, secret_values

    configure_logging(settings.log_level, settings.log_format, secret_values(settings))
    try:
        if args.command == "db":
            return _db(args, settings)
        if args.command == "export":
            return _export(args, settings)
        if args.command == "health":
            return _health(settings)
        return _run(settings)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # one line for the operator, the details in the log
        return _fail(exc, settings.log_format)


def _health(settings: Settings) -> int:
    from tradebook.app import health

    problem = health(settings.heartbeat_file)
    if problem is not None:
        print(f"tradebook: {problem}", file=sys.stderr)
        return 1
    print("healthy")
    return 0


EXIT_UNREACHABLE = 3  # the database (or a file) could not be reached
EXIT_UNEXPECTED = 4  # a bug: the traceback is in the log


def _fail(exc: Exception, log_format: str) -> int:
    """A failure nothing above handled: one line on stderr and a distinct exit code. In JSON
    mode that line is the JSON log record (with the traceback in it); in human mode the
    traceback is logged at DEBUG (TRADEBOOK_LOG_LEVEL=DEBUG shows it)."""
    import logging

    from sqlalchemy.exc import DBAPIError

    log = logging.getLogger("tradebook.cli")
    cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    reason = " ".join(str(cause).split())[:300] or type(exc).__name__
    if isinstance(exc, DBAPIError | OSError):
        code = EXIT_UNREACHABLE
        missing = ("no such table", "does not exist")
        if isinstance(exc, DBAPIError) and any(m in reason for m in missing):
            line = f"the database is not migrated ({reason}): run `tradebook db upgrade`"
        elif isinstance(exc, DBAPIError | ConnectionError | TimeoutError):
            line = f"cannot reach the database: {reason}"
        else:
            line = f"a file could not be used: {reason}"
    else:
        code, line = EXIT_UNEXPECTED, f"unexpected error ({type(exc).__name__}: {reason})"
    if log_format == "json":
        log.error(line, exc_info=exc, extra={"exit_code": code})
    else:
        log.debug(line, exc_info=exc)
        print(f"tradebook: {line}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
