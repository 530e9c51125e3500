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

from dal.decimals import (
    DECIMAL_CONTEXT,
    INTEGER_DIGITS,
    NOTIONAL_DIGITS,
    NOTIONAL_SCALE,
    SCALE,
    AmountError,
    amount_text,
    canonical_decimal,
    check_amount,
    check_notional,
    notional_text,
)


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
        if type(value) is decimal.Decimal and value.is_finite():
            # The usual amount fits as it is (NUMERIC stores it the same with or without
            # trailing zeros); anything else takes check_amount's way.
            exponent = value.as_tuple().exponent
            if -SCALE <= exponent <= 0 and value.adjusted() < INTEGER_DIGITS:  # type: ignore[operator]  # an int for a finite value
                return value
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
    """The aggregate: SQLite calls ``step`` once per row, so it is the list's own append
    (no Python frame per row), and the values are checked and added up in ``finalize``."""

    def __init__(self) -> None:
        self.values: list[object] = []
        self.step = self.values.append

    def finalize(self) -> str:
        values = self.values
        kinds = set(map(type, values))
        if not kinds <= _SUMMABLE:
            bad = next(v for v in values if type(v) not in _SUMMABLE)
            raise AmountError(f"{type(bad).__name__} {bad!r} found in a decimal column")
        if type(None) in kinds:
            values = [v for v in values if v is not None]
        with decimal.localcontext(DECIMAL_CONTEXT):
            return canonical_decimal(sum(map(decimal.Decimal, values), decimal.Decimal(0)))  # type: ignore[arg-type]  # str or int, checked above


_SUMMABLE = {str, int, type(None)}


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
