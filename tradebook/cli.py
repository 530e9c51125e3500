"""The `tradebook` command: database migrations and running the bot."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from tradebook.settings import Settings, SettingsError, load_settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tradebook", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    commands.add_parser("run", help="start the bot (console mode without TELEGRAM_BOT_TOKEN)")

    db = commands.add_parser("db", help="database schema commands").add_subparsers(
        dest="db_command", required=True
    )
    up = db.add_parser("upgrade", help="migrate the database to REV (default: head)")
    up.add_argument("revision", nargs="?", default="head")
    down = db.add_parser("downgrade", help="migrate the database down to REV (e.g. base)")
    down.add_argument("revision")
    db.add_parser("current", help="print the revision the database is at")
    stamp = db.add_parser("stamp", help="record REV as applied without running migrations")
    stamp.add_argument("revision")
    db.add_parser("check", help="compare the model with the database; exit 1 on drift")
    return parser


def _db(args: argparse.Namespace, settings: Settings) -> int:
    from dal import migrations

    url = settings.database_url
    settings.ensure_database_dir()
    match args.db_command:
        case "upgrade":
            migrations.upgrade(url, args.revision)
            print(f"database at {migrations.current(url)} ({_describe(settings)})")
        case "downgrade":
            migrations.downgrade(url, args.revision)
            print(f"database at {migrations.current(url) or 'base'}")
        case "current":
            rev = migrations.current(url)
            head = migrations.head_revision()
            state = "up to date" if rev == head else f"head is {head}"
            print(f"{rev or 'base (empty)'} ({state})")
        case "stamp":
            migrations.stamp(url, args.revision)
            print(f"database stamped at {args.revision}")
        case "check":
            drift = migrations.check(url)
            if drift:
                print(f"schema drift: {drift}", file=sys.stderr)
                return 1
            print("model and database agree")
    return 0


def _describe(settings: Settings) -> str:
    path = settings.sqlite_path()
    return f"SQLite file {path}" if path else "PostgreSQL"


def _run(settings: Settings) -> int:
    import asyncio

    from dal import migrations

    settings.ensure_database_dir()
    current, head = migrations.current(settings.database_url), migrations.head_revision()
    if current != head:
        print(
            f"tradebook: the database is at {current or 'base (empty)'}, the code needs {head}; "
            "run `tradebook db upgrade` first",
            file=sys.stderr,
        )
        return 2
    from bot.main import run

    return asyncio.run(run(settings))


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"tradebook: {exc}", file=sys.stderr)
        return 2
    from tradebook.logs import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    try:
        if args.command == "db":
            return _db(args, settings)
        return _run(settings)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
