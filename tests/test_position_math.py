"""Property tests of the pure position math against an exact rational reference model.

The reference below is written independently of ``dal.position_math``: it keeps quantity, cost
and realized PnL as ``fractions.Fraction`` and never rounds. ``apply_fill`` rounds half-even to
18 fractional digits where a result does not fit, so it must agree with the reference exactly
where the rules promise exactness and within a small tolerance elsewhere.
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, localcontext
from fractions import Fraction
from typing import Any, NamedTuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dal.decimals import DECIMAL_CONTEXT, quantize18
from dal.position_math import (
    FillResult,
    PositionState,
    apply_fill,
    apply_fill_in_context,
    replay,
    unrealized_pnl,
)

T0 = dt.datetime(2024, 3, 1, 12, 0, tzinfo=dt.UTC)
TOL = Fraction(1, 10**15)
ULP = Fraction(1, 10**18)
MAX_QTY = 10**4
MAX_PRICE = 10**5

Fill = tuple[str, Decimal, Decimal]


def at(seconds: int) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def dec(units: int, decimals: int) -> Decimal:
    """``units × 10^-decimals`` as an exact Decimal, built from text (never from a float)."""
    return Decimal(f"{units}e-{decimals}")


def round18(value: Fraction) -> Fraction:
    """Round half-even to 18 fractional digits, on exact rationals."""
    scaled = value * 10**18
    floor = math.floor(scaled)
    rest = scaled - floor
    if rest > Fraction(1, 2) or (rest == Fraction(1, 2) and floor % 2):
        floor += 1
    return Fraction(floor, 10**18)


# --------------------------------------------------------------------------------------------
# Exact reference model


@dataclass
class RefPosition:
    qty: Fraction = Fraction(0)
    cost: Fraction = Fraction(0)
    realized: Fraction = Fraction(0)
    opened_at: dt.datetime | None = None

    def apply(self, side: str, quantity: Decimal, price: Decimal, when: dt.datetime) -> Fraction:
        """Apply one fill exactly; return the fill's realized PnL."""
        q, p = Fraction(quantity), Fraction(price)
        sign = 1 if side == "BUY" else -1
        if self.qty == 0 or (self.qty > 0) == (sign > 0):
            if self.qty == 0:
                self.opened_at = when
            self.qty += sign * q
            self.cost += q * p
            return Fraction(0)
        held = abs(self.qty)
        closing = min(q, held)
        removed = self.cost * closing / held
        realized = closing * p - removed if self.qty > 0 else removed - closing * p
        self.realized += realized
        remainder = q - closing
        if remainder:
            self.qty = sign * remainder
            self.cost = remainder * p
            self.opened_at = when
        else:
            self.qty += sign * q
            self.cost -= removed
            if self.qty == 0:
                self.opened_at = None
        return realized

    @property
    def avg(self) -> Fraction:
        return self.cost / abs(self.qty) if self.qty else Fraction(0)


# --------------------------------------------------------------------------------------------
# Strategies

Draw = Callable[[st.SearchStrategy[Any]], Any]
SIDES = st.sampled_from(["BUY", "SELL"])


def draw_qty_units(draw: Draw, qdec: int) -> int:
    """A positive quantity up to MAX_QTY with 0..qdec decimals, in units of 10^-qdec."""
    d = draw(st.integers(0, qdec))
    return draw(st.integers(1, MAX_QTY * 10**d)) * 10 ** (qdec - d)


def draw_price(draw: Draw, pdec: int) -> Decimal:
    """A positive price up to MAX_PRICE with 0..pdec decimals."""
    d = draw(st.integers(0, pdec))
    return dec(draw(st.integers(1, MAX_PRICE * 10**d)), d)


