"""Portable column types: exact decimals, UTC timestamps, JSON, primary keys.

Each type stores one canonical form per engine so that both engines hold the same values:

* ``Money``: ``decimal.Decimal``; canonical decimal TEXT on SQLite, ``NUMERIC(38, 18)`` on
  PostgreSQL. Values that would lose digits are refused, never rounded.
* ``UTCDateTime``: aware ``datetime``; fixed-width ISO-8601 TEXT on SQLite (string order is
  time order), ``TIMESTAMPTZ`` on PostgreSQL.
* ``JSONDoc``: TEXT on SQLite, JSONB on PostgreSQL; canonical serialization on both.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import uuid
from typing import Any

import sqlalchemy as sa
import sqlalchemy.ext.compiler
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect

# 18 fractional + 20 integer digits = NUMERIC(38, 18). Every computation on amounts uses a
# context with room to spare, so no intermediate result is rounded by accident.
SCALE = 18
INTEGER_DIGITS = 20
DECIMAL_CONTEXT = decimal.Context(prec=80, rounding=decimal.ROUND_HALF_EVEN, Emax=999, Emin=-999)
_QUANTUM = decimal.Decimal(1).scaleb(-SCALE)


class AmountError(ValueError):
    """A value cannot be stored exactly as a money/quantity amount."""


def check_amount(value: object) -> decimal.Decimal:
    """Return ``value`` as a Decimal that fits NUMERIC(38, 18) exactly, or raise AmountError.

    Floats are refused outright: they are where exactness is lost.
    """
    if isinstance(value, bool | float):
        raise AmountError(f"{value!r} is a {type(value).__name__}; give amounts as Decimal or text")
    if isinstance(value, int):
        value = decimal.Decimal(value)
    elif isinstance(value, str):
        try:
            value = decimal.Decimal(value.strip())
        except decimal.InvalidOperation:
            raise AmountError(f"{value!r} is not a decimal number") from None
    if not isinstance(value, decimal.Decimal):
        raise AmountError(f"{value!r} is not a decimal amount")
    if not value.is_finite():
        raise AmountError(f"{value} is not a finite number")
    # Trailing zeros do not count against the limits: 1.500 has one fractional digit.
    value = value.normalize(DECIMAL_CONTEXT) if value else decimal.Decimal(0)
    _sign, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)
    if exponent < -SCALE:
        raise AmountError(f"{value} has more than {SCALE} fractional digits")
    integer_digits = len(digits) + exponent
    if integer_digits > INTEGER_DIGITS:
        raise AmountError(f"{value} has more than {INTEGER_DIGITS} integer digits")
    return decimal.Decimal(canonical_decimal(value)) if exponent > 0 else value


def amount_text(value: object) -> str:
    """``canonical_decimal(check_amount(value))`` in one pass for the usual input, a Decimal
    that fits (every amount written on SQLite goes through here); anything else takes
    check_amount's way, which converts it or raises the precise error."""
    if (
        type(value) is decimal.Decimal
        and value.is_finite()
        and -SCALE - 1 <= value.adjusted() <= INTEGER_DIGITS
    ):
        if not value:
            return "0"
        text = format(value.normalize(DECIMAL_CONTEXT), "f")
        point = text.find(".")
        whole = text if point < 0 else text[:point]
        if (point < 0 or len(text) - point - 1 <= SCALE) and len(
            whole.lstrip("-0")
        ) <= INTEGER_DIGITS:
            return text
    return canonical_decimal(check_amount(value))


def canonical_decimal(value: decimal.Decimal) -> str:
    """The one text form of an amount: plain notation, no trailing zeros, no '-0'."""
    if not value:
        return "0"
    return format(value.normalize(DECIMAL_CONTEXT), "f")


def quantize18(value: decimal.Decimal) -> decimal.Decimal:
    """Round half-even to 18 fractional digits (used where the rules say so, never silently)."""
    return value.quantize(_QUANTUM, context=DECIMAL_CONTEXT)


