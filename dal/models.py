"""Public inputs of the DAL, validated at the edge.

Constructing any of these raises ``InvalidInput`` (one error type, one readable message) on
bad input, before anything touches the database. Amounts are exact: Decimal, int or decimal
text; a float is refused; at most 18 fractional and 20 integer digits.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from dal.configs import (
    ALERT_CONFIGS,
    MAX_CONFIG_BYTES,
    ExactDecimal,
    Name,
    PolicyConfig,
    PositiveDecimal,
    ScheduleConfig,
    ScreenerConfig,
    StrictConfig,
    validate_cron,
)
from dal.errors import InvalidInput
from dal.schema import ASSET_TYPES, CASH_KINDS
from dal.types import canonical_json

M = TypeVar("M", bound=BaseModel)


def humanize(exc: ValidationError, title: str) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "input"
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {msg}")
    return f"invalid {title}: " + "; ".join(parts)


def parse(model: type[M], data: Any) -> M:
    """``data`` (a model instance or a mapping) as ``model``, or InvalidInput."""
    if isinstance(data, model):
        return data
    if isinstance(data, BaseModel):
        data = data.model_dump()
    if not isinstance(data, dict):
        raise InvalidInput(
            f"invalid {model.__name__}: expected a mapping, got {type(data).__name__}"
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidInput(humanize(exc, model.__name__)) from None


def parse_config(model: type[StrictConfig], data: Any) -> StrictConfig:
    if isinstance(data, model):
        return data
    try:
        size = len(canonical_json(data).encode())
    except TypeError:
        raise InvalidInput(f"{model.__name__} must be a JSON object") from None
    if size > MAX_CONFIG_BYTES:
        raise InvalidInput(f"config is {size} bytes; the limit is {MAX_CONFIG_BYTES}")
    return parse(model, data)  # type: ignore[return-value]


class Input(BaseModel):
    """Base of every input: unknown fields refused; constructing it validates it."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise InvalidInput(humanize(exc, type(self).__name__)) from None


def _aware(value: dt.datetime) -> dt.datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("give a time zone (e.g. 2024-05-01T12:00:00Z); naive times are refused")
    return value.astimezone(dt.UTC)


AwareTime = Annotated[dt.datetime, AfterValidator(_aware)]
Currency = Annotated[str, Field(min_length=2, max_length=16, pattern=r"^[A-Z0-9]+$")]
Side = Literal["BUY", "SELL"]
OrderType = Literal["MARKET", "LIMIT", "STOP", "STOP_LIMIT", "TRAILING"]
TimeInForce = Literal["GTC", "IOC", "FOK", "DAY"]
ExternalId = Annotated[str, Field(min_length=1, max_length=64)]
Meta = Annotated[dict[str, Any], AfterValidator(lambda v: _meta_size(v))]


def _meta_size(value: dict[str, Any]) -> dict[str, Any]:
    size = len(canonical_json(value).encode())
    if size > MAX_CONFIG_BYTES:
        raise ValueError(f"is {size} bytes; the limit is {MAX_CONFIG_BYTES}")
    return value


def _upper(value: Any) -> Any:
    return value.upper() if isinstance(value, str) else value


Upper = BeforeValidator(_upper)


class InstrumentRef(Input):
    """An instrument by id, or by symbol (and exchange when the symbol is ambiguous)."""

    instrument_id: int | None = None
    symbol: Annotated[str | None, Upper] = None
    exchange: Annotated[str | None, Upper] = None


class NewInstrument(Input):
    symbol: Annotated[str, Upper, Field(min_length=1, max_length=32, pattern=r"^[A-Z0-9._:/-]+$")]
    exchange: Annotated[str | None, Upper, Field(max_length=32)] = None
    asset_type: Annotated[Literal[ASSET_TYPES], Upper]  # type: ignore[valid-type]
    currency: Annotated[Currency, Upper]
    tick_size: PositiveDecimal | None = None
    lot_size: PositiveDecimal | None = None


class NewAccount(Input):
    broker: Annotated[str, Upper, Field(min_length=1, max_length=32)]
    name: Name
    account_uid: Annotated[str | None, Field(max_length=128)] = None
    base_currency: Annotated[Currency, Upper] = "USD"