def draw_fills(
    draw: Draw, qdec: int, pdec: int, *, min_size: int = 1, max_size: int = 30, end_flat=False
) -> tuple[list[Fill], int]:
    """Fills that add, partially reduce, close exactly and cross zero.

    All quantities are multiples of 10^-qdec. Returns the fills and the final signed position
    in units of 10^-qdec.
    """
    size = draw(st.integers(min_size, max_size))
    fills: list[Fill] = []
    pos = 0
    for _ in range(size):
        kind = draw(st.sampled_from(["any", "add", "partial", "close", "cross"]))
        price = draw_price(draw, pdec)
        same = "BUY" if pos > 0 else "SELL"
        other = "SELL" if pos > 0 else "BUY"
        if pos == 0 or kind == "any":
            side, units = draw(SIDES), draw_qty_units(draw, qdec)
        elif kind == "add":
            side, units = same, draw_qty_units(draw, qdec)
        elif kind == "partial" and abs(pos) > 1:
            side, units = other, draw(st.integers(1, abs(pos) - 1))
        elif kind == "cross":
            side, units = other, abs(pos) + draw_qty_units(draw, qdec)
        else:
            side, units = other, abs(pos)
        fills.append((side, dec(units, qdec), price))
        pos += units if side == "BUY" else -units
    if end_flat and pos:
        fills.append(("SELL" if pos > 0 else "BUY", dec(abs(pos), qdec), draw_price(draw, pdec)))
        pos = 0
    return fills, pos


def draw_split(draw: Draw, total: int, max_parts: int = 6) -> list[int]:
    """Split ``total`` (> 0) into 1..max_parts positive integer parts."""
    k = draw(st.integers(1, min(max_parts, total)))
    if k == 1:
        return [total]
    cuts = sorted(draw(st.sets(st.integers(1, total - 1), min_size=k - 1, max_size=k - 1)))
    bounds = [0, *cuts, total]
    return [b - a for a, b in itertools.pairwise(bounds)]


@st.composite
def sequences(draw: Draw, *, max_qdec: int, max_pdec: int, end_flat: bool = False):
    qdec = draw(st.integers(0, max_qdec))
    fills, _ = draw_fills(draw, qdec, max_pdec, end_flat=end_flat)
    return fills


def run(fills: list[Fill], state: PositionState | None = None, start: int = 0):
    """Apply fills one by one (exec times start, start+1, ... seconds); return the results."""
    state = state or PositionState()
    results = []
    for i, (side, quantity, price) in enumerate(fills):
        result = apply_fill(state, side, quantity, price, at(start + i))
        results.append(result)
        state = result.state
    return results


def final(results: list[FillResult], default: PositionState | None = None) -> PositionState:
    return results[-1].state if results else (default or PositionState())


# --------------------------------------------------------------------------------------------
# Invariants checked after every fill (property 5)


def check_invariants(
    before: PositionState, fill: Fill, when: dt.datetime, result: FillResult
) -> None:
    side, quantity, price = fill
    state = result.state
    assert state.cost_basis >= 0
    if state.quantity == 0:
        assert state.cost_basis == 0
        assert state.opened_at is None
        assert state.avg_price == 0
    else:
        with localcontext(DECIMAL_CONTEXT):
            assert state.avg_price == quantize18(state.cost_basis / abs(state.quantity))
        # The same, independently on rationals.
        assert Fraction(state.avg_price) == round18(
            Fraction(state.cost_basis) / abs(Fraction(state.quantity))
        )
    assert state.realized_pnl == before.realized_pnl + result.realized
    sign = 1 if side == "BUY" else -1
    assert state.quantity == before.quantity + sign * quantity
    crossed = before.quantity != 0 and (
        (before.quantity > 0 > state.quantity) or (before.quantity < 0 < state.quantity)
    )
    if crossed:
        remainder = abs(state.quantity)
        assert state.opened_at == when
        assert Fraction(state.cost_basis) == round18(Fraction(remainder) * Fraction(price))
    elif before.quantity == 0:
        assert state.opened_at == when
        assert result.realized == 0
        assert Fraction(state.cost_basis) == round18(Fraction(quantity) * Fraction(price))
    elif state.quantity != 0:
        assert state.opened_at == before.opened_at


