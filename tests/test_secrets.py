"""Broker API keys come from the environment / secrets dir and never reach the database,
account meta or the logs."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from dal import schema as t
from dal.database import Database
from dal.errors import NotFound
from tests.botkit import BotHarness, approved_user, joined
from trading.brokers.credentials import load_credentials

KEY = "binance-key-5b7c0e7e9d"
SECRET = "binance-secret-31f1d2aa7c"


async def test_keys_never_reach_database_or_logs(
    db: Database,
    engine: AsyncEngine,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    engine_name: str,
    db_url: str,
    tmp_path: Path,
) -> None:
    caplog.set_level(logging.DEBUG)
    h = BotHarness(db)
    await approved_user(db, 77, admin=True)
    async with db.session(await approved_user(db, 78)) as s:
        account = await s.accounts.create(
            {"broker": "BINANCE", "name": "Spot", "account_uid": "spot-1"}
        )
    monkeypatch.setenv(f"TRADEBOOK_ACCOUNT_{account.id}_API_KEY", KEY)
    monkeypatch.setenv(f"TRADEBOOK_ACCOUNT_{account.id}_API_SECRET", SECRET)
    creds = load_credentials(account, tmp_path / "none")
    assert creds.api_key.get_secret_value() == KEY
    assert KEY not in repr(creds) and SECRET not in str(creds)
    logging.getLogger("test").info("loaded %s", creds)  # what a careless log line would show
    assert "Spot — BINANCE spot-1" in joined(await h.send(77, "/accounts 78"))

    async with engine.connect() as conn:
        for table in t.metadata.sorted_tables:
            for row in await conn.execute(sa.select(table)):
                assert KEY not in str(tuple(row)) and SECRET not in str(tuple(row))
    if engine_name == "sqlite":
        path = Path(sa.engine.make_url(db_url).database or "")
        for file in path.parent.glob(path.name + "*"):  # the database, its WAL and shm
            data = file.read_bytes()
            assert KEY.encode() not in data and SECRET.encode() not in data
    assert KEY not in caplog.text and SECRET not in caplog.text


def test_missing_keys_say_where_to_put_them(tmp_path: Path) -> None:
    account = SimpleNamespace(id=9, name="spot")
    with pytest.raises(NotFound, match="TRADEBOOK_ACCOUNT_9_API_KEY"):
        load_credentials(account, tmp_path)
    (tmp_path / "tradebook_account_9_api_key").write_text("k")
    (tmp_path / "tradebook_account_9_api_secret").write_text("s")
    creds = load_credentials(account, tmp_path)
    assert creds.api_secret.get_secret_value() == "s"


def test_keys_are_named_by_account_id_so_names_cannot_collide(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Account names or uids such as a-b, a_b and a.b once mapped to one key name; the id
    cannot be chosen, so another user's keys are never reachable by naming an account."""
    monkeypatch.setenv("TRADEBOOK_ACCOUNT_1_API_KEY", "one")
    monkeypatch.setenv("TRADEBOOK_ACCOUNT_1_API_SECRET", "one-s")
    mine = SimpleNamespace(id=2, name="a-b")
    with pytest.raises(NotFound):
        load_credentials(mine, tmp_path)
    assert (
        load_credentials(SimpleNamespace(id=1, name="a_b"), tmp_path).api_key.get_secret_value()
        == "one"
    )
