"""Position math on exact Decimals: average cost with an exact cost basis.

A position keeps a signed ``quantity`` and ``cost_basis``, the exact total cost of the open
quantity (always >= 0). ``avg_price`` is derived (cost_basis / |quantity|, 18 places) and stored
for display only. Rules (docs/position-rules.md):

* adding to a position (or opening one) adds ``qty × price`` to the cost basis;
* reducing by q of |Q| removes ``cost_basis × q / |Q|`` (all of it when q = |Q|) and realizes
  ``q × price − removed`` for a long, ``removed − q × price`` for a short;
* a fill that crosses zero closes the old side and opens the remainder on the other side at the
  fill price;
* results are rounded half-even to 18 fractional digits only where they do not fit exactly.

Fees are not part of any of this; they are stored and reported separately.
``recompute`` replays trades through the very same arithmetic (``step_in_context``, which
``apply_fill`` wraps), so verification is exact.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, replace
from decimal import Decimal, getcontext, localcontext

from dal.decimals import DECIMAL_CONTEXT, canonical_decimal, quantize18
from dal.vocabulary import SIDES

ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class PositionState:
    quantity: Decimal = ZERO  # signed: > 0 long, < 0 short
    cost_basis: Decimal = ZERO  # exact total cost of the open quantity, >= 0
    realized_pnl: Decimal = ZERO
    opened_at: dt.datetime | None = None  # time of the fill that opened the current side

    @property
    def avg_price(self) -> Decimal:
        if not self.quantity:
            return ZERO
        with localcontext(DECIMAL_CONTEXT):
            return canonical_amount(quantize18(self.cost_basis / abs(self.quantity)))


@dataclass(frozen=True, slots=True)
class FillResult:
    state: PositionState
    realized: Decimal  # realized PnL of this fill alone (stored on the trade)
    # When the position this fill reduced was opened (stored on the trade; its holding time
    # ends with this fill); None for a fill that opens or adds.
    reduced_opened_at: dt.datetime | None = None


def reduced_opened_at(state: PositionState, side: str) -> dt.datetime | None:
    """The ``opened_at`` of ``state`` when a ``side`` fill reduces it, else None."""
    held = state.quantity
    if not held or (held > 0) == (side == "BUY"):
        return None
    return state.opened_at


def holding_seconds(opened_at: dt.datetime | None, closed_at: dt.datetime) -> Decimal:
    """Exact seconds from ``opened_at`` to ``closed_at`` (0 without an opening time)."""
    if opened_at is None:
        return ZERO
    held = closed_at - opened_at
    whole = Decimal(held.days * 86400 + held.seconds)
    return canonical_amount(whole + Decimal(held.microseconds).scaleb(-6))


def canonical_amount(value: Decimal) -> Decimal:
    """The canonical value (no trailing zeros, no exponent), as the database hands it back."""
    if not value:  # zero, -0 and 0E-18 alike, without the text round trip
        return ZERO
    return Decimal(canonical_decimal(value))


def apply_fill(
    state: PositionState,
    side: str,
    quantity: Decimal,
    price: Decimal,
    exec_time: dt.datetime | None = None,
) -> FillResult:
    """The position after one fill. Pure: the same inputs always give the same result."""
    with localcontext(DECIMAL_CONTEXT):
        return apply_fill_in_context(state, side, quantity, price, exec_time)


def apply_fill_in_context(
    state: PositionState,
    side: str,
    quantity: Decimal,
    price: Decimal,
    exec_time: dt.datetime | None = None,
) -> FillResult:
    """``apply_fill`` for a caller already inside ``localcontext(DECIMAL_CONTEXT)``. In a
    context of another precision (the default's 28 digits would round) it refuses to compute."""
    new, realized = step_in_context(state, side, quantity, price, exec_time)
    return FillResult(
        canonical_state(new), canonical_amount(realized), reduced_opened_at(state, side)
    )


def canonical_state(state: PositionState) -> PositionState:
    """The same position with its amounts in canonical form."""
    return PositionState(
        canonical_amount(state.quantity),
        canonical_amount(state.cost_basis),
        canonical_amount(state.realized_pnl),
        state.opened_at,
    )


def step_in_context(
    state: PositionState,
    side: str,
    quantity: Decimal,
    price: Decimal,
    exec_time: dt.datetime | None = None,
) -> tuple[PositionState, Decimal]:
    """The arithmetic of ``apply_fill``: the new state and the fill's realized PnL, equal in
    value to ``apply_fill``'s but not in canonical form (``canonical_state``). The canonical
    form never changes a value (every operation here is exact or rounds by value), so replays
    (``dal.positions.derive``) step through a portfolio's trades this way and make the form
    canonical once per position instead of per fill, which is about a third of a replay's
    arithmetic. Replays also enter the decimal context once for all fills rather than per fill
    as ``apply_fill`` does."""
    if getcontext().prec != DECIMAL_CONTEXT.prec:
        raise RuntimeError("position arithmetic needs localcontext(DECIMAL_CONTEXT)")
    if side not in SIDES:
        raise ValueError(f"side must be BUY or SELL, not {side!r}")
    if quantity <= 0 or price <= 0:
        raise ValueError("fill quantity and price must be positive")
    direction = 1 if side == "BUY" else -1
    held = state.quantity
    if held == 0 or (held > 0) == (direction > 0):
        # Opening or adding: the cost basis grows by the fill's notional.
        opened_at = state.opened_at if held else exec_time
        return (
            PositionState(
                held + direction * quantity,
                state.cost_basis + quantize18(quantity * price),
                state.realized_pnl,
                opened_at,
            ),
            ZERO,
        )

    # Reducing (and possibly crossing zero).
    held_abs = abs(held)
    closing = min(quantity, held_abs)
    if closing == held_abs:
        removed = state.cost_basis
    else:
        removed = quantize18(state.cost_basis * closing / held_abs)
    proceeds = closing * price
    realized = quantize18(proceeds - removed if held > 0 else removed - proceeds)
    remainder = quantity - closing
    if remainder:
        # Crossed zero: the remainder opens the other side at the fill price.
        new = PositionState(
            direction * remainder,
            quantize18(remainder * price),
            state.realized_pnl + realized,
            exec_time,
        )
    else:
        left = held + direction * quantity
        new = PositionState(
            left,
            state.cost_basis - removed if left else ZERO,
            state.realized_pnl + realized,
            state.opened_at if left else None,
        )
    return new, realized


def replay(fills: list[tuple[str, Decimal, Decimal, dt.datetime | None]]) -> list[FillResult]:
    """Apply fills (side, quantity, price, exec_time) in the given order from flat."""
    results = []
    state = PositionState()
    with localcontext(DECIMAL_CONTEXT):
        for side, quantity, price, exec_time in fills:
            result = apply_fill_in_context(state, side, quantity, price, exec_time)
            results.append(result)
            state = result.state
    return results


def unrealized_pnl(state: PositionState, mark: Decimal) -> Decimal:
    """PnL of the open quantity at ``mark``: |Q| × mark − cost for a long, the reverse short."""
    if not state.quantity:
        return ZERO
    with localcontext(DECIMAL_CONTEXT):
        value = abs(state.quantity) * mark
        pnl = value - state.cost_basis if state.quantity > 0 else state.cost_basis - value
        return canonical_amount(quantize18(pnl))


__all__ = [
    "FillResult",
    "PositionState",
    "apply_fill",
    "apply_fill_in_context",
    "canonical_amount",
    "canonical_state",
    "holding_seconds",
    "reduced_opened_at",
    "replace",
    "replay",
    "step_in_context",
    "unrealized_pnl",
]