class NewPortfolio(Input):
    name: Name
    account_id: int
    description: Annotated[str | None, Field(max_length=500)] = None
    is_default: bool = False


class NewStrategy(Input):
    name: Name
    version: Annotated[str, Field(pattern=r"^\d+(\.\d+){0,3}$", max_length=32)] = "1.0"
    params: Meta = Field(default_factory=dict)


class NewOrder(Input):
    portfolio_id: int
    instrument_id: int | None = None
    symbol: Annotated[str | None, Upper] = None
    exchange: Annotated[str | None, Upper] = None
    strategy_id: int | None = None
    side: Annotated[Side, Upper]
    type: Annotated[OrderType, Upper] = "MARKET"
    time_in_force: Annotated[TimeInForce | None, Upper] = None
    quantity: PositiveDecimal
    price: PositiveDecimal | None = None
    stop_price: PositiveDecimal | None = None
    client_order_id: ExternalId | None = None
    broker_order_id: ExternalId | None = None
    status: Literal["NEW"] = "NEW"
    placed_at: AwareTime | None = None
    meta: Meta = Field(default_factory=dict)

    @model_validator(mode="after")
    def _prices_match_type(self) -> NewOrder:
        if self.instrument_id is None and self.symbol is None:
            raise ValueError("give instrument_id or symbol")
        needs_price = self.type in ("LIMIT", "STOP_LIMIT")
        needs_stop = self.type in ("STOP", "STOP_LIMIT", "TRAILING")
        if needs_price and self.price is None:
            raise ValueError(f"a {self.type} order needs a price")
        if not needs_price and self.price is not None:
            raise ValueError(f"a {self.type} order takes no limit price")
        if needs_stop and self.stop_price is None:
            raise ValueError(f"a {self.type} order needs a stop price")
        if self.type == "MARKET" and self.stop_price is not None:
            raise ValueError("a MARKET order takes no stop price")
        return self


class Fill(Input):
    """One execution. ``broker_trade_id`` makes ingestion idempotent."""

    portfolio_id: int
    instrument_id: int | None = None
    symbol: Annotated[str | None, Upper] = None
    exchange: Annotated[str | None, Upper] = None
    order_id: int | None = None
    strategy_id: int | None = None
    side: Annotated[Side, Upper]
    quantity: PositiveDecimal
    price: PositiveDecimal
    fee: ExactDecimal = Decimal(0)
    fee_currency: Annotated[Currency | None, Upper] = None
    exec_time: AwareTime
    broker_trade_id: ExternalId | None = None
    meta: Meta = Field(default_factory=dict)

    @model_validator(mode="after")
    def _instrument_given(self) -> Fill:
        if self.instrument_id is None and self.symbol is None:
            raise ValueError("give instrument_id or symbol")
        if self.fee and self.fee_currency is None:
            raise ValueError("a fee needs its currency (fee_currency)")
        return self


class NewCashMovement(Input):
    portfolio_id: int
    kind: Annotated[Literal[CASH_KINDS], Upper] = "DEPOSIT"  # type: ignore[valid-type]
    amount: ExactDecimal
    currency: Annotated[Currency, Upper]
    note: Annotated[str | None, Field(max_length=500)] = None


class NewPolicy(Input):
    name: Name
    scope_type: Annotated[Literal["USER", "PORTFOLIO", "STRATEGY"], Upper]
    scope_id: int | None = None  # defaults to the acting user for USER scope
    config: PolicyConfig


class NewAlert(Input):
    name: Name
    type: Annotated[Literal["PRICE", "INDICATOR", "POSITION", "RISK", "SCHEDULE"], Upper]
    config: dict[str, Any]
    portfolio_id: int | None = None

    @model_validator(mode="after")
    def _typed_config(self) -> NewAlert:
        parse_config(ALERT_CONFIGS[self.type], self.config)
        return self

    def typed_config(self) -> StrictConfig:
        return parse_config(ALERT_CONFIGS[self.type], self.config)


class NewSchedule(Input):
    name: Name
    cron: str
    config: ScheduleConfig

    @model_validator(mode="after")
    def _cron_ok(self) -> NewSchedule:
        object.__setattr__(self, "cron", validate_cron(self.cron))
        return self


class NewScreener(Input):
    name: Name
    config: ScreenerConfig