class Money(sa.types.TypeDecorator[decimal.Decimal]):
    """Exact decimal amount (money, price, quantity, fee, PnL)."""

    impl = sa.Numeric(38, SCALE)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(sa.Text())
        return dialect.type_descriptor(sa.Numeric(38, SCALE, asdecimal=True))

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        if dialect.name == "sqlite":
            return amount_text(value)
        return check_amount(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> decimal.Decimal | None:
        if value is None:
            return None
        if isinstance(value, float):  # only reachable through hand-written SQL on SQLite
            raise AmountError(f"float {value!r} found in a decimal column")
        if isinstance(value, str):  # SQLite: already canonical text
            return decimal.Decimal(value)
        # PostgreSQL returns NUMERIC padded to 18 places; hand back the canonical value.
        return decimal.Decimal(canonical_decimal(decimal.Decimal(value)))

    def process_literal_param(self, value: Any, dialect: Dialect) -> str:
        text = canonical_decimal(check_amount(value))
        return f"'{text}'" if dialect.name == "sqlite" else text

    @property
    def python_type(self) -> type:
        return decimal.Decimal


NOTIONAL_SCALE = 2 * SCALE  # a quantity times a price, exactly
NOTIONAL_DIGITS = 2 * (INTEGER_DIGITS + SCALE)
# Enough digits for a sum of many products of two amounts, each at most 76 digits.
NOTIONAL_CONTEXT = decimal.Context(prec=120, rounding=decimal.ROUND_HALF_EVEN, Emax=999, Emin=-999)


def check_notional(value: object) -> decimal.Decimal:
    """A sum of quantity × price products, exact: at most 36 fractional digits."""
    if not isinstance(value, decimal.Decimal | int) or isinstance(value, bool):
        raise AmountError(f"a notional must be a Decimal, not {type(value).__name__}")
    value = decimal.Decimal(value)
    if not value.is_finite():
        raise AmountError(f"a notional must be finite, not {value}")
    exponent = value.as_tuple().exponent
    assert isinstance(exponent, int)  # finite
    if exponent < -NOTIONAL_SCALE and value != value.quantize(
        decimal.Decimal(1).scaleb(-NOTIONAL_SCALE), context=NOTIONAL_CONTEXT
    ):
        raise AmountError(f"notional {value} has more than {NOTIONAL_SCALE} fractional digits")
    if value and value.adjusted() >= NOTIONAL_DIGITS - NOTIONAL_SCALE:
        raise AmountError(f"notional {value} is too large")
    return value


class Notional(sa.types.TypeDecorator[decimal.Decimal]):
    """An exact sum of quantity × price products (36 fractional digits): an order's filled
    notional, from which its average fill price is derived."""

    impl = sa.Numeric(NOTIONAL_DIGITS, NOTIONAL_SCALE)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(sa.Text())
        return dialect.type_descriptor(sa.Numeric(NOTIONAL_DIGITS, NOTIONAL_SCALE, asdecimal=True))

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        value = check_notional(value)
        return notional_text(value) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> decimal.Decimal | None:
        if value is None:
            return None
        if isinstance(value, float):
            raise AmountError(f"float {value!r} found in a decimal column")
        return decimal.Decimal(notional_text(decimal.Decimal(value)))

    @property
    def python_type(self) -> type:
        return decimal.Decimal


def notional_text(value: decimal.Decimal) -> str:
    if not value:
        return "0"
    return format(value.normalize(NOTIONAL_CONTEXT), "f")


def average_price(notional: decimal.Decimal, quantity: decimal.Decimal) -> decimal.Decimal:
    """``notional / quantity`` rounded once, half-even, to 18 fractional digits (exact
    rational arithmetic: no intermediate rounding)."""
    from fractions import Fraction

    ratio = Fraction(notional) / Fraction(quantity) * 10**SCALE
    whole, rest = divmod(ratio.numerator, ratio.denominator)
    twice = 2 * rest
    if twice > ratio.denominator or (twice == ratio.denominator and whole % 2):
        whole += 1
    return decimal.Decimal(canonical_decimal(decimal.Decimal(whole).scaleb(-SCALE)))


def trimmed_on_postgresql(column: sa.ColumnElement[Any], dialect: str) -> sa.ColumnElement[Any]:
    """A Money column for a read of many rows: on PostgreSQL the server trims the trailing
    zeros of the NUMERIC (``trim_scale``), which gives the canonical value itself and is
    cheaper for asyncpg to decode, so no Python processing per value is needed. Elsewhere
    the column."""
    if dialect != "postgresql":
        return column
    return sa.type_coerce(sa.func.trim_scale(column), sa.Numeric(asdecimal=True)).label(column.name)


class UTCDateTime(sa.types.TypeDecorator[dt.datetime]):
    """Aware UTC datetime. Naive input is an error; other offsets are converted to UTC."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(sa.Text())
        return dialect.type_descriptor(sa.DateTime(timezone=True))

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        utc = to_utc(value)
        if dialect.name == "sqlite":
            return format_utc(utc)
        return utc

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if isinstance(value, str):
            return parse_utc(value)
        return to_utc(value)

    def process_literal_param(self, value: Any, dialect: Dialect) -> str:
        return f"'{format_utc(to_utc(value))}'"

    @property
    def python_type(self) -> type:
        return dt.datetime


def to_utc(value: object) -> dt.datetime:
    if not isinstance(value, dt.datetime):
        raise TypeError(f"{value!r} is not a datetime")
    if value.tzinfo is dt.UTC:
        return value
    if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
        raise ValueError(f"naive datetime {value.isoformat()} has no time zone; give an aware one")
    return value.astimezone(dt.UTC)


def format_utc(value: dt.datetime) -> str:
    """Fixed-width ISO-8601 text with microseconds and a 'Z' suffix (27 characters: the
    widths are fixed and datetime's years have at most 4 digits). Formatted by hand: this runs
    for every timestamp written on SQLite, and isoformat costs twice as much."""
    if value.tzinfo is not dt.UTC:
        value = value.astimezone(dt.UTC)
    return "%04d-%02d-%02dT%02d:%02d:%02d.%06dZ" % (  # noqa: UP031 (faster than f-strings)
        value.year,
        value.month,
        value.day,
        value.hour,
        value.minute,
        value.second,
        value.microsecond,
    )


def parse_utc(text: str) -> dt.datetime:
    parsed = dt.datetime.fromisoformat(text)  # reads the 'Z' (Python >= 3.11)
    if parsed.tzinfo is dt.UTC:
        return parsed
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=dt.UTC)
    return parsed.astimezone(dt.UTC)


def canonical_json(value: Any) -> str:
    """Compact JSON with sorted keys; Decimals as their canonical text, datetimes as UTC ISO."""
    if value == {}:
        return "{}"  # the usual meta of a fill or order: skip the encoder
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_json_default
    )


def _json_default(value: Any) -> Any:
    if isinstance(value, decimal.Decimal):
        return canonical_decimal(value)
    if isinstance(value, dt.datetime):
        return format_utc(to_utc(value))
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


class JSONDoc(sa.types.TypeDecorator[Any]):
    """A JSON document: TEXT on SQLite, JSONB on PostgreSQL. Python None is SQL NULL."""

    impl = sa.Text
    cache_ok = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Alembic renders the repr; accept (and drop) whatever it may pass back.
        super().__init__()

    def load_dialect_impl(self, dialect: Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(postgresql.JSONB())
        return dialect.type_descriptor(sa.Text())

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        text = canonical_json(value)
        if dialect.name == "postgresql":
            return json.loads(text)  # JSONB serializes itself; hand it plain JSON values
        return text

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        if isinstance(value, str) and dialect.name != "postgresql":
            return json.loads(value)
        return value

    def coerce_compared_value(self, op: Any, value: Any) -> sa.types.TypeEngine[Any]:
        return self


# BIGINT identity on PostgreSQL; INTEGER PRIMARY KEY (the rowid alias) on SQLite.
BigID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def local_midnight(at: dt.datetime, zone: str, days: int = 0) -> dt.datetime:
    """The midnight that starts the local day ``days`` after ``at``'s day in ``zone``, in UTC
    (``days=0``: today's start, for daily loss; ``days=1``: when a DAY order ends)."""
    from zoneinfo import ZoneInfo

    tz = ZoneInfo(zone)
    day = at.astimezone(tz).date() + dt.timedelta(days=days)
    return dt.datetime.combine(day, dt.time(), tz).astimezone(dt.UTC)


def utc_now() -> dt.datetime:
    """The current time as an aware UTC datetime (microsecond precision, like the columns)."""
    return dt.datetime.now(dt.UTC)


def new_uid() -> str:
    """A new random UUID4 string for ``uid`` columns."""
    return str(uuid.uuid4())


# --- exact decimal arithmetic in SQL ----------------------------------------------------------
# PostgreSQL adds and sums NUMERIC exactly. SQLite would turn decimal TEXT into floats, so on
# SQLite the same expressions call two functions registered on every connection (dal/engine.py)
# that compute with Decimal and return canonical TEXT.
_SQLITE_ADD = "tb_decimal_add"
_SQLITE_SUM = "tb_decimal_sum"


def _sqlite_decimal(value: object) -> decimal.Decimal:
    if value is None:
        return decimal.Decimal(0)
    if not isinstance(value, str | int):
        raise AmountError(f"{type(value).__name__} {value!r} found in a decimal column")
    return decimal.Decimal(value)


def sqlite_decimal_add(a: object, b: object) -> str:
    """``decimal_add`` on SQLite: exact sum of two decimal TEXT values, as canonical TEXT."""
    return canonical_decimal(DECIMAL_CONTEXT.add(_sqlite_decimal(a), _sqlite_decimal(b)))


class _SQLiteSum:
    def __init__(self) -> None:
        self.total = decimal.Decimal(0)

    def step(self, value: object) -> None:
        if value is not None:
            self.total = DECIMAL_CONTEXT.add(self.total, _sqlite_decimal(value))

    def finalize(self) -> str:
        return canonical_decimal(self.total)


def register_sqlite_decimal_functions(dbapi_conn: Any) -> None:
    """Install ``decimal_add`` / ``decimal_sum``'s SQLite functions on a DB-API connection."""
    dbapi_conn.create_function(_SQLITE_ADD, 2, sqlite_decimal_add, deterministic=True)
    dbapi_conn.create_aggregate(_SQLITE_SUM, 1, _SQLiteSum)


class decimal_add(sa.sql.functions.GenericFunction[decimal.Decimal]):
    """``a + b`` on two Money expressions, exact on both engines."""

    type = Money()
    inherit_cache = True


class decimal_sum(sa.sql.functions.GenericFunction[decimal.Decimal]):
    """``SUM(x)`` of a Money expression, exact on both engines."""

    type = Money()
    inherit_cache = True


@sa.ext.compiler.compiles(decimal_add, "sqlite")
def _add_sqlite(element: decimal_add, compiler: Any, **kw: Any) -> str:
    return f"{_SQLITE_ADD}({compiler.process(element.clauses, **kw)})"


@sa.ext.compiler.compiles(decimal_add)
def _add_default(element: decimal_add, compiler: Any, **kw: Any) -> str:
    a, b = element.clauses.clauses
    return f"({compiler.process(a, **kw)} + {compiler.process(b, **kw)})"


@sa.ext.compiler.compiles(decimal_sum, "sqlite")
def _sum_sqlite(element: decimal_sum, compiler: Any, **kw: Any) -> str:
    return f"{_SQLITE_SUM}({compiler.process(element.clauses, **kw)})"


@sa.ext.compiler.compiles(decimal_sum)
def _sum_default(element: decimal_sum, compiler: Any, **kw: Any) -> str:
    return f"sum({compiler.process(element.clauses, **kw)})"
