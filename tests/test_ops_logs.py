"""Structured logs: both formats carry extra fields; secrets and bot tokens never appear."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
from pydantic import SecretStr

from tradebook.logs import configure_logging, secret_values
from tradebook.settings import load_settings

TOKEN = "7512345678:AAH4kQx9_rT2vW-8yZbN3mPq5sLdFgHjKlz"
API_SECRET = "binance-secret-31f1d2aa7c"


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _emit() -> None:
    log = logging.getLogger("tradebook.test")
    log.info("starting bot with token %s", TOKEN, extra={"update_id": 42, "client_order_id": "c-1"})
    log.info("url https://api.telegram.org/bot%s/getMe", TOKEN)
    log.warning("order placed", extra={"order_uid": "u-1", "auth": {"token": TOKEN}})
    log.info("secret %s and %s", API_SECRET, SecretStr(API_SECRET))
    try:
        raise RuntimeError(f"request failed for {TOKEN}")
    except RuntimeError:
        log.exception("boom", extra={"update_id": 43})


@pytest.mark.parametrize("fmt", ["human", "json"])
def test_bot_token_and_secrets_never_logged(
    fmt: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", TOKEN)
    settings = load_settings()
    assert settings.telegram_bot_token is not None
    configure_logging("INFO", fmt, [*secret_values(settings), SecretStr(API_SECRET)])
    _emit()
    err = capsys.readouterr().err
    assert TOKEN not in err and TOKEN.split(":")[1] not in err
    assert API_SECRET not in err
    assert err.count("[REDACTED]") >= 5
    lines = err.strip().splitlines()
    if fmt == "json":
        records = [json.loads(line) for line in lines]
        assert records[0]["update_id"] == 42 and records[0]["client_order_id"] == "c-1"
        assert records[2]["order_uid"] == "u-1" and records[2]["auth"] == {"token": "[REDACTED]"}
        assert "RuntimeError" in records[-1]["exc"] and records[-1]["update_id"] == 43
    else:
        assert "client_order_id=c-1 update_id=42" in lines[0]
        assert "order_uid=u-1" in err


def test_unregistered_token_shape_is_still_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", "json")
    other = "123456:" + "A" * 35
    logging.getLogger("x").info("token %s at 12:30:45", other)
    out = json.loads(capsys.readouterr().err)
    assert out["msg"] == "token [REDACTED] at 12:30:45"
