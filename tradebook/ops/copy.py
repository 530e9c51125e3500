"""`tradebook db copy --to postgresql+asyncpg://…`: move a SQLite database to PostgreSQL.

Everything on the target happens in **one transaction**: migrate to head (PostgreSQL DDL is
transactional), refuse a non-empty target unless ``force`` (which first lists what it deletes),
copy every table in foreign-key order in keyset batches (primary keys and uids kept), validate,
and only then reset the identity sequences and commit. A dry run, or any validation mismatch,
rolls the transaction back, so the target is left exactly as it was. Sequences are reset only
in a committed run: ``setval`` is not transactional, a rollback would not undo it.

Types are converted by the portable column types (dal/types.py): the source is read through
them (decimal TEXT → ``Decimal``, ISO TEXT → aware ``datetime``, JSON TEXT → Python values)
and written through them (→ NUMERIC, TIMESTAMPTZ, JSONB).

Validation compares, per table, the row count and a SHA-256 over the canonical form of every
row in primary-key order (decimals normalized, timestamps as UTC microseconds since the epoch,
JSON as sorted compact text), naming the first differing rows; then checks the target's
constraints and foreign keys, and that its positions and order fills equal a recompute from
its trades (tradebook/ops/verify.py).

The source is opened read-only (``mode=ro``) and read in one snapshot: it is never modified,
and a bot writing to it meanwhile does not make the copy inconsistent.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, TextIO

import sqlalchemy as sa
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import make_url

from dal import migrations
from dal import schema as t
from dal.decimals import canonical_decimal
from dal.engine import create_engine
from dal.types import canonical_json, to_utc
from tradebook.ops import OpsError
from tradebook.ops.sqlite_access import readonly_engine, sqlite_path
from tradebook.ops.verify import VerifyReport, verify_sync

BATCH_SIZE = 1000
MAX_REPORTED_ROWS = 5
# Rows migration 0003 seeds into a fresh database: a target holding only these is "empty".
SEEDED_BROKERS = {
    ("BINANCE", "Binance"),
    ("IBKR", "Interactive Brokers"),
    ("PAPER", "Paper trading"),
}
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


# --- canonical row values --------------------------------------------------------------------


def canonical_value(value: Any) -> Any:
    """One engine-independent form of a column value, for checksums."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, Decimal):
        return canonical_decimal(value)
    if isinstance(value, dt.datetime):
        return (to_utc(value) - _EPOCH) // dt.timedelta(microseconds=1)
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, dict | list):
        return canonical_json(value)
    if isinstance(value, float):
        return repr(value)
    raise TypeError(f"no canonical form for {type(value).__name__}")


def canonical_row(row: sa.Row[Any] | tuple[Any, ...]) -> str:
    return canonical_json([canonical_value(v) for v in row])


def _order_keys(conn: sa.Connection, table: sa.Table) -> list[sa.ColumnElement[Any]]:
    # Text keys in byte order on both engines, so a merge of the two sides lines up.
    return [
        c.collate("C") if conn.dialect.name == "postgresql" and isinstance(c.type, sa.String) else c
        for c in table.primary_key.columns
    ]


def row_key(table: sa.Table, row: sa.Row[Any]) -> tuple[Any, ...]:
    """The row's primary key, comparable across engines."""
    return tuple(canonical_value(row._mapping[c.name]) for c in table.primary_key.columns)


def _rows(conn: sa.Connection, table: sa.Table, batch_size: int) -> Iterator[sa.Row[Any]]:
    """Every row of ``table`` in primary-key order, fetched in keyset batches."""
    keys = _order_keys(conn, table)
    names = [c.name for c in table.primary_key.columns]
    last: tuple[Any, ...] | None = None
    while True:
        query = sa.select(table).order_by(*keys).limit(batch_size)
        if last is not None:
            query = query.where(sa.tuple_(*keys) > sa.tuple_(*last))
        batch = conn.execute(query).all()
        if not batch:
            return
        yield from batch
        last = tuple(sa.literal(batch[-1]._mapping[n], type_=table.c[n].type) for n in names)


# --- reports ---------------------------------------------------------------------------------


@dataclass
class TableCheck:
    name: str
    source_rows: int = 0
    target_rows: int = 0
    source_checksum: str = ""
    target_checksum: str = ""
    differences: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            self.source_rows == self.target_rows
            and self.source_checksum == self.target_checksum
            and not self.differences
        )


