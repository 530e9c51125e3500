"""The peer bench's fills (bench/peers): what both sides ingest, and the exact value freqtrade's
float profit is measured against. Needs no freqtrade: only the DAL side runs here."""

from __future__ import annotations

from decimal import Decimal

from bench.peers.__main__ import count_positions, first_wrong_decimal
from bench.peers.fills import STEP, make_sequence
from dal.database import Database
from tests.factories import make_instrument, make_portfolio, make_user


def test_positions_are_long_only_and_close_with_their_last_sell() -> None:
    fills = make_sequence(400)
    assert fills == make_sequence(400) and fills[:50] == make_sequence(50)  # a prefix
    held, closes = Decimal(0), 0
    for f in fills:
        assert f.quantity > 0 and f.quantity % STEP == 0 and f.price % Decimal("0.01") == 0
        if not held:
            assert f.side == "BUY"  # a position opens with a buy
        held += f.quantity if f.side == "BUY" else -f.quantity
        assert held >= 0  # never short: freqtrade's spot trades are long-only
        closes += not held
    assert count_positions(fills) == closes + (1 if held else 0)
    assert closes > 50


def test_first_wrong_decimal() -> None:
    exact = Decimal("-1922.9576233")
    assert first_wrong_decimal(exact, Decimal("-1922.9576232199938")) == 7
    assert first_wrong_decimal(exact, Decimal("-1922.95762330000001")) == 14
    assert first_wrong_decimal(exact, exact) is None
    assert first_wrong_decimal(exact, -exact) == 0


async def test_the_dal_realizes_exactly_what_the_fills_gained(db: Database) -> None:
    """On fills that end flat, all that was realized is what the sells brought in less what
    the buys cost: a value computed by hand, which the PnL the DAL stores on the trades must
    equal exactly."""
    longer = make_sequence(60)
    held, flat_at = Decimal(0), 0
    for i, f in enumerate(longer):
        held += f.quantity if f.side == "BUY" else -f.quantity
        if not held:
            flat_at = i + 1
    fills = make_sequence(flat_at)
    gained = sum(
        (f.quantity * f.price * (1 if f.side == "SELL" else -1) for f in fills), Decimal(0)
    )
    actor = await make_user(db)
    inst = await make_instrument(db)
    pid = await make_portfolio(db, actor)
    realized = Decimal(0)
    async with db.session(actor) as s:
        for f in fills:
            result = await s.trades.ingest_fill(f.for_dal(pid, inst))
            realized += result.trade.realized_pnl
        assert await s.positions.snapshot(pid) == []  # flat
        assert await s.positions.verify(pid) == []  # the stored PnL replays exactly
    assert realized == gained
