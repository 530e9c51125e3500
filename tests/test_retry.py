"""A transaction PostgreSQL aborts for a deadlock is run again; when the retries run out the
caller gets one clear ConcurrentUpdate, never a raw driver error."""

from __future__ import annotations

import asyncio
import os
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from dal import schema as t
from dal.database import DalSettings, Database, Session
from dal.errors import ConcurrentUpdate, DatabaseUnavailable
from dal.positions import PositionService
from dal.scope import Actor, Tx
from tests.conftest import _pg_admin
from tests.factories import default_portfolio, make_user

postgresql_only = pytest.mark.parametrize("engine_name", ["postgresql"], indirect=True)


def _lock_user(tx: Tx, user_id: int) -> None:
    tx.conn.execute(sa.select(t.users.c.id).where(t.users.c.id == user_id).with_for_update())


def _rename(tx: Tx, user_id: int, name: str) -> None:
    tx.conn.execute(t.users.update().where(t.users.c.id == user_id).values(username=name))


@postgresql_only
async def test_two_transactions_that_deadlock_both_land(db: Database) -> None:
    """Each locks one user row, then the other's: PostgreSQL aborts one of them (deadlock);
    ``Database.transaction`` runs that one again and both changes are stored."""
    a, b = await make_user(db), await make_user(db)
    assert a.user_id is not None and b.user_id is not None
    first_locked = {a.user_id: asyncio.Event(), b.user_id: asyncio.Event()}
    runs = {a.user_id: 0, b.user_id: 0}

    def unit(mine: int, theirs: int) -> Any:
        async def run(s: Session) -> None:
            runs[mine] += 1
            await s.run(_lock_user, mine)
            first_locked[mine].set()
            await first_locked[theirs].wait()
            await s.run(_lock_user, theirs)
            await s.run(_rename, mine, f"renamed-{mine}")
            await s.run(_rename, theirs, f"touched-by-{mine}")

        return run

    await asyncio.wait_for(
        asyncio.gather(
            db.transaction(Actor.system(), unit(a.user_id, b.user_id)),
            db.transaction(Actor.system(), unit(b.user_id, a.user_id)),
        ),
        timeout=30,
    )
    assert sorted(runs.values()) == [1, 2]  # exactly one of them was aborted and run again
    async with db.session(Actor.system()) as s:
        names = {u.id: u.username for u in await s.users.list_all()}
    second = a.user_id if runs[a.user_id] == 2 else b.user_id
    first = b.user_id if second == a.user_id else a.user_id
    assert names[second] == f"renamed-{second}"  # the retried one wrote last
    assert names[first] == f"touched-by-{second}"


class _Aborted(Exception):
    sqlstate = "40P01"


def _deadlock() -> sa.exc.DBAPIError:
    return sa.exc.DBAPIError("UPDATE …", {}, _Aborted("deadlock detected"))


@postgresql_only
async def test_a_one_call_transaction_is_retried_then_reported_clearly(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    actor = await make_user(db)
    pid = await default_portfolio(db, actor)
    calls: list[int] = []
    fail_times = 2

    def snapshot(service: PositionService, portfolio_id: int) -> list[Any]:
        calls.append(portfolio_id)
        if len(calls) <= fail_times:
            raise _deadlock()
        return []

    monkeypatch.setattr(PositionService, "snapshot", snapshot)
    assert await db.scoped(actor).positions.snapshot(pid) == []
    assert calls == [pid] * 3

    calls.clear()
    fail_times = 99
    with pytest.raises(ConcurrentUpdate, match=r"deadlock detected.*failed 5 times"):
        await db.scoped(actor).positions.snapshot(pid)
    assert len(calls) == db.settings.transaction_attempts == 5


@postgresql_only
async def test_a_session_block_reports_a_deadlock_as_a_clear_error(db: Database) -> None:
    """A session block cannot be run again by the DAL (it is the caller's code): it gets the
    clear error at once, and Database.transaction is the retrying form."""

    def abort(tx: Tx) -> None:
        raise _deadlock()

    with pytest.raises(ConcurrentUpdate, match="another one touched the same rows"):
        async with db.session(Actor.system()) as s:
            await s.run(abort)


async def test_other_database_errors_are_not_retried(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    actor = await make_user(db)
    pid = await default_portfolio(db, actor)
    calls: list[int] = []

    def snapshot(service: PositionService, portfolio_id: int) -> list[Any]:
        calls.append(portfolio_id)
        raise sa.exc.DBAPIError("SELECT …", {}, Exception("connection lost"))

    monkeypatch.setattr(PositionService, "snapshot", snapshot)
    with pytest.raises(sa.exc.DBAPIError, match="connection lost"):
        await db.scoped(actor).positions.snapshot(pid)
    assert calls == [pid]


@postgresql_only
async def test_a_process_out_of_connections_gets_one_clear_error(db_url: str) -> None:
    settings = DalSettings(paper_starting_cash=Decimal(10000), pool_size=1, pool_timeout_s=0.2)
    db = Database(db_url, settings)
    async with db, db.session(Actor.system()) as s1, db.session(Actor.system()) as s2:
        await s1.users.list_all()  # pool_size 1 + as many in a burst: both writers held
        await s2.users.list_all()
        with pytest.raises(DatabaseUnavailable, match="TRADEBOOK_DB_POOL_SIZE"):
            async with db.session(Actor.system()) as s3:
                await s3.users.list_all()


@postgresql_only
async def test_a_server_out_of_connections_gets_one_clear_error(db_url: str) -> None:
    role = f"tb_limited_{os.getpid()}"
    await _pg_admin([f"DROP ROLE IF EXISTS {role}", f"CREATE ROLE {role} LOGIN CONNECTION LIMIT 1"])
    url = make_url(db_url).set(username=role).render_as_string(hide_password=False)
    try:
        first, second = Database(url), Database(url)
        async with first, second, first.session(Actor.system(), readonly=True) as s:
            await s.run(lambda tx: tx.conn.execute(sa.text("SELECT 1")))
            with pytest.raises(DatabaseUnavailable, match="max_connections"):
                async with second.session(Actor.system(), readonly=True) as s2:
                    await s2.run(lambda tx: tx.conn.execute(sa.text("SELECT 1")))
    finally:
        await _pg_admin([f"DROP ROLE IF EXISTS {role}"])
