"""The one place every setting lives.

Each field is read from the environment (or `.env`) as ``TRADEBOOK_<NAME>``, except the
Telegram token, which keeps the name Telegram tooling uses. Every field is also listed in
`.env.example`; a test keeps the two in step.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./var/tradebook.db"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="TRADEBOOK_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
    )

    database_url: str = DEFAULT_DATABASE_URL
    # PostgreSQL: connections one process may hold (at most 3 × this; see docs/operations.md)
    # and how often a transaction aborted by a deadlock is run again.
    db_pool_size: int = Field(default=10, ge=1, le=100)
    db_transaction_attempts: int = Field(default=5, ge=1, le=20)
    telegram_bot_token: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("TELEGRAM_BOT_TOKEN", "telegram_bot_token"),
    )
    # Another Bot API server (a local telegram-bot-api, a proxy; the tests' fake), e.g.
    # http://127.0.0.1:8081; None: Telegram's own, https://api.telegram.org.
    telegram_api_url: str | None = None
    admin_telegram_ids: Annotated[list[int], NoDecode] = Field(default_factory=list)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    log_format: Literal["human", "json"] = "human"
    paper_starting_cash: Decimal = Decimal("10000")
    paper_currency: str = "USDT"
    strategies: Literal["on", "off"] = "on"
    paper_feed: str = "random"
    # Prices: random (the default random walk), csv:PATH, or binance (Binance's public 1-minute
    # klines; paper trading, marks, alerts and strategies then run on real prices). Unset:
    # paper_feed says it (its older name).
    market_data: str | None = None
    market_symbols: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["BTCUSDT", "ETHUSDT"]
    )
    # Binance: another server speaking its API for every Binance account and the market feed
    # (the tests' fake); None: Binance itself (testnet or live per account).
    binance_base_url: str | None = None
    binance_reconcile_seconds: int = Field(default=60, ge=5, le=3600)
    paper_speed: Decimal = Field(default=Decimal("5"), gt=0, le=10000)
    paper_fee_bps: Decimal = Field(default=Decimal("10"), ge=0, le=1000)
    paper_slippage_bps: Decimal = Field(default=Decimal("5"), ge=0, le=1000)
    paper_max_fill_quantity: Decimal | None = Field(default=None, gt=0)
    alert_cooldown_seconds: int = Field(default=300, ge=0, le=86400)
    heartbeat_file: Path = Path("var/heartbeat")
    secrets_dir: Path = Path("secrets")
    # Operations (tradebook/ops, docs/operations.md).
    backup_dir: Path = Path("var/backups")
    backup_schedule: str = "0 * * * *"
    backup_keep_hourly: int = Field(default=24, ge=0)
    backup_keep_daily: int = Field(default=7, ge=0)
    maintain_schedule: str = "30 3 * * *"
    maintain_vacuum_free_percent: int = Field(default=20, ge=0, le=100)

    @field_validator("database_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        try:
            url = make_url(value)
        except ArgumentError:
            raise ValueError(f"not a database URL: {value!r}") from None
        if url.get_backend_name() not in ("sqlite", "postgresql"):
            raise ValueError(
                f"unsupported database {url.get_backend_name()!r}: use sqlite+aiosqlite:// "
                "or postgresql+asyncpg://"
            )
        return value

    @field_validator("telegram_api_url", mode="before")
    @classmethod
    def _api_url(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.strip().rstrip("/")
            if not value:
                return None
            if not value.startswith(("http://", "https://")) or value in ("http:", "https:"):
                raise ValueError(f"{value!r} is not an http:// or https:// URL")
        return value

    @field_validator("admin_telegram_ids", mode="before")
    @classmethod
    def _split_ids(cls, value: object) -> object:
        if isinstance(value, str):
            parts = [p.strip() for p in value.split(",") if p.strip()]
            for part in parts:
                if not part.lstrip("-").isdigit():
                    raise ValueError(f"admin ids must be numeric Telegram ids, got {part!r}")
            return [int(p) for p in parts]
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator(
        "paper_starting_cash",
        "paper_speed",
        "paper_fee_bps",
        "paper_slippage_bps",
        "paper_max_fill_quantity",
        mode="before",
    )
    @classmethod
    def _exact(cls, value: object) -> object:
        if isinstance(value, float):
            raise ValueError("give the amount as text, not a float")
        if value == "":
            return None
        return value

    @field_validator("market_data")
    @classmethod
    def _market_data(cls, value: str | None) -> str | None:
        from trading.feeds import market_data_setting

        if value is None or not value.strip():
            return None
        kind, path = market_data_setting(value)
        if kind == "csv" and not Path(path or "").is_file():
            raise ValueError(f"{path!r} is not a CSV file")
        return value.strip()

    @field_validator("market_symbols", mode="before")
    @classmethod
    def _symbols(cls, value: object) -> object:
        if isinstance(value, str):
            symbols = [s.strip().upper() for s in value.split(",") if s.strip()]
            if not symbols:
                raise ValueError("name at least one symbol, e.g. BTCUSDT,ETHUSDT")
            return symbols
        return value

    @field_validator("paper_feed")
    @classmethod
    def _feed(cls, value: str) -> str:
        value = value.strip()
        if value != "random" and not Path(value).is_file():
            raise ValueError(f"{value!r} is neither 'random' nor a CSV file")
        return value

    @field_validator("backup_schedule", "maintain_schedule")
    @classmethod
    def _cron(cls, value: str) -> str:
        from croniter import croniter

        value = value.strip()
        if value and not croniter.is_valid(value):
            raise ValueError(f"{value!r} is not a cron expression (or empty for off)")
        return value

    def sqlite_path(self) -> Path | None:
        """The database file when the URL points at SQLite, else None."""
        url = make_url(self.database_url)
        if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
            return None
        return Path(url.database)

    def ensure_database_dir(self) -> None:
        path = self.sqlite_path()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)


class SettingsError(Exception):
    """Start-up stopped because a setting is invalid; the message is one readable line."""


def load_settings(**overrides: object) -> Settings:
    """Build Settings, turning pydantic's multi-line report into one clear line."""
    from pydantic import ValidationError

    try:
        return Settings(**overrides)  # type: ignore[arg-type]  # pydantic validates the overrides
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            name = str(err["loc"][0]) if err["loc"] else "?"
            env = "TELEGRAM_BOT_TOKEN" if name == "telegram_bot_token" else f"TRADEBOOK_{name}"
            msg = err["msg"].removeprefix("Value error, ")
            problems.append(f"{env.upper()}: {msg}")
        raise SettingsError("invalid setting " + "; ".join(problems)) from None
