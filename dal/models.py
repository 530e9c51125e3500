"""Public inputs of the DAL, validated at the edge.

Constructing any of these raises ``InvalidInput`` (one error type, one readable message) on
bad input, before anything touches the database. Amounts are exact: Decimal, int or decimal
text; a float is refused; at most 18 fractional and 20 integer digits.
"""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal
from typing import Annotated, Any, Literal, TypeVar, overload

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
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
from dal.vocabulary import SideName

M = TypeVar("M", bound=BaseModel)


# pydantic's wording where it names internals (regexes, "inputs"): the user's instead.
_PLAIN = {
    "string_pattern_mismatch": "has characters that are not allowed here",
    "extra_forbidden": "is unknown here",
    "missing": "is required",
}


def _title(model_name: str) -> str:
    """NewCashMovement → 'cash movement', PolicyConfig → 'policy config'."""
    words = re.findall(r"[A-Z][a-z0-9]*", model_name.removeprefix("New"))
    return " ".join(w.lower() for w in words) or model_name


def humanize(exc: ValidationError, title: str) -> str:
    parts = []
    for err in exc.errors():
        msg = _PLAIN.get(err["type"]) or err["msg"].removeprefix("Value error, ")
        if msg.startswith("invalid "):  # already a full message from a nested config
            msg = msg.split(": ", 1)[1]
        where = ".".join(str(p) for p in err["loc"])
        parts.append(f"{where}: {msg}" if where else msg)
    return f"invalid {_title(title)}: " + "; ".join(parts)


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
    if not isinstance(data, dict):
        raise InvalidInput(f"{model.__name__} must be a JSON object")
    try:
        json_size(data)
    except ValueError as exc:
        raise InvalidInput(
            f"{model.__name__} must be a JSON object of plain values: it {exc}"
        ) from None
    return parse(model, data)


def json_size(value: Any, limit: int = MAX_CONFIG_BYTES) -> int:
    """The size of ``value`` as canonical JSON; ValueError if it is not plain, finite JSON
    (NaN, dates, sets, NUL characters, absurd nesting) or larger than ``limit`` bytes."""
    try:
        text = canonical_json_strict(value)
    except RecursionError:
        raise ValueError("is nested too deeply") from None
    except (TypeError, ValueError) as exc:
        raise ValueError(f"is not plain JSON ({exc})") from None
    if "\\u0000" in text:
        raise ValueError("must not contain NUL characters")
    size = len(text.encode())
    if size > limit:
        raise ValueError(f"is {size} bytes; the limit is {limit}")
    return size


def canonical_json_strict(value: Any) -> str:
    import json

    return json.dumps(
        value,
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
        default=_json_leaf,
    )


def _json_leaf(value: Any) -> Any:
    if isinstance(value, Decimal) and value.is_finite():
        return canonical_json(value).strip('"')
    raise TypeError(f"{type(value).__name__} is not a JSON value")


MAX_ID = 2**63 - 1
RowId = Annotated[int, Field(strict=True, ge=1, le=MAX_ID)]


def valid_id(value: object) -> bool:
    """Whether ``value`` can be a row id at all (so lookups can answer NotFound early)."""
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_ID


@overload
def aware_arg(value: dt.datetime, name: str) -> dt.datetime: ...
@overload
def aware_arg(value: dt.datetime | None, name: str) -> dt.datetime | None: ...
def aware_arg(value: dt.datetime | None, name: str) -> dt.datetime | None:
    """A datetime argument of a service call: aware (converted to UTC) or InvalidInput."""
    if value is None:
        return None
    if not isinstance(value, dt.datetime):
        raise InvalidInput(f"{name} must be a datetime")
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidInput(f"{name} has no time zone; give an aware datetime")
    return value.astimezone(dt.UTC)


def check_marks(marks: Any) -> dict[int, Decimal]:
    """Marks (instrument id → price) as exact positive Decimals, or InvalidInput."""
    if marks is None:
        return {}
    if not isinstance(marks, dict):
        raise InvalidInput("marks must map instrument ids to prices")
    out = {}
    for key, price in marks.items():
        if not valid_id(key):
            raise InvalidInput(f"mark key {key!r} is not an instrument id")
        if not isinstance(price, Decimal) or not price.is_finite() or price <= 0:
            raise InvalidInput(
                f"mark of instrument #{key} must be a positive Decimal, not {price!r}"
            )
        out[key] = price
    return out


