"""Settings: one class, mirrored by .env.example; bad values stop start-up with one line."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
from pydantic import AliasChoices

from tradebook.settings import Settings, SettingsError, load_settings

ROOT = Path(__file__).resolve().parent.parent


def _env_name(field: str) -> str:
    alias = Settings.model_fields[field].validation_alias
    if alias is not None:
        assert isinstance(alias, AliasChoices), alias
        first = alias.choices[0]
        assert isinstance(first, str), first
        return first
    return f"TRADEBOOK_{field.upper()}"


def test_env_example_lists_exactly_the_settings() -> None:
    text = (ROOT / ".env.example").read_text()
    listed = re.findall(r"^([A-Z][A-Z0-9_]*)=", text, flags=re.M)
    assert len(listed) == len(set(listed)), "a setting is listed twice"
    # POSTGRES_PASSWORD is docker compose's (the postgres service's password), not a setting.
    assert set(listed) - {"POSTGRES_PASSWORD"} == {_env_name(f) for f in Settings.model_fields}
    # Every setting has a comment right above it.
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if re.match(r"^[A-Z][A-Z0-9_]*=", line):
            assert lines[i - 1].startswith("#"), f"{line} has no comment"


def test_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no .env here
    for key in list(os.environ):
        if key.startswith("TRADEBOOK_") or key == "TELEGRAM_BOT_TOKEN":
            monkeypatch.delenv(key)
    settings = Settings()
    assert settings.database_url == "sqlite+aiosqlite:///./var/tradebook.db"
    assert settings.telegram_bot_token is None
    assert settings.admin_telegram_ids == []
    assert settings.paper_starting_cash == Decimal("10000")
    settings.ensure_database_dir()
    assert (tmp_path / "var").is_dir()


def test_values_from_env_and_dotenv(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("TELEGRAM_BOT_TOKEN=123:abc\nTRADEBOOK_LOG_LEVEL=debug\n")
    monkeypatch.setenv("TRADEBOOK_ADMIN_TELEGRAM_IDS", "11, 22,33")
    settings = Settings()
    assert settings.admin_telegram_ids == [11, 22, 33]
    assert settings.log_level == "DEBUG"
    assert settings.telegram_bot_token is not None
    assert settings.telegram_bot_token.get_secret_value() == "123:abc"
    assert "123:abc" not in repr(settings)


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"TRADEBOOK_DATABASE_URL": "not a url"}, "TRADEBOOK_DATABASE_URL"),
        ({"TRADEBOOK_DATABASE_URL": "mysql://h/db"}, "unsupported database"),
        ({"TRADEBOOK_ADMIN_TELEGRAM_IDS": "12,bob"}, "TRADEBOOK_ADMIN_TELEGRAM_IDS"),
        ({"TRADEBOOK_LOG_FORMAT": "xml"}, "TRADEBOOK_LOG_FORMAT"),
        ({"TRADEBOOK_PAPER_STARTING_CASH": "lots"}, "TRADEBOOK_PAPER_STARTING_CASH"),
    ],
)
def test_bad_value_stops_start_up_with_one_line(
    tmp_path: Path, env: dict[str, str], fragment: str
) -> None:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("TRADEBOOK_")}
    full_env.update(env)
    full_env["PYTHONPATH"] = str(ROOT)
    result = subprocess.run(
        [sys.executable, "-m", "tradebook.cli", "db", "current"],
        cwd=tmp_path,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert fragment in lines[0]
    assert "Traceback" not in result.stderr


def test_load_settings_raises_settings_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRADEBOOK_ADMIN_TELEGRAM_IDS", "x")
    with pytest.raises(SettingsError, match="numeric"):
        load_settings()


def test_health_reads_the_running_bots_heartbeat(tmp_path: Path) -> None:
    import datetime as dt

    from tradebook.app import health

    beat = tmp_path / "heartbeat"
    now = dt.datetime(2026, 1, 1, 12, tzinfo=dt.UTC)
    assert health(beat, now) == f"no heartbeat at {beat}: tradebook is not running here"
    beat.write_text((now - dt.timedelta(seconds=20)).isoformat())
    assert health(beat, now) is None
    beat.write_text((now - dt.timedelta(seconds=61)).isoformat())
    assert health(beat, now) == "the last heartbeat is 61 s old: tradebook is stuck or stopped"


def test_telegram_api_url_names_another_bot_api_server() -> None:
    from aiogram.client.session.aiohttp import AiohttpSession

    from tradebook.app import api_session

    assert Settings(telegram_api_url="").telegram_api_url is None
    assert api_session(Settings(telegram_api_url=None)) is None  # aiogram's: Telegram's own
    settings = Settings(telegram_api_url=" http://127.0.0.1:8081/ ")
    assert settings.telegram_api_url == "http://127.0.0.1:8081"
    session = api_session(settings)
    assert isinstance(session, AiohttpSession)
    assert session.api.api_url("1:x", "getMe") == "http://127.0.0.1:8081/bot1:x/getMe"
    with pytest.raises(SettingsError, match="TRADEBOOK_TELEGRAM_API_URL: 'ftp://h' is not an"):
        load_settings(telegram_api_url="ftp://h")