# --------------------------------------------------------------------------------------------
# Property 1 (+5): agreement with the exact reference


@settings(max_examples=300, deadline=None)
@given(sequences(max_qdec=18, max_pdec=18))
def test_matches_exact_reference(fills: list[Fill]) -> None:
    state = PositionState()
    ref = RefPosition()
    for i, fill in enumerate(fills):
        when = at(i)
        result = apply_fill(state, *fill, when)
        ref_realized = ref.apply(*fill, when)
        check_invariants(state, fill, when, result)
        state = result.state

        assert Fraction(state.quantity) == ref.qty
        assert state.opened_at == ref.opened_at
        assert abs(Fraction(state.cost_basis) - ref.cost) <= TOL
        assert abs(Fraction(result.realized) - ref_realized) <= TOL
        assert abs(Fraction(state.realized_pnl) - ref.realized) <= TOL
        # The cost basis error (a few 1e-18) is divided by |Q| in the average price; with
        # |Q| >= 1 this is the plain 1e-15 bound, smaller positions get it scaled by 1/|Q|.
        avg_tol = TOL * max(Fraction(1), 1 / abs(ref.qty)) if ref.qty else 0
        assert abs(Fraction(state.avg_price) - ref.avg) <= avg_tol


@settings(max_examples=200, deadline=None)
@given(sequences(max_qdec=18, max_pdec=18))
def test_replay_in_one_context_is_apply_fill_exactly(fills: list[Fill]) -> None:
    """Replays (``replay``, ``positions.derive``) enter the decimal context once and call
    ``apply_fill_in_context``: every result equals ``apply_fill``'s, digit for digit."""
    state = PositionState()
    expected = []
    for i, fill in enumerate(fills):
        result = apply_fill(state, *fill, at(i))
        expected.append(result)
        state = result.state

    def digits(result: FillResult) -> tuple:
        s = result.state
        amounts = (s.quantity, s.cost_basis, s.realized_pnl, s.avg_price, result.realized)
        return (*(a.as_tuple() for a in amounts), s.opened_at)

    replayed = replay([(*fill, at(i)) for i, fill in enumerate(fills)])
    assert [digits(r) for r in replayed] == [digits(r) for r in expected]


class ReplayedRow(NamedTuple):
    """A stand-in for a trades Row of ``dal.positions._REPLAYED``'s columns."""

    id: int
    portfolio_id: int
    instrument_id: int
    strategy_id: int | None
    side: str
    quantity: Decimal
    price: Decimal
    exec_time: dt.datetime


def assert_derive_is_apply_fill(merged: list[tuple[int, Fill]]) -> None:
    """``positions.derive`` over (instrument, fill) pairs equals the ``apply_fill`` chain of
    each instrument's fills: states and per-trade PnL, digit for digit."""
    from dal.positions import _REPLAYED, derive

    assert ReplayedRow._fields == tuple(c.name for c in _REPLAYED)  # a Row's fields, by position
    rows = [
        ReplayedRow(trade_id, 7, iid, None, side, quantity, price, at(trade_id))
        for trade_id, (iid, (side, quantity, price)) in enumerate(merged)
    ]

    def digits(*amounts: Decimal) -> tuple:
        return tuple(a.as_tuple() for a in amounts)

    derived = derive(rows)  # type: ignore[arg-type]  # stand-ins for Rows: derive reads _fields
    for iid in {iid for iid, _ in merged}:
        state = PositionState()
        for r in rows:
            if r.instrument_id != iid:
                continue
            result = apply_fill(state, r.side, r.quantity, r.price, r.exec_time)
            state = result.state
            assert digits(derived[(7, iid, None)].trade_realized[r.id]) == digits(result.realized)
        d = derived[(7, iid, None)].state
        assert digits(d.quantity, d.cost_basis, d.realized_pnl, d.avg_price) == digits(
            state.quantity, state.cost_basis, state.realized_pnl, state.avg_price
        )
        assert d.opened_at == state.opened_at


