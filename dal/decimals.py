"""Exact decimal amounts: the one context, the checks and the one text form every amount of
tradebook goes through (money, prices, quantities, fees, PnL, and an order's notional)."""

from __future__ import annotations

import decimal

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
    # Trailing zeros do not count against the limits: 1.500 has one fractional digit. They are
    # stripped exactly (normalize() would round a value of more than 80 digits first).
    sign, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)
    if not any(digits):
        value, digits, exponent = decimal.Decimal(0), (0,), 0
    else:
        while digits[-1] == 0:
            digits, exponent = digits[:-1], exponent + 1
        value = decimal.Decimal((sign, digits, exponent))
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


def notional_text(value: decimal.Decimal) -> str:
    if not value:
        return "0"
    return format(value.normalize(NOTIONAL_CONTEXT), "f")


def average_price(notional: decimal.Decimal, quantity: decimal.Decimal) -> decimal.Decimal:
    """``notional / quantity`` rounded once, half-even, to 18 fractional digits (exact
    integer arithmetic: no intermediate rounding)."""
    n_sign, n_digits, n_exp = notional.as_tuple()
    q_sign, q_digits, q_exp = quantity.as_tuple()
    assert isinstance(n_exp, int) and isinstance(q_exp, int)  # finite amounts
    numerator = int("".join(map(str, n_digits)))
    denominator = int("".join(map(str, q_digits)))
    # notional / quantity × 10^18 = numerator × 10^(n_exp - q_exp + 18) / denominator
    shift = n_exp - q_exp + SCALE
    if shift >= 0:
        numerator *= 10**shift
    else:
        denominator *= 10**-shift
    whole, rest = divmod(numerator, denominator)
    twice = 2 * rest
    if twice > denominator or (twice == denominator and whole % 2):
        whole += 1
    if n_sign != q_sign:
        whole = -whole
    return decimal.Decimal(
        canonical_decimal(decimal.Decimal(whole).scaleb(-SCALE, DECIMAL_CONTEXT))
    )