@dataclass
class CopyReport:
    source: str
    target: str
    dry_run: bool = False
    validate_only: bool = False
    deleted: dict[str, int] = field(default_factory=dict)
    copied: dict[str, int] = field(default_factory=dict)
    tables: list[TableCheck] = field(default_factory=list)
    target_checks: VerifyReport = field(default_factory=VerifyReport)
    sequences: dict[str, int] = field(default_factory=dict)
    committed: bool = False

    @property
    def ok(self) -> bool:
        return all(tc.ok for tc in self.tables) and self.target_checks.ok

    def lines(self) -> list[str]:
        mode = " (validate only)" if self.validate_only else " (dry run)" if self.dry_run else ""
        out = [f"copy {self.source} → {self.target}{mode}"]
        if self.deleted:
            out.append(
                "deleted from the target first: "
                + ", ".join(f"{n} {c} row(s)" for n, c in self.deleted.items())
            )
        out.append(f"{'table':<16} {'source':>9} {'target':>9}  checksum")
        for tc in self.tables:
            state = f"ok {tc.source_checksum[:12]}" if tc.ok else "MISMATCH"
            out.append(f"{tc.name:<16} {tc.source_rows:>9} {tc.target_rows:>9}  {state}")
            if not tc.ok:
                out.append(f"  source {tc.source_checksum[:12]} target {tc.target_checksum[:12]}")
            out.extend(f"  {d}" for d in tc.differences)
        out.extend(self.target_checks.lines())
        if self.validate_only:
            pass
        elif self.sequences:
            out.append(
                "sequences reset: "
                + ", ".join(f"{n} next id {v}" for n, v in self.sequences.items())
            )
        else:
            out.append("sequences: not reset (nothing committed)")
        if self.validate_only:
            verdict = "OK: source and target are equal" if self.ok else "MISMATCH"
        elif self.ok and self.committed:
            verdict = "OK: copied, validated and committed"
        elif self.ok:
            verdict = "OK: validated; dry run rolled back, the target is unchanged"
        else:
            verdict = "MISMATCH: rolled back, the target is unchanged"
        out.append(f"result: {verdict}")
        return out


# --- progress --------------------------------------------------------------------------------


class ProgressBar:
    """``users  [##########----------]  120/240`` on a terminal, one final line otherwise."""

    WIDTH = 30

    def __init__(self, stream: TextIO, name: str, total: int) -> None:
        self.stream, self.name, self.total = stream, name, total
        self.tty = stream.isatty()
        self._draw(0)

    def _line(self, done: int) -> str:
        filled = self.WIDTH if not self.total else self.WIDTH * done // self.total
        bar = "#" * filled + "-" * (self.WIDTH - filled)
        return f"{self.name:<16} [{bar}] {done}/{self.total}"

    def _draw(self, done: int) -> None:
        if self.tty:
            self.stream.write("\r" + self._line(done))
            self.stream.flush()

    def update(self, done: int) -> None:
        self._draw(done)

    def close(self, done: int) -> None:
        self.stream.write(("\r" if self.tty else "") + self._line(done) + "\n")
        self.stream.flush()


Progress = Callable[[str, int], ProgressBar]


def stderr_progress(name: str, total: int) -> ProgressBar:
    return ProgressBar(sys.stderr, name, total)


# --- the copy --------------------------------------------------------------------------------