@settings(max_examples=200, deadline=None)
@given(sequences(max_qdec=18, max_pdec=18), sequences(max_qdec=18, max_pdec=18), st.randoms())
def test_derive_is_apply_fill_exactly(first: list[Fill], second: list[Fill], rnd: Any) -> None:
    """``positions.derive`` steps through trades without the canonical form and makes it
    canonical once per position: its states and per-trade PnL still equal ``apply_fill``'s,
    digit for digit, with two positions' trades interleaved."""
    streams = [[(1, fill) for fill in first], [(2, fill) for fill in second]]
    merged = []
    while streams[0] or streams[1]:
        stream = rnd.choice([s for s in streams if s])
        merged.append(stream.pop(0))
    assert_derive_is_apply_fill(merged)


def test_derive_is_apply_fill_exactly_at_the_largest_amounts() -> None:
    """Amounts near NUMERIC(38, 18)'s limits (20 integer digits in the cost basis, 18
    fractional everywhere): the longest coefficients the replay's products and quotients see."""
    q, p = Decimal("123456789.123456789012345678"), Decimal("98765432109.987654321098765432")
    fills = [
        ("BUY", q, p),
        ("BUY", Decimal("0.000000000000000001"), p),
        ("SELL", Decimal("98765432.999999999999999999"), Decimal("0.000000000000000007")),
        (
            "SELL",
            Decimal("123456789.123456789012345679"),
            Decimal("99999999999.999999999999999999"),
        ),
        ("BUY", q * 2, Decimal("1.000000000000000001")),
        ("SELL", Decimal("3"), Decimal("0.333333333333333333")),
    ]
    # and a position whose canonical form differs from the arithmetic's (1.000…000 → 1)
    small = [("BUY", Decimal(2), Decimal("0.5"))]
    assert_derive_is_apply_fill([(1, fill) for fill in fills] + [(2, fill) for fill in small])


def test_apply_fill_in_context_refuses_another_context() -> None:
    with pytest.raises(RuntimeError, match="localcontext"):
        apply_fill_in_context(PositionState(), "BUY", Decimal(1), Decimal(1), at(1))
    with localcontext(DECIMAL_CONTEXT):
        inside = apply_fill_in_context(PositionState(), "BUY", Decimal(3), Decimal("1.5"), at(1))
    assert inside == apply_fill(PositionState(), "BUY", Decimal(3), Decimal("1.5"), at(1))


@settings(max_examples=200, deadline=None)
@given(sequences(max_qdec=8, max_pdec=8))
def test_matches_reference_exactly_when_fills_are_exact(fills: list[Fill]) -> None:
    """Adds and crossings are exact with <= 8 decimals; only removals may round (<= 1e-18)."""
    state = PositionState()
    ref = RefPosition()
    for i, fill in enumerate(fills):
        result = apply_fill(state, *fill, at(i))
        ref.apply(*fill, at(i))
        state = result.state
        assert Fraction(state.quantity) == ref.qty
        if ref.opened_at == at(i):  # just opened (from flat or by crossing): exact
            assert Fraction(state.cost_basis) == ref.cost
        assert abs(Fraction(state.cost_basis) - ref.cost) <= len(fills) * ULP


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_reducing_fill_rounds_half_even_exactly(data: st.DataObject) -> None:
    """A partial reduction removes and realizes the half-even roundings of the exact values."""
    qdec = data.draw(st.integers(0, 18))
    held = data.draw(st.integers(2, MAX_QTY * 10**qdec))
    closing = data.draw(st.integers(1, held - 1))
    # Any 18-decimal cost basis, e.g. left over from earlier reductions.
    cost = dec(data.draw(st.integers(1, MAX_QTY * MAX_PRICE * 10**18)), 18)
    price = draw_price(data.draw, 18)
    long = data.draw(st.booleans())
    quantity = dec(held, qdec) if long else -dec(held, qdec)
    state = PositionState(quantity=quantity, cost_basis=cost, opened_at=T0)

    result = apply_fill(state, "SELL" if long else "BUY", dec(closing, qdec), price, at(1))

    removed = round18(Fraction(cost) * closing / held)
    proceeds = Fraction(dec(closing, qdec)) * Fraction(price)
    expected = round18(proceeds - removed if long else removed - proceeds)
    assert Fraction(result.state.cost_basis) == Fraction(cost) - removed
    assert Fraction(result.realized) == expected
    assert result.state.realized_pnl == result.realized
    assert result.state.opened_at == T0


