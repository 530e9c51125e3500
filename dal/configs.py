"""Typed JSON configs: one pydantic schema per policy, alert type, schedule and screener.

Unknown keys are refused; amounts are exact Decimals given as text or integers (never floats).
Each schema carries an example (``model_config["json_schema_extra"]``) that
docs/risk-rules.md shows.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Annotated, Any, Literal

from croniter import CroniterBadDateError, croniter
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from dal.decimals import AmountError, check_amount
from dal.periods import PeriodError, parse_period
from dal.types import canonical_json

MAX_NAME = 64
MAX_CONFIG_BYTES = 16 * 1024


def _exact(value: Any) -> Decimal:
    try:
        return check_amount(value)
    except AmountError as exc:
        raise ValueError(str(exc)) from None


def _positive(value: Decimal) -> Decimal:
    if value <= 0:
        raise ValueError(f"must be positive, got {value}")
    return value


def _fraction(value: Decimal) -> Decimal:
    if not 0 < value <= 1:
        raise ValueError(f"must be a fraction of equity in (0, 1], got {value}")
    return value


ExactDecimal = Annotated[Decimal, BeforeValidator(_exact)]
PositiveDecimal = Annotated[Decimal, BeforeValidator(_exact), AfterValidator(_positive)]
Fraction = Annotated[Decimal, BeforeValidator(_exact), AfterValidator(_fraction)]
Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME)]
Symbol = Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9._:/-]+$")]


class StrictConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)

    @model_validator(mode="after")
    def _size_limit(self) -> StrictConfig:
        size = len(canonical_json(self.model_dump(mode="json")).encode())
        if size > MAX_CONFIG_BYTES:
            raise ValueError(f"config is {size} bytes; the limit is {MAX_CONFIG_BYTES}")
        return self


# --- risk policies -----------------------------------------------------------------------------
class PolicyConfig(StrictConfig):
    """Limits of one risk policy; any subset. Fractions are of equity (0.01 = 1 %)."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={
            "example": {"max_risk_per_trade": "0.01", "max_daily_loss": "0.03", "mode": "block"}
        },
    )

    max_risk_per_trade: Fraction | None = None
    max_exposure_per_asset: Fraction | None = None
    max_daily_loss: Fraction | None = None
    max_leverage: PositiveDecimal | None = None
    max_order_notional: PositiveDecimal | None = None
    # What a breach of this policy does to an order: refuse it, or let it through with a warning.
    mode: Literal["block", "warn"] = "block"

    @model_validator(mode="after")
    def _at_least_one_limit(self) -> PolicyConfig:
        if not any(getattr(self, key) is not None for key in POLICY_LIMITS):
            raise ValueError(f"give at least one limit: {', '.join(POLICY_LIMITS)}")
        return self


POLICY_LIMITS = (
    "max_risk_per_trade",
    "max_exposure_per_asset",
    "max_daily_loss",
    "max_leverage",
    "max_order_notional",
)


# --- alerts ------------------------------------------------------------------------------------
class PriceAlert(StrictConfig):
    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={"example": {"symbol": "BTCUSDT", "op": "above", "price": "70000"}},
    )
    symbol: Symbol
    op: Literal["above", "below"]
    price: PositiveDecimal


class IndicatorAlert(StrictConfig):
    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={
            "example": {"symbol": "BTCUSDT", "indicator": "sma_cross", "fast": 10, "slow": 30}
        },
    )
    symbol: Symbol
    indicator: Literal["sma_cross"]
    fast: int = Field(strict=True, ge=1, le=500)
    slow: int = Field(strict=True, ge=2, le=1000)

    @model_validator(mode="after")
    def _fast_below_slow(self) -> IndicatorAlert:
        if self.fast >= self.slow:
            raise ValueError("fast period must be shorter than slow period")
        return self


class PositionAlert(StrictConfig):
    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={
            "example": {
                "symbol": "BTCUSDT",
                "metric": "unrealized_pnl",
                "op": "below",
                "value": "-500",
            }
        },
    )
    symbol: Symbol
    metric: Literal["quantity", "unrealized_pnl"]
    op: Literal["above", "below"]
    value: ExactDecimal


class RiskAlert(StrictConfig):
    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={"example": {"metric": "daily_loss", "op": "above", "value": "0.02"}},
    )
    metric: Literal["daily_loss", "leverage", "exposure"]
    op: Literal["above", "below"]
    value: ExactDecimal


class ScheduleAlert(StrictConfig):
    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={"example": {"cron": "0 9 * * 1-5", "message": "market open"}},
    )
    cron: str
    message: str = Field(min_length=1, max_length=500)

    @field_validator("cron")
    @classmethod
    def _cron_ok(cls, value: str) -> str:
        return validate_cron(value)