def _hide_password(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def _check_urls(source_url: str, target_url: str) -> None:
    if sqlite_path(source_url) is None:
        raise OpsError(
            "db copy copies from a SQLite database file; TRADEBOOK_DATABASE_URL is "
            f"{_hide_password(source_url)}"
        )
    try:
        backend = make_url(target_url).get_backend_name()
    except sa.exc.ArgumentError:
        raise OpsError(f"--to: not a database URL: {target_url!r}") from None
    if backend != "postgresql":
        raise OpsError("--to must be a PostgreSQL URL: postgresql+asyncpg://user:pass@host/db")


def _source_revision(src: sa.Connection) -> None:
    rev = MigrationContext.configure(src).get_current_revision()
    head = migrations.head_revision()
    if rev != head:
        raise OpsError(
            f"the source database is at {rev or 'base (empty)'}, the code needs {head}; run "
            "`tradebook db upgrade` on it first (db copy never modifies the source)"
        )


def _target_rows(dst: sa.Connection) -> dict[str, int]:
    counts = {}
    for table in reversed(t.metadata.sorted_tables):
        n = dst.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
        if n:
            counts[table.name] = n
    return counts


def _only_seeds(dst: sa.Connection, counts: dict[str, int]) -> bool:
    if set(counts) - {"brokers"}:
        return False
    rows = {(r.code, r.name) for r in dst.execute(sa.select(t.brokers.c.code, t.brokers.c.name))}
    return rows <= SEEDED_BROKERS


def _insert(
    dst: sa.Connection,
    table: sa.Table,
    batch: list[dict[str, Any]],
    bar: ProgressBar | None,
    done: int,
) -> int:
    """Insert and clear ``batch``; return how many rows it held."""
    n = len(batch)
    if n:
        dst.execute(table.insert(), batch)
        batch.clear()
        if bar:
            bar.update(done + n)
    return n


def _copy_tables(
    src: sa.Connection, dst: sa.Connection, batch_size: int, progress: Progress | None
) -> dict[str, int]:
    copied: dict[str, int] = {}
    done: set[str] = set()
    # Foreign keys to a table copied later (users.current_portfolio_id) or to the same table
    # (users.approved_by_user_id) are written as NULL first and filled in at the end.
    patches: list[tuple[sa.Table, str, list[dict[str, Any]]]] = []
    for table in t.metadata.sorted_tables:
        deferred = [
            fk.parent.name
            for fk in table.foreign_keys
            if fk.column.table.name not in done or fk.column.table is table
        ]
        later: dict[str, list[dict[str, Any]]] = {name: [] for name in deferred}
        total = src.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
        bar = progress(table.name, total) if progress else None
        count = 0
        batch: list[dict[str, Any]] = []
        for row in _rows(src, table, batch_size):
            values = dict(row._mapping)
            for name in deferred:
                if values[name] is not None:
                    later[name].append({"_id": values["id"], "_value": values[name]})
                    values[name] = None
            batch.append(values)
            if len(batch) >= batch_size:
                count += _insert(dst, table, batch, bar, count)
        count += _insert(dst, table, batch, bar, count)
        if bar:
            bar.close(count)
        copied[table.name] = count
        done.add(table.name)
        patches.extend((table, name, rows) for name, rows in later.items() if rows)
    for table, name, rows in patches:
        update = (
            table.update()
            .where(table.c.id == sa.bindparam("_id"))
            .values({name: sa.bindparam("_value", type_=table.c[name].type)})
        )
        for i in range(0, len(rows), batch_size):
            dst.execute(update, rows[i : i + batch_size])
    return copied


def compare_tables(
    src: sa.Connection, dst: sa.Connection, batch_size: int = BATCH_SIZE
) -> list[TableCheck]:
    """Row counts and canonical checksums of every table on both sides, naming the first
    differing rows (merged in primary-key order)."""
    checks = []
    for table in t.metadata.sorted_tables:
        check = TableCheck(table.name)
        src_hash, dst_hash = hashlib.sha256(), hashlib.sha256()
        src_rows, dst_rows = _rows(src, table, batch_size), _rows(dst, table, batch_size)
        a, b = next(src_rows, None), next(dst_rows, None)
        while a is not None or b is not None:
            key_a = row_key(table, a) if a is not None else None
            key_b = row_key(table, b) if b is not None else None
            if b is None or (a is not None and key_a < key_b):  # type: ignore[operator]  # both keys set when both rows are
                check.source_rows += 1
                src_hash.update(canonical_row(a).encode() + b"\n")  # type: ignore[arg-type]  # a is set in this branch
                check.differences.append(f"{_show_key(key_a)}: missing on the target")
                a = next(src_rows, None)
            elif a is None or key_b < key_a:  # type: ignore[operator]  # both keys set when both rows are
                check.target_rows += 1
                dst_hash.update(canonical_row(b).encode() + b"\n")
                check.differences.append(f"{_show_key(key_b)}: only on the target")
                b = next(dst_rows, None)
            else:
                left, right = canonical_row(a), canonical_row(b)
                check.source_rows += 1
                check.target_rows += 1
                src_hash.update(left.encode() + b"\n")
                dst_hash.update(right.encode() + b"\n")
                if left != right:
                    columns = [
                        c.name
                        for c, x, y in zip(table.columns, a, b, strict=True)
                        if canonical_value(x) != canonical_value(y)
                    ]
                    check.differences.append(f"{_show_key(key_a)}: {', '.join(columns)} differ")
                a, b = next(src_rows, None), next(dst_rows, None)
        check.source_checksum, check.target_checksum = src_hash.hexdigest(), dst_hash.hexdigest()
        if len(check.differences) > MAX_REPORTED_ROWS:
            more = len(check.differences) - MAX_REPORTED_ROWS
            check.differences = [*check.differences[:MAX_REPORTED_ROWS], f"… and {more} more"]
        checks.append(check)
    return checks


def _show_key(key: tuple[Any, ...] | None) -> str:
    assert key is not None
    return f"id {key[0]}" if len(key) == 1 else f"key {key}"


def _reset_sequences(dst: sa.Connection) -> dict[str, int]:
    """Point every identity sequence just past the table's highest id."""
    nexts = {}
    for table in t.metadata.sorted_tables:
        if "id" not in table.c:
            continue
        next_id = dst.execute(
            sa.text(
                "SELECT setval(pg_get_serial_sequence(:table, 'id'), "
                f"COALESCE((SELECT max(id) FROM {table.name}), 0) + 1, false)"
            ),
            {"table": table.name},
        ).scalar_one()
        nexts[table.name] = next_id
    return nexts


def _migrate(dst: sa.Connection, target_url: str) -> None:
    cfg = migrations.alembic_config(target_url)
    cfg.attributes["connection"] = dst  # runs inside this transaction (transactional DDL)
    from alembic import command

    try:
        command.upgrade(cfg, "head")
    except Exception as exc:  # e.g. a target at a revision this code does not know
        raise OpsError(f"could not migrate the target to head: {exc}") from exc


async def copy_database(
    source_url: str,
    target_url: str,
    *,
    dry_run: bool = False,
    force: bool = False,
    batch_size: int = BATCH_SIZE,
    progress: Progress | None = None,
    say: Callable[[str], None] = print,
) -> CopyReport:
    """Copy, validate and (unless a dry run or a mismatch) commit. Raises OpsError when it
    refuses (bad URL, source not at head, non-empty target without ``force``)."""
    _check_urls(source_url, target_url)
    report = CopyReport(_hide_password(source_url), _hide_password(target_url), dry_run=dry_run)
    source = readonly_engine(sqlite_path(source_url))  # type: ignore[arg-type]  # _check_urls made the source a SQLite file
    target = create_engine(target_url, pool_size=1, max_overflow=0)
    try:
        with source.connect() as src:
            src.begin()  # one snapshot for the copy and the validation
            _source_revision(src)
            async with target.connect() as conn:
                await conn.begin()

                def work(dst: sa.Connection) -> None:
                    _migrate(dst, target_url)
                    counts = _target_rows(dst)
                    if counts and not _only_seeds(dst, counts):
                        listing = ", ".join(f"{n} {c} row(s)" for n, c in counts.items())
                        if not force:
                            raise OpsError(
                                f"the target is not empty ({listing}); nothing was changed. "
                                "--force deletes those rows first"
                            )
                        say(f"--force: deleting from the target: {listing}")
                        report.deleted = counts
                    names = ", ".join(tb.name for tb in t.metadata.sorted_tables)
                    dst.exec_driver_sql(f"TRUNCATE {names}")
                    report.copied = _copy_tables(src, dst, batch_size, progress)
                    report.tables = compare_tables(src, dst, batch_size)
                    report.target_checks = verify_sync(dst)
                    if report.ok and not dry_run:
                        report.sequences = _reset_sequences(dst)

                await conn.run_sync(work)
                if report.ok and not dry_run:
                    await conn.commit()
                    report.committed = True
                else:
                    await conn.rollback()
            src.rollback()
    finally:
        source.dispose()
        await target.dispose()
    return report


async def validate_copy(
    source_url: str, target_url: str, batch_size: int = BATCH_SIZE
) -> CopyReport:
    """Compare an existing copy with its source (nothing is written on either side)."""
    _check_urls(source_url, target_url)
    report = CopyReport(_hide_password(source_url), _hide_password(target_url), validate_only=True)
    source = readonly_engine(sqlite_path(source_url))  # type: ignore[arg-type]  # _check_urls made the source a SQLite file
    target = create_engine(target_url, pool_size=1, max_overflow=0)
    try:
        with source.connect() as src:
            src.begin()
            async with target.connect() as conn:
                await conn.execute(sa.text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))

                def work(dst: sa.Connection) -> None:
                    report.tables = compare_tables(src, dst, batch_size)
                    report.target_checks = verify_sync(dst)

                await conn.run_sync(work)
                await conn.rollback()
            src.rollback()
    finally:
        source.dispose()
        await target.dispose()
    return report