# --------------------------------------------------------------------------------------------
# Property 2: splitting an adding fill changes nothing


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_splitting_an_adding_fill_gives_the_same_position(data: st.DataObject) -> None:
    qdec = data.draw(st.integers(0, 8))
    prefix, pos = draw_fills(data.draw, qdec, 8, min_size=0, max_size=15)
    state = final(run(prefix))
    side = data.draw(SIDES) if pos == 0 else ("BUY" if pos > 0 else "SELL")
    total = draw_qty_units(data.draw, qdec)
    parts = draw_split(data.draw, total)
    price = draw_price(data.draw, 8)
    start = len(prefix)

    whole = apply_fill(state, side, dec(total, qdec), price, at(start))
    pieces = run([(side, dec(u, qdec), price) for u in parts], state, start)
    split = pieces[-1].state

    assert whole.realized == 0
    assert all(p.realized == 0 for p in pieces)
    assert split.quantity == whole.state.quantity
    assert split.cost_basis == whole.state.cost_basis
    assert split.realized_pnl == whole.state.realized_pnl == state.realized_pnl
    assert split.avg_price == whole.state.avg_price
    # Opened by the first part when starting flat, otherwise the side's original opening time.
    expected_open = at(start) if pos == 0 else state.opened_at
    assert split.opened_at == whole.state.opened_at == expected_open
    assert split == whole.state


# --------------------------------------------------------------------------------------------
# Property 3: flat-to-flat cycles realize exactly the cash difference


@settings(max_examples=300, deadline=None)
@given(sequences(max_qdec=8, max_pdec=8, end_flat=True))
def test_flat_to_flat_realizes_exact_cash_difference(fills: list[Fill]) -> None:
    results = run(fills)
    cash = Decimal(0)
    realized = Decimal(0)
    with localcontext(DECIMAL_CONTEXT):
        for (side, quantity, price), result in zip(fills, results, strict=True):
            notional = quantity * price
            cash += notional if side == "SELL" else -notional
            realized += result.realized
            assert result.state.realized_pnl == realized
            if result.state.quantity == 0:  # every intermediate flat point too
                assert realized == cash
    assert final(results).quantity == 0
    assert final(results).cost_basis == 0
    assert realized == cash
    assert final(results).realized_pnl == cash