def check_text(value: Any, name: str, limit: int = 500) -> str | None:
    """A free-text argument (reason, note, description): text, no NUL, at most ``limit``."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInput(f"{name} must be text")
    if "\x00" in value:
        raise InvalidInput(f"{name} must not contain NUL characters")
    if len(value) > limit:
        raise InvalidInput(f"{name} is {len(value)} characters; the limit is {limit}")
    return value


def check_json_arg(value: Any, name: str) -> Any:
    try:
        json_size(value)
    except ValueError as exc:
        raise InvalidInput(f"{name} {exc}") from None
    return value


def _no_nul(value: Any) -> None:
    # Runs on every input (each fill of a batch): strings are checked inline, only
    # containers recurse.
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError("text must not contain NUL characters")
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(k, str) and "\x00" in k:
                raise ValueError("text must not contain NUL characters")
            if isinstance(v, str):
                if "\x00" in v:
                    raise ValueError("text must not contain NUL characters")
            elif isinstance(v, dict | list | tuple):
                _no_nul(v)
    elif isinstance(value, list | tuple):
        for v in value:
            _no_nul(v)


class Input(BaseModel):
    """Base of every input: unknown fields refused; constructing it validates it."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)

    @model_validator(mode="before")
    @classmethod
    def _refuse_nul(cls, data: Any) -> Any:
        try:
            _no_nul(data)
        except RecursionError:
            raise ValueError("input is nested too deeply") from None
        return data

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise InvalidInput(humanize(exc, type(self).__name__)) from None


def _aware(value: dt.datetime) -> dt.datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("give a time zone (e.g. 2024-05-01T12:00:00Z); naive times are refused")
    try:
        return value.astimezone(dt.UTC)
    except OverflowError:
        raise ValueError("is out of the supported date range") from None


AwareTime = Annotated[dt.datetime, AfterValidator(_aware)]
Currency = Annotated[str, Field(min_length=2, max_length=16, pattern=r"^[A-Z0-9]+$")]
OrderType = Literal["MARKET", "LIMIT", "STOP", "STOP_LIMIT", "TRAILING"]
TimeInForce = Literal["GTC", "IOC", "FOK", "DAY"]
ExternalId = Annotated[str, Field(min_length=1, max_length=64)]
Meta = Annotated[dict[str, Any], AfterValidator(lambda v: _meta_size(v))]


def _meta_size(value: dict[str, Any]) -> dict[str, Any]:
    json_size(value)
    return value


def _upper(value: Any) -> Any:
    return value.upper() if isinstance(value, str) else value


Upper = BeforeValidator(_upper)
AssetText = Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[A-Z0-9._-]+$")]
SymbolText = Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[A-Z0-9._:/-]+$")]
ExchangeText = Annotated[str, Field(min_length=1, max_length=32)]


class InstrumentRef(Input):
    """An instrument by id, or by symbol (and exchange when the symbol is ambiguous)."""

    instrument_id: RowId | None = None
    symbol: Annotated[SymbolText | None, Upper] = None
    exchange: Annotated[ExchangeText | None, Upper] = None


