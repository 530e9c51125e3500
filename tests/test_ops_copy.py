"""`tradebook db copy`: a seeded SQLite database copied into the real PostgreSQL server."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import io
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from dal import migrations
from dal import schema as t
from dal.database import Database
from dal.engine import create_engine
from dal.scope import Actor
from tests.conftest import PgDatabases, pg_base_url, table_counts
from tests.factories import fill
from tradebook.ops import OpsError
from tradebook.ops.copy import ProgressBar, copy_database, validate_copy

EIGHTEEN = Decimal("0.123456789012345678")
PRICE = Decimal("12345.000000000000000001")
AT = dt.datetime(2024, 5, 1, 9, 30, 15, 123456, tzinfo=dt.UTC)
NESTED = {"levels": [{"name": "Zoë ✓", "w": "0.000000000000000001"}, [1, 2, {"deep": None}]]}


async def seed_everything(db: Database) -> dict[str, Any]:
    """One or more rows in every table, with the awkward values a copy must keep exactly."""
    system = Actor.system()
    async with db.session(system) as s:
        user = await s.users.register(5001, "Zoë_трейдер", chat_id=5001)
        (admin,) = await s.users.bootstrap_admins([5002])
        instrument = (
            await s.instruments.create(
                {
                    "symbol": "BTCUSDT",
                    "exchange": "TEST",
                    "asset_type": "CRYPTO",
                    "currency": "USDT",
                    "tick_size": Decimal("0.000000000000000001"),
                    "lot_size": EIGHTEEN,
                }
            )
        ).id
    # Approved by an admin with a higher id: a self-reference that points forward.
    async with db.session(Actor.user(admin.id), admin=True) as s:
        await s.users.approve(5001)
    actor = Actor.user(user.id)
    async with db.session(actor) as s:
        main = await s.portfolios.default()
        side = await s.portfolios.create(
            {"name": "Основной 📈", "account_id": main.account_id, "description": "中文 ✓"}
        )
        await s.portfolios.set_current(side.id)  # users → portfolios: a cycle
        strategy = await s.strategies.create({"name": "sma", "params": NESTED})
        await s.strategy_runs.start(strategy.id, main.id)
        order = await s.orders.place(
            {
                "portfolio_id": main.id,
                "instrument_id": instrument,
                "strategy_id": strategy.id,
                "side": "BUY",
                "type": "LIMIT",
                "quantity": EIGHTEEN * 2,
                "price": PRICE,
                "client_order_id": "c-1",
                "meta": {"note": "né", "nested": NESTED},
            }
        )
        for i, when in enumerate((AT, AT + dt.timedelta(microseconds=1))):
            await s.trades.ingest_fill(
                fill(
                    main.id,
                    instrument,
                    "BUY",
                    str(EIGHTEEN),
                    str(PRICE),
                    at=when,
                    trade_id=f"t-{i}",
                    order_id=order.id,
                    strategy_id=strategy.id,
                    fee=Decimal("0.000000000000000003"),
                    fee_currency="USDT",
                )
            )
        await s.trades.ingest_fill(
            fill(side.id, instrument, "BUY", "3", "100.5", at=AT, trade_id="m-1")
        )
        await s.trades.ingest_fill(
            fill(side.id, instrument, "SELL", "1", "101.000000000000000001", trade_id="m-2",
                 at=AT + dt.timedelta(seconds=1))
        )  # fmt: skip
        await s.trades.ingest_fill(  # the next UTC day: a position checkpoint
            fill(side.id, instrument, "SELL", "1", "99.25", at=AT + dt.timedelta(days=1),
                 trade_id="m-3")
        )  # fmt: skip
        await s.cash.deposit(main.id, "1234.567890123456789012", "USDT", note="dépôt ✓")
        policy = await s.risk.create_policy(
            {
                "name": "limits",
                "scope_type": "PORTFOLIO",
                "scope_id": main.id,
                "config": {"max_order_notional": "1"},
            }
        )
        verdict = await s.risk.evaluate(
            {"portfolio_id": main.id, "instrument_id": instrument, "side": "BUY",
             "type": "LIMIT", "quantity": "1", "price": "100"},
            {instrument: Decimal("100")},
        )  # fmt: skip
        await s.risk.record_breach(verdict, main.id, instrument, order.id)
        await s.alerts.create(
            {
                "name": "crossing ↑",
                "type": "PRICE",
                "portfolio_id": main.id,
                "config": {"symbol": "BTCUSDT", "op": "above", "price": "70000"},
            }
        )
        await s.schedules.create(
            {"name": "daily", "cron": "0 18 * * *", "config": {"report": "pnl"}}
        )
        await s.screeners.create({"name": "cheap", "config": {"max_price": "1"}})
        await s.unapplied_events.keep(main.id, {"kind": "fill", "price": str(PRICE)}, "dépôt ✓")
    async with db.session(Actor.system()) as s:
        await s.marks.save({instrument: PRICE}, AT)
        await s.equity.snapshot_all(AT + dt.timedelta(seconds=2), {instrument: PRICE})
    engine = create_engine(db.url)
    try:
        counts = await table_counts(engine)
    finally:
        await engine.dispose()
    empty = [name for name, n in counts.items() if not n]
    assert not empty, f"seed left tables empty: {empty}"
    return {"policy": policy.id, "counts": counts}


@pytest.fixture
async def seeded_sqlite(tmp_path: Path, sqlite_template: Path) -> str:
    path = tmp_path / "source.db"
    path.write_bytes(sqlite_template.read_bytes())
    url = f"sqlite+aiosqlite:///{path}"
    async with Database(url) as db:
        await seed_everything(db)
    return url


@pytest.fixture
def pg_target(pg_databases: PgDatabases | None) -> Any:
    """An empty PostgreSQL database (no tables) for the copy to migrate."""
    if pg_databases is None:
        pytest.skip("TRADEBOOK_TEST_POSTGRES_URL is not set")
    name = pg_databases.create()
    yield pg_databases.url_for(name)
    pg_databases.drop(name)


def _digest(url: str) -> str:
    """The database file and its WAL content. Opening a WAL database, even read-only, may
    create an empty -wal file and the -shm index (shared memory readers write to)."""
    path = Path(sa.engine.make_url(url).database or "")
    h = hashlib.sha256()
    for file in sorted(path.parent.glob(path.name + "*")):
        if file.name.endswith("-shm") or not file.stat().st_size:
            continue
        h.update(file.name.encode() + file.read_bytes())
    return h.hexdigest()


async def _pg_rows(url: str, table: sa.Table) -> list[sa.Row]:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            return list(await conn.execute(sa.select(table).order_by(table.c.id)))
    finally:
        await engine.dispose()


async def test_copy_to_postgres_is_equal_and_validated(seeded_sqlite: str, pg_target: str) -> None:
    before = _digest(seeded_sqlite)
    bars: list[str] = []

    def progress(name: str, total: int) -> Any:
        bars.append(name)
        return ProgressBar(io.StringIO(), name, total)

    report = await copy_database(seeded_sqlite, pg_target, progress=progress)
    assert report.ok, "\n".join(report.lines())
    assert report.committed
    assert bars == [tb.name for tb in t.metadata.sorted_tables]
    assert all(tc.source_rows == tc.target_rows > 0 for tc in report.tables)
    assert _digest(seeded_sqlite) == before, "the source was modified"

    # Values arrived exactly, in native types.
    trades = await _pg_rows(pg_target, t.trades)
    assert trades[0].quantity == EIGHTEEN and trades[0].exec_time == AT
    strategies = await _pg_rows(pg_target, t.strategies)
    assert strategies[0].params_json == NESTED
    users = await _pg_rows(pg_target, t.users)
    assert users[0].username == "Zoë_трейдер"
    assert users[0].approved_by_user_id == users[1].id and users[0].current_portfolio_id

    engine = create_engine(pg_target)
    try:
        async with engine.connect() as conn:
            kinds: dict[str, str] = dict(
                (await conn.execute(sa.text(
                    "SELECT column_name, data_type FROM information_schema.columns "
                    "WHERE table_name = 'trades'"
                ))).all()
            )  # fmt: skip
            assert kinds["quantity"] == "numeric"
            assert kinds["exec_time"] == "timestamp with time zone"
            assert kinds["meta_json"] == "jsonb"
    finally:
        await engine.dispose()

    # Sequences were reset: new rows get fresh ids through the DAL on PostgreSQL.
    async with Database(pg_target) as pg:
        async with pg.session(Actor.system()) as s:
            user = await s.users.register(6001, "new", chat_id=6001)
        assert user.id == max(u.id for u in users) + 1
        async with pg.session(Actor.system(), admin=True) as s:
            assert await s.positions.verify() == []

    # A second copy into the now non-empty target is refused without --force …
    with pytest.raises(OpsError, match="not empty"):
        await copy_database(seeded_sqlite, pg_target)
    # … and with --force says what it deletes first.
    said: list[str] = []
    report = await copy_database(seeded_sqlite, pg_target, force=True, say=said.append)
    assert report.ok and report.deleted["users"] == 3
    assert said and "users 3 row(s)" in said[0]


async def test_corrupted_target_row_fails_validation(seeded_sqlite: str, pg_target: str) -> None:
    assert (await copy_database(seeded_sqlite, pg_target)).ok
    assert (await validate_copy(seeded_sqlite, pg_target)).ok
    engine = create_engine(pg_target)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                t.cash_movements.update().values(amount=Decimal("1234.567890123456789013"))
            )
    finally:
        await engine.dispose()
    report = await validate_copy(seeded_sqlite, pg_target)
    assert not report.ok
    bad = {tc.name: tc for tc in report.tables if not tc.ok}
    assert set(bad) == {"cash_movements"}
    assert "amount differ" in bad["cash_movements"].differences[0]
    assert "MISMATCH" in "\n".join(report.lines())


async def test_dry_run_leaves_the_target_empty(seeded_sqlite: str, pg_target: str) -> None:
    before = _digest(seeded_sqlite)
    report = await copy_database(seeded_sqlite, pg_target, dry_run=True)
    assert report.ok and not report.committed and not report.sequences
    assert "dry run rolled back" in report.lines()[-1]
    assert (
        await asyncio.to_thread(migrations.current, pg_target) is None
    )  # even the migration was rolled back
    engine = create_engine(pg_target)
    try:
        async with engine.connect() as conn:
            tables = (
                await conn.execute(
                    sa.text("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
                )
            ).scalar_one()
            sequences = (await conn.execute(sa.text("SELECT count(*) FROM pg_sequences"))).scalar()
    finally:
        await engine.dispose()
    assert tables == 0 and sequences == 0
    assert _digest(seeded_sqlite) == before


async def test_mismatch_during_copy_rolls_back(
    seeded_sqlite: str, pg_target: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A row that changes on its way makes the copy fail and commit nothing."""
    from tradebook.ops import copy as copy_module

    real = copy_module._copy_tables

    def tampering(src: sa.Connection, dst: sa.Connection, *args: Any) -> dict[str, int]:
        copied = real(src, dst, *args)
        dst.execute(t.screeners.update().values(name="tampered"))
        return copied

    monkeypatch.setattr(copy_module, "_copy_tables", tampering)
    report = await copy_database(seeded_sqlite, pg_target)
    assert not report.ok and not report.committed
    assert report.lines()[-1].startswith("result: MISMATCH")
    assert await asyncio.to_thread(migrations.current, pg_target) is None


async def test_copy_refusals(seeded_sqlite: str, tmp_path: Path) -> None:
    with pytest.raises(OpsError, match="PostgreSQL URL"):
        await copy_database(seeded_sqlite, f"sqlite+aiosqlite:///{tmp_path / 'x.db'}")
    with pytest.raises(OpsError, match="SQLite database file"):
        await copy_database("postgresql+asyncpg://u@h/db", "postgresql+asyncpg://u@h/db2")
    old = tmp_path / "old.db"
    await asyncio.to_thread(migrations.upgrade, f"sqlite+aiosqlite:///{old}", "0003")
    if pg_base_url() is None:
        return
    with pytest.raises(OpsError, match="run `tradebook db upgrade`"):
        await copy_database(f"sqlite+aiosqlite:///{old}", pg_base_url() or "")