# --------------------------------------------------------------------------------------------
# Property 4: splitting a reducing fill moves realized PnL by at most 1e-18 per part


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_splitting_a_reducing_fill_changes_realized_by_at_most_one_ulp_per_part(
    data: st.DataObject,
) -> None:
    qdec = data.draw(st.integers(0, 18))
    pdec = data.draw(st.sampled_from([8, 18]))
    prefix, pos = draw_fills(data.draw, qdec, pdec, max_size=15)
    if pos == 0:
        opening = draw_qty_units(data.draw, qdec)
        prefix.append((data.draw(SIDES), dec(opening, qdec), draw_price(data.draw, pdec)))
        pos = opening if prefix[-1][0] == "BUY" else -opening
    state = final(run(prefix))
    side = "SELL" if pos > 0 else "BUY"
    total = data.draw(st.integers(1, abs(pos)))  # up to and including a full close
    parts = draw_split(data.draw, total)
    price = draw_price(data.draw, pdec)
    start = len(prefix)

    whole = apply_fill(state, side, dec(total, qdec), price, at(start))
    pieces = run([(side, dec(u, qdec), price) for u in parts], state, start)
    split = pieces[-1].state

    split_realized = sum((p.realized for p in pieces), Decimal(0))
    bound = len(parts) * ULP
    assert abs(Fraction(split_realized) - Fraction(whole.realized)) <= bound
    assert abs(Fraction(split.realized_pnl) - Fraction(whole.state.realized_pnl)) <= bound
    assert split.quantity == whole.state.quantity
    assert split.opened_at == whole.state.opened_at
    if total == abs(pos):
        assert split.cost_basis == whole.state.cost_basis == 0
    if len(parts) == 1:
        assert split == whole.state


# --------------------------------------------------------------------------------------------
# Hand-computed examples


def test_example_long_crossing_to_short_and_back_to_flat() -> None:
    s1 = apply_fill(PositionState(), "BUY", Decimal(2), Decimal(10), at(1))
    assert s1.realized == 0
    assert s1.state == PositionState(Decimal(2), Decimal(20), Decimal(0), at(1))
    assert s1.state.avg_price == 10

    s2 = apply_fill(s1.state, "SELL", Decimal(3), Decimal(12), at(2))
    assert s2.realized == 4  # 2 × 12 − 20
    assert s2.state.quantity == -1
    assert s2.state.cost_basis == 12
    assert s2.state.avg_price == 12
    assert s2.state.realized_pnl == 4
    assert s2.state.opened_at == at(2)

    s3 = apply_fill(s2.state, "BUY", Decimal(1), Decimal(11), at(3))
    assert s3.realized == 1  # 12 − 1 × 11
    assert s3.state == PositionState(Decimal(0), Decimal(0), Decimal(5), None)
    assert s3.state.avg_price == 0

    fills: list[tuple[str, Decimal, Decimal, dt.datetime | None]] = [
        ("BUY", Decimal(2), Decimal(10), at(1)),
        ("SELL", Decimal(3), Decimal(12), at(2)),
        ("BUY", Decimal(1), Decimal(11), at(3)),
    ]
    assert replay(fills) == [s1, s2, s3]


def test_example_short_adding_keeps_opening_time_and_averages() -> None:
    s1 = apply_fill(PositionState(), "SELL", Decimal(1), Decimal(10), at(1))
    s2 = apply_fill(s1.state, "SELL", Decimal(1), Decimal(20), at(2))
    assert s2.state == PositionState(Decimal(-2), Decimal(30), Decimal(0), at(1))
    assert s2.state.avg_price == 15
    # Cover half at 12: removes 15, realizes 15 − 12 = 3.
    s3 = apply_fill(s2.state, "BUY", Decimal(1), Decimal(12), at(3))
    assert s3.realized == 3
    assert s3.state == PositionState(Decimal(-1), Decimal(15), Decimal(3), at(1))
    # Cross to long: cover 1 at 18 (−3), open 2 long at 18.
    s4 = apply_fill(s3.state, "BUY", Decimal(3), Decimal(18), at(4))
    assert s4.realized == -3
    assert s4.state == PositionState(Decimal(2), Decimal(36), Decimal(0), at(4))


