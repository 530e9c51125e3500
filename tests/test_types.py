"""Round trips and refusals of the portable types, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy.exc import StatementError
from sqlalchemy.ext.asyncio import AsyncEngine

from dal.clock import utc_now
from dal.decimals import AmountError, amount_text, canonical_decimal, check_amount
from dal.types import BigID, JSONDoc, Money, UTCDateTime, format_utc, new_uid, parse_utc
from tests.conftest import count_rows

probe_md = sa.MetaData()
probe = sa.Table(
    "type_probe",
    probe_md,
    sa.Column("id", BigID, sa.Identity(), primary_key=True),
    sa.Column("amount", Money()),
    sa.Column("at", UTCDateTime()),
    sa.Column("doc", JSONDoc()),
)


@pytest.fixture
async def probe_engine(engine: AsyncEngine) -> AsyncEngine:
    async with engine.begin() as conn:
        await conn.run_sync(probe_md.create_all)
    return engine


async def roundtrip(engine: AsyncEngine, **values: object) -> sa.Row:
    async with engine.begin() as conn:
        new_id = (
            await conn.execute(probe.insert().values(**values).returning(probe.c.id))
        ).scalar()
    async with engine.connect() as conn:
        return (await conn.execute(sa.select(probe).where(probe.c.id == new_id))).one()


MAX_FRACTION = Decimal("0." + "1" * 17 + "9")
MAX_INTEGER = Decimal("9" * 20)
MAX_BOTH = Decimal("9" * 20 + "." + "9" * 18)


@pytest.mark.parametrize(
    "value",
    [
        Decimal("0.1") + Decimal("0.2"),
        Decimal("0"),
        Decimal("-0"),
        Decimal("-123.4500"),
        Decimal("1E+5"),
        MAX_FRACTION,
        MAX_INTEGER,
        MAX_BOTH,
        Decimal("-" + str(MAX_BOTH)),  # not -MAX_BOTH: the default context has 28 digits
        Decimal("0.000000000000000001"),
    ],
)
async def test_money_round_trips_exactly(
    probe_engine: AsyncEngine, engine_name: str, value: Decimal
) -> None:
    row = await roundtrip(probe_engine, amount=value)
    assert isinstance(row.amount, Decimal)
    assert row.amount == value
    # Both engines hand back the same canonical value (no padding to 18 places).
    assert row.amount.as_tuple() == Decimal(canonical_decimal(value)).as_tuple()
    if engine_name == "sqlite":
        async with probe_engine.connect() as conn:
            raw = (await conn.exec_driver_sql("SELECT amount FROM type_probe")).scalar()
        assert raw == canonical_decimal(value)
        assert isinstance(raw, str) and "E" not in raw and "e" not in raw


async def test_point_one_plus_point_two_is_point_three(probe_engine: AsyncEngine) -> None:
    row = await roundtrip(probe_engine, amount=Decimal("0.1") + Decimal("0.2"))
    assert row.amount == Decimal("0.3")


async def test_money_accepts_text_and_int(probe_engine: AsyncEngine) -> None:
    assert (await roundtrip(probe_engine, amount="12.50")).amount == Decimal("12.5")
    assert (await roundtrip(probe_engine, amount=7)).amount == Decimal(7)


@pytest.mark.parametrize(
    "bad",
    [
        0.1,
        float("nan"),
        Decimal("NaN"),
        Decimal("sNaN"),
        Decimal("Infinity"),
        Decimal("-Infinity"),
        Decimal("0.0000000000000000001"),  # 19 fractional digits
        Decimal("1" * 21),  # 21 integer digits
        Decimal("1E+20"),
        "abc",
        True,
    ],
)
async def test_money_refuses_values_it_cannot_store_exactly(
    probe_engine: AsyncEngine, bad: object
) -> None:
    with pytest.raises(StatementError) as info:
        async with probe_engine.begin() as conn:
            await conn.execute(probe.insert().values(amount=bad))
    assert isinstance(info.value.orig, AmountError)
    assert await count_rows(probe_engine, probe) == 0


def test_check_amount_messages_are_clear() -> None:
    with pytest.raises(AmountError, match="float"):
        check_amount(1.5)
    with pytest.raises(AmountError, match="18 fractional digits"):
        check_amount(Decimal("1.0000000000000000001"))
    with pytest.raises(AmountError, match="20 integer digits"):
        check_amount(Decimal("123456789012345678901"))
    with pytest.raises(AmountError, match="finite"):
        check_amount(Decimal("NaN"))
    # Trailing zeros past 18 places are not lost digits.
    assert check_amount(Decimal("1.50000000000000000000000")) == Decimal("1.5")


async def test_timestamps_round_trip_as_aware_utc(probe_engine: AsyncEngine) -> None:
    plus_two = dt.timezone(dt.timedelta(hours=2))
    local = dt.datetime(2024, 3, 1, 12, 0, 0, 123456, tzinfo=plus_two)
    row = await roundtrip(probe_engine, at=local)
    assert row.at == local
    assert row.at.utcoffset() == dt.timedelta(0)
    assert row.at == dt.datetime(2024, 3, 1, 10, 0, 0, 123456, tzinfo=dt.UTC)


async def test_naive_timestamp_is_refused(probe_engine: AsyncEngine) -> None:
    with pytest.raises(StatementError, match="naive"):
        async with probe_engine.begin() as conn:
            await conn.execute(probe.insert().values(at=dt.datetime(2024, 1, 1)))
    assert await count_rows(probe_engine, probe) == 0


async def test_timestamps_sort_in_time_order_as_stored(
    probe_engine: AsyncEngine, engine_name: str
) -> None:
    utc = dt.UTC
    times = [
        dt.datetime(999, 12, 31, 23, 59, 59, tzinfo=utc),
        dt.datetime(2024, 1, 1, 0, 0, 0, 0, tzinfo=utc),
        dt.datetime(2024, 1, 1, 0, 0, 0, 1, tzinfo=utc),
        dt.datetime(2024, 1, 1, 0, 0, 0, 100000, tzinfo=utc),
        dt.datetime(2024, 1, 1, 0, 0, 1, tzinfo=utc),
        dt.datetime(2024, 1, 1, 3, 0, 0, tzinfo=dt.timezone(dt.timedelta(hours=5))),  # 22:00 prev
        dt.datetime(2024, 12, 31, 23, 59, 59, 999999, tzinfo=utc),
    ]
    async with probe_engine.begin() as conn:
        for t in times:
            await conn.execute(probe.insert().values(at=t))
    async with probe_engine.connect() as conn:
        ordered = (await conn.execute(sa.select(probe.c.at).order_by(probe.c.at))).scalars().all()
        # Range filters compare in SQL, so they must be correct as stored too.
        after = (
            await conn.execute(
                sa.select(sa.func.count()).where(
                    probe.c.at >= dt.datetime(2024, 1, 1, 0, 0, 0, 1, tzinfo=utc)
                )
            )
        ).scalar()
    assert ordered == sorted(times)
    assert after == 4
    if engine_name == "sqlite":
        async with probe_engine.connect() as conn:
            raw = (await conn.exec_driver_sql("SELECT at FROM type_probe")).scalars().all()
        assert {len(text) for text in raw} == {27}
        assert all(text.endswith("Z") for text in raw)


async def test_json_round_trips(probe_engine: AsyncEngine) -> None:
    doc = {"b": [1, 2, {"c": None}], "a": "ünïcode ✓", "n": 1.5, "d": Decimal("0.30")}
    row = await roundtrip(probe_engine, doc=doc)
    assert row.doc == {"a": "ünïcode ✓", "b": [1, 2, {"c": None}], "d": "0.3", "n": 1.5}
    assert (await roundtrip(probe_engine, doc=None)).doc is None
    assert (await roundtrip(probe_engine, doc=5)).doc == 5


def test_helpers() -> None:
    now = utc_now()
    assert now.tzinfo is not None and now.utcoffset() == dt.timedelta(0)
    a, b = new_uid(), new_uid()
    assert a != b and len(a) == 36


# The SQLite binds' one-pass forms must say exactly what the general functions say.
_amounts = st.one_of(
    st.decimals(allow_nan=False, allow_infinity=False, places=None),
    st.decimals(min_value=Decimal("-1e21"), max_value=Decimal("1e21"), places=18),
    st.builds(
        lambda digits, exponent, negative: Decimal((int(negative), digits, exponent)),
        st.tuples(*[st.integers(0, 9)] * 3).map(tuple) | st.lists(st.integers(0, 9)).map(tuple),
        st.integers(-40, 40),
        st.booleans(),
    ),
    st.sampled_from(["1.50", "-0", "0E-30", "1E+20", "1E+19", "-99999999999999999999.5", 7]),
)


@settings(max_examples=2000, deadline=None)
@given(_amounts)
def test_amount_text_is_the_canonical_text_of_check_amount(value: object) -> None:
    try:
        expected: str | None = canonical_decimal(check_amount(value))
    except AmountError as exc:
        with pytest.raises(AmountError) as caught:
            amount_text(value)
        assert str(caught.value) == str(exc)
        return
    assert amount_text(value) == expected


@settings(max_examples=500, deadline=None)
@given(
    # Years 2..9998: at the very ends of datetime's range a zone offset leaves it
    # (OverflowError before anything could be stored).
    st.datetimes(
        min_value=dt.datetime(2, 1, 1),
        max_value=dt.datetime(9998, 12, 31),
        timezones=st.sampled_from([dt.UTC, ZoneInfo("Asia/Tokyo"), ZoneInfo("UTC")]),
    )
)
def test_stored_timestamps_are_fixed_width_iso_and_read_back_as_utc(moment: dt.datetime) -> None:
    utc = moment.astimezone(dt.UTC)
    text = format_utc(moment)
    assert text == utc.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"
    assert len(text) == 27
    back = parse_utc(text)
    assert back == utc and back.tzinfo is dt.UTC


@given(
    st.integers(-(10**40), 10**40),
    st.integers(-36, 3),
    st.integers(1, 10**20),
    st.integers(-18, 3),
    st.booleans(),
)
@settings(max_examples=500, deadline=None)
def test_average_price_is_the_exact_ratio_rounded_once_half_even(
    n: int, n_exp: int, q: int, q_exp: int, negative_quantity: bool
) -> None:
    from fractions import Fraction

    from dal.decimals import average_price

    notional = Decimal(n).scaleb(n_exp)
    quantity = Decimal(-q if negative_quantity else q).scaleb(q_exp)
    exact = Fraction(notional) / Fraction(quantity)
    got = average_price(notional, quantity)
    # Rounded to 18 places: within half a unit of the 18th place, and half-even on a tie.
    error = abs(Fraction(got) - exact)
    unit = Fraction(1, 10**18)
    assert error <= unit / 2
    if error == unit / 2:
        assert int(got.scaleb(18)) % 2 == 0
    assert format(got, "f") == canonical_decimal(got)  # canonical: no trailing zeros
