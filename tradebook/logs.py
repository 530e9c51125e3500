"""Logging set-up: human-readable lines by default, JSON lines with TRADEBOOK_LOG_FORMAT=json.

Extra fields passed with ``extra={...}`` (e.g. a correlation id such as ``order_uid``,
``client_order_id`` or ``update_id``) appear in both formats.

Secrets never reach the output: every line (message, extra fields, exception text) is scrubbed
of the values registered with :func:`register_secret` — ``configure_logging`` registers every
``SecretStr`` setting — and of anything shaped like a Telegram bot token
(``<digits>:<30+ token characters>``), which are replaced by ``[REDACTED]``.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
from collections.abc import Iterable
from typing import Any

from pydantic import SecretStr

REDACTED = "[REDACTED]"
TELEGRAM_TOKEN_RE = re.compile(r"\d+:[A-Za-z0-9_-]{30,}")

_STANDARD_ATTRS = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys()) | {
    "message",
    "asctime",
}

_secrets: set[str] = set()
_secrets_lock = threading.Lock()
_longest_first: tuple[str, ...] = ()  # the secrets, longest first (a new tuple per change)


def register_secret(value: SecretStr | str | None) -> None:
    """Never log ``value`` (a SecretStr or its plain text); short values (< 6 chars) are
    ignored, since scrubbing them would mangle ordinary text."""
    if value is None:
        return
    text = value.get_secret_value() if isinstance(value, SecretStr) else value
    if len(text) >= 6:
        global _longest_first
        with _secrets_lock:
            _secrets.add(text)
            _longest_first = tuple(sorted(_secrets, key=len, reverse=True))


def secret_values(obj: Any) -> list[SecretStr]:
    """Every SecretStr field of a pydantic model (e.g. Settings)."""
    fields = getattr(type(obj), "model_fields", {})
    return [v for name in fields if isinstance(v := getattr(obj, name, None), SecretStr)]


def redact(text: str) -> str:
    """``text`` with registered secrets and Telegram-token-shaped strings replaced."""
    for secret in _longest_first:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return TELEGRAM_TOKEN_RE.sub(REDACTED, text)


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value(v) for v in value]
    if isinstance(value, int | float | bool) or value is None:
        return value
    return redact(str(value))


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD_ATTRS}


class JsonFormatter(logging.Formatter):
    converter = staticmethod(time.gmtime)

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        payload.update(_extras(record))
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        payload = _redact_value(payload)
        # A second pass catches a secret split across escaping by the JSON encoder.
        return redact(json.dumps(payload, default=str, ensure_ascii=False))


class HumanFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = _extras(record)
        if extras:
            line += " " + " ".join(f"{k}={v}" for k, v in sorted(extras.items()))
        return redact(line)


def configure_logging(
    level: str = "INFO", fmt: str = "human", secrets: Iterable[SecretStr | str | None] = ()
) -> None:
    """Log to stderr in ``fmt`` ("human" or "json"); ``secrets`` are never written."""
    for secret in secrets:
        register_secret(secret)
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        formatter: logging.Formatter = JsonFormatter()
    else:
        formatter = HumanFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiogram and SQLAlchemy are chatty at INFO; keep them at WARNING unless debugging.
    for noisy in ("sqlalchemy", "aiogram.event", "alembic"):
        logging.getLogger(noisy).setLevel("DEBUG" if level == "DEBUG" else "WARNING")