ALERT_CONFIGS: dict[str, type[StrictConfig]] = {
    "PRICE": PriceAlert,
    "INDICATOR": IndicatorAlert,
    "POSITION": PositionAlert,
    "RISK": RiskAlert,
    "SCHEDULE": ScheduleAlert,
}


# --- schedules and screeners -------------------------------------------------------------------
MAX_CRON = 128


def validate_cron(expression: str) -> str:
    expression = " ".join(expression.split())
    if len(expression) > MAX_CRON:
        raise ValueError(f"a cron expression is at most {MAX_CRON} characters")
    if len(expression.split()) != 5 or not croniter.is_valid(expression):
        raise ValueError(
            f"{expression!r} is not a 5-field cron expression (minute hour day month weekday), "
            "e.g. '0 18 * * *'"
        )
    try:  # valid, yet some never fire (the 31st of February)
        croniter(expression, dt.datetime.now(dt.UTC), max_years_between_matches=5).get_next()
    except CroniterBadDateError:
        raise ValueError(f"{expression!r} never fires (no such date)") from None
    return expression


def next_run_after(cron: str, after: dt.datetime) -> dt.datetime:
    """The next time ``cron`` fires strictly after ``after``; cron is read in UTC (as specified)."""
    return croniter(cron, after.astimezone(dt.UTC)).get_next(dt.datetime)


class ScheduleConfig(StrictConfig):
    """What a schedule does when it fires: send a report to its owner."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={"example": {"report": "pnl", "period": "today"}},
    )
    report: Literal[
        "pnl",
        "positions",
        "orders",
        "risk",
        "balance",
        "status",
        "profit",
        "performance",
        "daily",
        "weekly",
        "monthly",
    ]
    period: str | None = Field(default=None, max_length=32)
    portfolio: Name | None = None

    @field_validator("period")
    @classmethod
    def _known_period(cls, value: str | None) -> str | None:
        """Checked when the schedule is stored, not when it first runs."""
        if value is not None:
            try:
                parse_period(value, "UTC", dt.datetime.now(dt.UTC))
            except PeriodError as exc:
                raise ValueError(str(exc)) from None
        return value


class ScreenerConfig(StrictConfig):
    """Filters over the instruments table and the feed's latest marks."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={
            "example": {"asset_type": "CRYPTO", "min_price": "1", "max_price": "100"}
        },
    )
    asset_type: Literal["CRYPTO", "EQUITY", "FUTURE", "FOREX", "ETF"] | None = None
    exchange: str | None = Field(default=None, max_length=32)
    symbols: list[Symbol] | None = Field(default=None, max_length=200)
    min_price: PositiveDecimal | None = None
    max_price: PositiveDecimal | None = None
    min_change_pct: ExactDecimal | None = None
    cron: str | None = None

    @field_validator("cron")
    @classmethod
    def _cron_ok(cls, value: str | None) -> str | None:
        return None if value is None else validate_cron(value)

    @model_validator(mode="after")
    def _price_range(self) -> ScreenerConfig:
        low, high = self.min_price, self.max_price
        if low is not None and high is not None and low > high:
            raise ValueError("min_price is above max_price: nothing could match")
        return self


# --- in words: rendered from the stored config (a label kept beside it would go stale) ---
def alert_text(kind: str, config: dict[str, Any]) -> str:
    """'BTCUSDT above 70000', 'ETHUSDT unrealized_pnl below -50', 'risk leverage above 3',
    'BTCUSDT SMA 5/20 cross'."""
    c = config
    if kind == "PRICE":
        return f"{c.get('symbol')} {c.get('op')} {c.get('price')}"
    if kind == "POSITION":
        return f"{c.get('symbol')} {c.get('metric')} {c.get('op')} {c.get('value')}"
    if kind == "RISK":
        return f"risk {c.get('metric')} {c.get('op')} {c.get('value')}"
    if kind == "INDICATOR":
        return f"{c.get('symbol')} SMA {c.get('fast')}/{c.get('slow')} cross"
    return key_values_text(c)


def schedule_text(config: dict[str, Any]) -> str:
    """'report pnl today', 'report positions'."""
    period = config.get("period")
    return f"report {config.get('report')}" + (f" {period}" if period else "")


def key_values_text(config: dict[str, Any]) -> str:
    """'key=value, …' in key order (screeners, policies); a list as it is written in the
    chat (symbols=BTCUSDT,ETHUSDT)."""
    return ", ".join(
        f"{k}={','.join(map(str, v)) if isinstance(v, list) else v}"
        for k, v in sorted(config.items())
    )