class NewInstrument(Input):
    symbol: Annotated[SymbolText, Upper]
    exchange: Annotated[ExchangeText | None, Upper] = None
    asset_type: Annotated[Literal[ASSET_TYPES], Upper]  # type: ignore[valid-type]  # Literal over the schema tuple; pydantic reads it at runtime
    currency: Annotated[Currency, Upper]
    base_asset: Annotated[AssetText | None, Upper] = None  # derived from the symbol if absent
    tick_size: PositiveDecimal | None = None
    lot_size: PositiveDecimal | None = None
    min_notional: PositiveDecimal | None = None

    @model_validator(mode="before")
    @classmethod
    def _base_asset(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("base_asset") is None:
            symbol, currency = data.get("symbol"), data.get("currency")
            if isinstance(symbol, str) and isinstance(currency, str):
                return {**data, "base_asset": base_asset_of(symbol.upper(), currency.upper())}
        return data


def base_asset_of(symbol: str, currency: str) -> str:
    """What one unit of ``symbol`` is when nobody said: the symbol less its quote currency
    (BTCUSDT, BTC/USDT and BTC-USDT → BTC), else the symbol itself (AAPL quoted in USD)."""
    for separator in ("/", "-", ":"):
        if separator in symbol:
            return symbol.split(separator, 1)[0]
    if symbol.endswith(currency) and len(symbol) > len(currency):
        return symbol[: -len(currency)]
    return symbol


class NewAccount(Input):
    broker: Annotated[ExchangeText, Upper]
    name: Name
    account_uid: Annotated[str | None, Field(max_length=128)] = None
    base_currency: Annotated[Currency, Upper] = "USD"
    # A margin account's leverage limit; absent: a spot account.
    margin_leverage: PositiveDecimal | None = None


class NewPortfolio(Input):
    name: Name
    account_id: RowId
    description: Annotated[str | None, Field(max_length=500)] = None
    is_default: bool = False


class NewStrategy(Input):
    name: Name
    version: Annotated[str, Field(pattern=r"^\d+(\.\d+){0,3}$", max_length=32)] = "1.0"
    params: Meta = Field(default_factory=dict)


class NewOrder(Input):
    portfolio_id: RowId
    instrument_id: RowId | None = None
    symbol: Annotated[SymbolText | None, Upper] = None
    exchange: Annotated[ExchangeText | None, Upper] = None
    strategy_id: RowId | None = None
    side: Annotated[SideName, Upper]
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


# A trade's time lies between this and now plus a little clock skew (a broker's clock may run
# slightly ahead of ours).
EARLIEST_TRADE_TIME = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
CLOCK_SKEW = dt.timedelta(minutes=5)


class Fill(Input):
    """One execution. ``broker_trade_id`` makes ingestion idempotent."""

    portfolio_id: RowId
    instrument_id: RowId | None = None
    symbol: Annotated[SymbolText | None, Upper] = None
    exchange: Annotated[ExchangeText | None, Upper] = None
    order_id: RowId | None = None
    # Or the order by the client order id it was placed with (in the fill's portfolio).
    client_order_id: ExternalId | None = None
    strategy_id: RowId | None = None
    side: Annotated[SideName, Upper]
    quantity: PositiveDecimal
    price: PositiveDecimal
    fee: ExactDecimal = Decimal(0)
    fee_currency: Annotated[Currency | None, Upper] = None
    exec_time: AwareTime
    broker_trade_id: ExternalId | None = None
    # The broker's id of the fill's order: recorded on the order when it has none yet.
    broker_order_id: ExternalId | None = None
    meta: Meta = Field(default_factory=dict)

    @field_validator("exec_time")
    @classmethod
    def _plausible_time(cls, value: dt.datetime) -> dt.datetime:
        """A fill dated in the far past or the future would make every later fill 'late'."""
        latest = dt.datetime.now(dt.UTC) + CLOCK_SKEW
        if not EARLIEST_TRADE_TIME <= value <= latest:
            raise ValueError(
                f"exec_time {value.isoformat()} is outside {EARLIEST_TRADE_TIME.date()} .. now "
                f"(+{int(CLOCK_SKEW.total_seconds() // 60)} minutes of clock skew)"
            )
        return value

    @model_validator(mode="after")
    def _instrument_given(self) -> Fill:
        if self.instrument_id is None and self.symbol is None:
            raise ValueError("give instrument_id or symbol")
        if self.fee and self.fee_currency is None:
            raise ValueError("a fee needs its currency (fee_currency)")
        if self.order_id is not None and self.client_order_id is not None:
            raise ValueError("give order_id or client_order_id, not both")
        return self


class NewCashMovement(Input):
    portfolio_id: RowId
    kind: Annotated[Literal[CASH_KINDS], Upper] = "DEPOSIT"  # type: ignore[valid-type]  # Literal over the schema tuple; pydantic reads it at runtime
    amount: ExactDecimal
    currency: Annotated[Currency, Upper]
    note: Annotated[str | None, Field(max_length=500)] = None


class NewPolicy(Input):
    name: Name
    scope_type: Annotated[Literal["USER", "PORTFOLIO", "STRATEGY"], Upper]
    scope_id: RowId | None = None  # defaults to the acting user for USER scope
    config: PolicyConfig


class NewAlert(Input):
    name: Name
    type: Annotated[Literal["PRICE", "INDICATOR", "POSITION", "RISK", "SCHEDULE"], Upper]
    config: dict[str, Any]
    portfolio_id: RowId | None = None

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