def test_example_non_terminating_removal_and_half_even_average() -> None:
    results = replay(
        [
            ("BUY", Decimal(1), Decimal(4), at(1)),
            ("BUY", Decimal(2), Decimal(3), at(2)),
            ("SELL", Decimal(1), Decimal(5), at(3)),
            ("SELL", Decimal(2), Decimal(5), at(4)),
        ]
    )
    assert results[1].state.cost_basis == 10
    assert results[1].state.avg_price == Decimal("3.333333333333333333")
    # Removes round(10/3) = 3.333333333333333333.
    assert results[2].realized == Decimal("1.666666666666666667")
    assert results[2].state.cost_basis == Decimal("6.666666666666666667")
    # 6.666666666666666667 / 2 = 3.3333333333333333335: a tie, rounded to the even digit.
    assert results[2].state.avg_price == Decimal("3.333333333333333334")
    # The last fill removes all that is left, so the cycle realizes exactly 15 − 10.
    assert results[3].realized == Decimal("3.333333333333333333")
    assert results[3].state == PositionState(Decimal(0), Decimal(0), Decimal(5), None)


@pytest.mark.parametrize(
    ("first", "second", "removed"),
    [
        ("0.000000000000000001", "0.000000000000000002", "0.000000000000000002"),  # 1.5 → 2
        ("0.000000000000000002", "0.000000000000000003", "0.000000000000000002"),  # 2.5 → 2
    ],
)
def test_example_removal_ties_round_half_even(first: str, second: str, removed: str) -> None:
    results = replay(
        [
            ("BUY", Decimal(1), Decimal(first), at(1)),
            ("BUY", Decimal(1), Decimal(second), at(2)),
            ("SELL", Decimal(1), Decimal(1), at(3)),
        ]
    )
    cost = Decimal(first) + Decimal(second)
    assert results[2].state.cost_basis == cost - Decimal(removed)
    assert results[2].realized == 1 - Decimal(removed)


# --------------------------------------------------------------------------------------------
# Invalid input


LONG = PositionState(Decimal(2), Decimal(20), Decimal(0), T0)


@pytest.mark.parametrize("state", [PositionState(), LONG], ids=["flat", "long"])
@pytest.mark.parametrize(
    ("side", "quantity", "price"),
    [
        ("HOLD", "1", "10"),
        ("buy", "1", "10"),
        ("", "1", "10"),
        ("BUY", "0", "10"),
        ("SELL", "-1", "10"),
        ("BUY", "1", "0"),
        ("SELL", "1", "-10"),
        ("BUY", "-0.000000000000000001", "10"),
    ],
)
def test_invalid_fill_raises(state: PositionState, side: str, quantity: str, price: str) -> None:
    with pytest.raises(ValueError):
        apply_fill(state, side, Decimal(quantity), Decimal(price), at(1))


# --------------------------------------------------------------------------------------------
# Unrealized PnL


def test_unrealized_pnl_long_and_short() -> None:
    long = apply_fill(PositionState(), "BUY", Decimal(2), Decimal(10), at(1)).state
    assert unrealized_pnl(long, Decimal(12)) == 4
    assert unrealized_pnl(long, Decimal("9.5")) == -1
    short = apply_fill(PositionState(), "SELL", Decimal(3), Decimal(12), at(1)).state
    assert unrealized_pnl(short, Decimal(11)) == 3
    assert unrealized_pnl(short, Decimal("12.5")) == Decimal("-1.5")
    assert unrealized_pnl(PositionState(), Decimal(100)) == 0
    # Rounded half-even to 18 places: 3 × 0.0000000000000000005 = 1.5e-18 → 2e-18.
    tiny = PositionState(Decimal(3), Decimal(0), Decimal(0), T0)
    assert unrealized_pnl(tiny, Decimal("0.0000000000000000005")) == Decimal("2e-18")


@settings(max_examples=200, deadline=None)
@given(sequences(max_qdec=18, max_pdec=18), st.data())
def test_unrealized_pnl_matches_reference(fills: list[Fill], data: st.DataObject) -> None:
    state = final(run(fills))
    mark = draw_price(data.draw, 18)
    q, cost, m = Fraction(state.quantity), Fraction(state.cost_basis), Fraction(mark)
    exact = abs(q) * m - cost if q > 0 else cost - abs(q) * m
    assert Fraction(unrealized_pnl(state, mark)) == round18(exact)
