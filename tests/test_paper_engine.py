"""The paper matching engine: one test per fill rule, time in force, the size cap, cancel,
rejections, exact fee and slippage arithmetic, and determinism."""

from __future__ import annotations

import dataclasses
import datetime as dt
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest

from trading.events import FillEvent, OrderUpdate
from trading.market import Bar
from trading.paper_engine import (
    TRAILING_REFUSED,
    PaperConfig,
    PaperEngine,
    PaperOrder,
)

T0 = dt.datetime(2024, 3, 1, 12, 0, tzinfo=dt.UTC)
SYMBOL = "BTCUSDT"
D = Decimal


def at(minutes: int) -> dt.datetime:
    return T0 + dt.timedelta(minutes=minutes)


def bar(
    minute: int, open_: str, high: str, low: str, close: str | None = None, symbol: str = SYMBOL
) -> Bar:
    return Bar(symbol, at(minute), D(open_), D(high), D(low), D(close or open_))


def flat(minute: int, price: str, symbol: str = SYMBOL) -> Bar:
    return bar(minute, price, price, price, price, symbol)


def order(
    cid: str = "o1",
    side: str = "BUY",
    kind: str = "MARKET",
    qty: str | Decimal = "1",
    price: str | None = None,
    stop: str | None = None,
    tif: str | None = None,
    day_ends_at: dt.datetime | None = None,
    fee_currency: str | None = "USDT",
    symbol: str = SYMBOL,
) -> PaperOrder:
    return PaperOrder(
        client_order_id=cid,
        symbol=symbol,
        side=side,  # type: ignore[arg-type]
        order_type=kind,  # type: ignore[arg-type]
        quantity=D(qty) if isinstance(qty, str) else qty,
        price=None if price is None else D(price),
        stop_price=None if stop is None else D(stop),
        time_in_force=tif,  # type: ignore[arg-type]
        placed_at=at(0),
        day_ends_at=day_ends_at,
        fee_currency=fee_currency,
    )


def engine(**config: Any) -> PaperEngine:
    return PaperEngine(PaperConfig(**config))


def placed(eng: PaperEngine, *orders: PaperOrder, now: dt.datetime = T0) -> None:
    for o in orders:
        (update,) = eng.submit(o, now)
        assert update.status == "NEW", update.reason


def kinds(events: list[OrderUpdate | FillEvent]) -> list[str]:
    return ["FILL" if isinstance(e, FillEvent) else e.status for e in events]


def fills(events: list[OrderUpdate | FillEvent]) -> list[FillEvent]:
    return [e for e in events if isinstance(e, FillEvent)]


def only_fill(events: list[OrderUpdate | FillEvent]) -> FillEvent:
    assert kinds(events) == ["FILL", "FILLED"]
    fill = events[0]
    assert isinstance(fill, FillEvent)
    return fill


# --- submit -----------------------------------------------------------------------------------
def test_submit_accepts_with_a_deterministic_broker_id() -> None:
    eng = engine()
    (first,) = eng.submit(order("a"), T0)
    (second,) = eng.submit(order("b", kind="LIMIT", price="90", tif="GTC"), at(1))
    assert (first.status, first.broker_order_id, first.client_order_id) == ("NEW", "P-1", "a")
    assert first.event_time == T0 and first.exchange == "PAPER" and first.reason is None
    assert first.raw == {"filled_quantity": 0, "remaining_quantity": 1}
    assert (second.broker_order_id, second.price, second.time_in_force) == ("P-2", 90, "GTC")
    assert eng.open_orders() == [order("a"), order("b", kind="LIMIT", price="90", tif="GTC")]


def test_trailing_is_refused() -> None:
    eng = engine()
    (update,) = eng.submit(order(kind="TRAILING", stop="5"), T0)
    assert update.status == "REJECTED"
    assert update.reason == TRAILING_REFUSED
    assert update.reason == "TRAILING orders are not supported by the paper gateway"
    assert update.broker_order_id == "P-1"
    assert eng.open_orders() == []
    assert eng.on_bar(bar(1, "100", "200", "1")) == []


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"kind": "LIMIT"}, "a LIMIT order needs a price"),
        ({"kind": "LIMIT", "price": "1", "stop": "1"}, "a LIMIT order takes no stop price"),
        ({"kind": "MARKET", "price": "1"}, "a MARKET order takes no limit price"),
        ({"kind": "MARKET", "stop": "1"}, "a MARKET order takes no stop price"),
        ({"kind": "STOP"}, "a STOP order needs a stop price"),
        ({"kind": "STOP", "stop": "1", "price": "1"}, "a STOP order takes no limit price"),
        ({"kind": "STOP_LIMIT", "stop": "1"}, "a STOP_LIMIT order needs a price"),
        ({"kind": "STOP_LIMIT", "price": "1"}, "a STOP_LIMIT order needs a stop price"),
        ({"kind": "ICEBERG"}, "unknown order type 'ICEBERG'"),
        ({"side": "HOLD"}, "unknown side 'HOLD'; give BUY or SELL"),
        ({"tif": "GTD"}, "unknown time in force 'GTD'"),
        ({"qty": "0"}, "quantity must be positive, not 0"),
        ({"qty": "-1"}, "quantity must be positive, not -1"),
        ({"qty": 1.5}, "quantity must be a Decimal, not float"),
        ({"qty": D("NaN")}, "quantity must be positive, not NaN"),
        ({"qty": "1E-19"}, "quantity 1E-19 has more than 18 fractional digits"),
        ({"kind": "LIMIT", "price": "-5"}, "price must be positive, not -5"),
        ({"cid": ""}, "the order needs a client_order_id"),
        ({"symbol": ""}, "the order needs a symbol"),
        ({"tif": "DAY"}, "a DAY order needs day_ends_at (the end of the user's trading day)"),
        (
            {"tif": "DAY", "day_ends_at": T0},
            "the day of this DAY order ended at 2024-03-01T12:00:00+00:00",
        ),
        ({"tif": "GTC", "day_ends_at": at(60)}, "day_ends_at is only for DAY orders"),
        (
            {"fee_currency": None},
            "no fee currency: give the order's fee_currency or PaperConfig.fee_currency",
        ),
    ],
)
def test_bad_orders_are_rejected_with_a_reason(kwargs: dict[str, Any], reason: str) -> None:
    eng = engine()
    (update,) = eng.submit(order(**kwargs), T0)
    assert (update.status, update.reason) == ("REJECTED", reason)
    assert update.event_time == T0
    assert eng.open_orders() == []


def test_naive_placed_at_is_rejected_and_naive_now_raises() -> None:
    eng = engine()
    naive = dataclasses.replace(order(), placed_at=dt.datetime(2024, 3, 1, 12))
    (update,) = eng.submit(naive, T0)
    assert (update.status, update.reason) == ("REJECTED", "placed_at must be an aware datetime")
    with pytest.raises(ValueError, match="naive"):
        eng.submit(order(), dt.datetime(2024, 3, 1, 12))


def test_duplicate_client_order_id_is_rejected_while_open_and_after_close() -> None:
    eng = engine()
    placed(eng, order("dup"))
    (again,) = eng.submit(order("dup"), T0)
    assert (again.status, again.reason) == ("REJECTED", "duplicate client_order_id 'dup'")
    assert again.broker_order_id == "P-2"
    assert len(eng.open_orders()) == 1
    only_fill(eng.on_bar(flat(1, "100")))
    (after_fill,) = eng.submit(order("dup"), at(1))
    assert after_fill.status == "REJECTED"


def test_a_rejected_client_id_can_be_reused() -> None:
    eng = engine()
    (rejected,) = eng.submit(order("x", kind="LIMIT"), T0)
    assert rejected.status == "REJECTED"
    (accepted,) = eng.submit(order("x", kind="LIMIT", price="1"), T0)
    assert accepted.status == "NEW"


# --- MARKET -----------------------------------------------------------------------------------
def test_market_buy_fills_at_the_next_bar_open_plus_slippage() -> None:
    eng = engine()
    placed(eng, order(qty="2"), now=at(0))
    assert eng.on_bar(bar(0, "90", "95", "85")) == []  # the bar current at submission
    events = eng.on_bar(bar(1, "100", "110", "95"))
    fill = only_fill(events)
    assert fill.price == D("100.05")  # 100 × (1 + 5/10000)
    assert fill.quantity == 2
    assert fill.fee == D("0.2001")  # 2 × 100.05 × 10/10000
    assert fill.fee_currency == "USDT"
    assert fill.raw == {"reference_price": 100}
    assert (fill.broker_trade_id, fill.broker_order_id, fill.client_order_id) == (
        "PT-1",
        "P-1",
        "o1",
    )
    assert fill.exec_time == at(1) and fill.exchange == "PAPER" and fill.side == "BUY"
    update = events[1]
    assert isinstance(update, OrderUpdate)
    assert (update.status, update.event_time) == ("FILLED", at(1))
    assert update.raw == {"filled_quantity": 2, "remaining_quantity": 0}
    assert eng.open_orders() == []
    assert eng.on_bar(bar(2, "100", "110", "95")) == []


def test_market_submitted_between_bars_fills_at_the_next_bar() -> None:
    eng = engine()
    placed(eng, order(), now=at(0) + dt.timedelta(seconds=30))
    assert eng.on_bar(bar(0, "90", "95", "85")) == []
    assert only_fill(eng.on_bar(bar(1, "100", "110", "95"))).price == D("100.05")


def test_market_sell_gets_the_open_minus_slippage() -> None:
    eng = engine()
    placed(eng, order(side="SELL", qty="3"))
    fill = only_fill(eng.on_bar(bar(1, "100", "101", "99")))
    assert fill.price == D("99.95")  # 100 × (1 − 5/10000)
    assert fill.fee == D("0.29985")  # 3 × 99.95 × 10/10000
    assert fill.side == "SELL"


# --- LIMIT ------------------------------------------------------------------------------------
def test_limit_buy_waits_for_the_low_then_fills_at_the_limit() -> None:
    eng = engine()
    placed(eng, order(kind="LIMIT", price="95", tif="GTC"))
    assert eng.on_bar(bar(1, "100", "101", "95.01")) == []
    fill = only_fill(eng.on_bar(bar(2, "100", "101", "94")))
    assert fill.price == 95  # min(open, limit), no slippage
    assert fill.raw == {"reference_price": 95}


def test_limit_buy_fills_at_the_open_when_the_bar_gaps_below() -> None:
    eng = engine()
    placed(eng, order(kind="LIMIT", price="95"))
    assert only_fill(eng.on_bar(bar(1, "90", "96", "89"))).price == 90


def test_limit_buy_fills_when_the_low_touches_the_limit() -> None:
    eng = engine()
    placed(eng, order(kind="LIMIT", price="95"))
    assert only_fill(eng.on_bar(bar(1, "100", "101", "95"))).price == 95


def test_limit_sell_waits_for_the_high_then_fills_at_the_limit() -> None:
    eng = engine()
    placed(eng, order(side="SELL", kind="LIMIT", price="105"))
    assert eng.on_bar(bar(1, "100", "104.99", "99")) == []
    assert only_fill(eng.on_bar(bar(2, "100", "106", "99"))).price == 105


def test_limit_sell_fills_at_the_open_when_the_bar_gaps_above() -> None:
    eng = engine()
    placed(eng, order(side="SELL", kind="LIMIT", price="105"))
    assert only_fill(eng.on_bar(bar(1, "110", "111", "104"))).price == 110


# --- STOP -------------------------------------------------------------------------------------
def test_stop_buy_triggers_on_the_high_and_fills_at_the_stop_plus_slippage() -> None:
    eng = engine()
    placed(eng, order(kind="STOP", stop="105"))
    assert eng.on_bar(bar(1, "100", "104.99", "95")) == []
    fill = only_fill(eng.on_bar(bar(2, "100", "106", "99")))
    assert fill.price == D("105.0525")  # max(open, stop) × 1.0005
    assert fill.raw == {"reference_price": 105}


def test_stop_buy_gapping_above_fills_at_the_open_plus_slippage() -> None:
    eng = engine()
    placed(eng, order(kind="STOP", stop="105"))
    assert only_fill(eng.on_bar(bar(1, "107", "108", "106"))).price == D("107.0535")


def test_stop_sell_triggers_on_the_low_and_fills_at_the_stop_minus_slippage() -> None:
    eng = engine()
    placed(eng, order(side="SELL", kind="STOP", stop="95"))
    assert eng.on_bar(bar(1, "100", "101", "95.01")) == []
    assert only_fill(eng.on_bar(bar(2, "100", "101", "94"))).price == D("94.9525")


def test_stop_sell_gapping_below_fills_at_the_open_minus_slippage() -> None:
    eng = engine()
    placed(eng, order(side="SELL", kind="STOP", stop="95"))
    assert only_fill(eng.on_bar(bar(1, "93", "94", "92"))).price == D("92.9535")


def test_stop_remainder_after_the_cap_fills_at_later_opens() -> None:
    eng = engine(max_fill_quantity=D("1"))
    placed(eng, order(kind="STOP", stop="105", qty="2"))
    first = eng.on_bar(bar(1, "100", "106", "99"))
    assert kinds(first) == ["FILL", "PARTIALLY_FILLED"]
    assert fills(first)[0].price == D("105.0525")
    second = eng.on_bar(bar(2, "103", "104", "102"))  # below the stop: still fills, as market
    assert kinds(second) == ["FILL", "FILLED"]
    assert fills(second)[0].price == D("103.0515")


# --- STOP_LIMIT -------------------------------------------------------------------------------
def test_stop_limit_buy_does_nothing_until_triggered() -> None:
    eng = engine()
    placed(eng, order(kind="STOP_LIMIT", stop="105", price="106"))
    assert eng.on_bar(bar(1, "100", "104", "90")) == []  # low is under the limit: not armed
    assert len(eng.open_orders()) == 1


def test_stop_limit_buy_touched_inside_the_bar_fills_at_the_stop() -> None:
    eng = engine()
    placed(eng, order(kind="STOP_LIMIT", stop="105", price="106"))
    fill = only_fill(eng.on_bar(bar(1, "100", "107", "99")))
    assert fill.price == 105  # no slippage on a limit fill


def test_stop_limit_buy_with_limit_under_stop_rests_then_fills_as_limit() -> None:
    eng = engine()
    placed(eng, order(kind="STOP_LIMIT", stop="105", price="104"))
    assert eng.on_bar(bar(1, "100", "106", "99")) == []  # triggered inside the bar; path unknown
    assert eng.on_bar(bar(2, "105", "106", "104.5")) == []
    assert only_fill(eng.on_bar(bar(3, "105", "106", "103"))).price == 104


def test_stop_limit_buy_gapping_through_applies_the_limit_to_the_whole_bar() -> None:
    eng = engine()
    placed(eng, order(kind="STOP_LIMIT", stop="105", price="106", tif="GTC"))
    assert only_fill(eng.on_bar(bar(1, "108", "109", "105.5"))).price == 106

    eng = engine()
    placed(eng, order(kind="STOP_LIMIT", stop="105", price="106"))
    assert eng.on_bar(bar(1, "108", "109", "107")) == []  # triggered, limit not reached
    assert only_fill(eng.on_bar(bar(2, "101", "102", "100"))).price == 101  # gap below: open


def test_stop_limit_sell_touched_inside_the_bar_fills_at_the_stop() -> None:
    eng = engine()
    placed(eng, order(side="SELL", kind="STOP_LIMIT", stop="95", price="94"))
    assert eng.on_bar(bar(1, "100", "101", "96")) == []
    assert only_fill(eng.on_bar(bar(2, "100", "101", "93"))).price == 95


def test_stop_limit_sell_with_limit_over_stop_rests_then_fills_as_limit() -> None:
    eng = engine()
    placed(eng, order(side="SELL", kind="STOP_LIMIT", stop="95", price="96"))
    assert eng.on_bar(bar(1, "100", "101", "94")) == []
    assert only_fill(eng.on_bar(bar(2, "95", "97", "94"))).price == 96


def test_stop_limit_sell_gapping_through_applies_the_limit_to_the_whole_bar() -> None:
    eng = engine()
    placed(eng, order(side="SELL", kind="STOP_LIMIT", stop="95", price="94"))
    assert only_fill(eng.on_bar(bar(1, "92", "94.5", "91"))).price == 94

    eng = engine()
    placed(eng, order(side="SELL", kind="STOP_LIMIT", stop="95", price="94"))
    assert eng.on_bar(bar(1, "92", "93", "91")) == []
    assert only_fill(eng.on_bar(bar(2, "99", "100", "98"))).price == 99  # gap above: open


# --- size cap ---------------------------------------------------------------------------------
def test_size_cap_gives_partial_fills_then_filled() -> None:
    eng = engine(max_fill_quantity=D("0.4"))
    placed(eng, order(qty="1"))
    events = [eng.on_bar(flat(m, p)) for m, p in ((1, "100"), (2, "200"), (3, "300"))]
    assert [kinds(e) for e in events] == [
        ["FILL", "PARTIALLY_FILLED"],
        ["FILL", "PARTIALLY_FILLED"],
        ["FILL", "FILLED"],
    ]
    assert [(f.quantity, f.price, f.broker_trade_id) for e in events for f in fills(e)] == [
        (D("0.4"), D("100.05"), "PT-1"),
        (D("0.4"), D("200.1"), "PT-2"),
        (D("0.2"), D("300.15"), "PT-3"),
    ]
    updates = [e[1] for e in events]
    assert [(u.raw["filled_quantity"], u.raw["remaining_quantity"]) for u in updates] == [
        (D("0.4"), D("0.6")),
        (D("0.8"), D("0.2")),
        (D("1.0"), D("0.0")),
    ]
    assert all(u.quantity == 1 for u in updates)
    assert eng.open_orders() == []


def test_size_cap_on_a_limit_order_fills_only_on_qualifying_bars() -> None:
    eng = engine(max_fill_quantity=D("1"))
    placed(eng, order(kind="LIMIT", price="95", qty="2"))
    assert kinds(eng.on_bar(bar(1, "96", "97", "94"))) == ["FILL", "PARTIALLY_FILLED"]
    assert eng.on_bar(bar(2, "97", "98", "96")) == []
    assert kinds(eng.on_bar(bar(3, "94", "95", "93"))) == ["FILL", "FILLED"]


# --- time in force ----------------------------------------------------------------------------
def test_gtc_and_no_time_in_force_stay_open_until_filled() -> None:
    eng = engine()
    placed(eng, order("gtc", kind="LIMIT", price="50", tif="GTC"))
    placed(eng, order("none", kind="LIMIT", price="50", tif=None))
    for minute in range(1, 50):
        assert eng.on_bar(flat(minute, "100")) == []
    assert [o.client_order_id for o in eng.open_orders()] == ["gtc", "none"]
    assert kinds(eng.on_bar(flat(50, "50"))) == ["FILL", "FILLED", "FILL", "FILLED"]


def test_ioc_with_the_cap_fills_what_it_can_and_expires_the_rest() -> None:
    eng = engine(max_fill_quantity=D("0.4"))
    placed(eng, order(qty="1", tif="IOC"))
    events = eng.on_bar(flat(1, "100"))
    assert kinds(events) == ["FILL", "PARTIALLY_FILLED", "EXPIRED"]
    assert fills(events)[0].quantity == D("0.4")
    expired = events[2]
    assert isinstance(expired, OrderUpdate)
    assert expired.reason == "IOC: the unfilled 0.6 expired"
    assert expired.raw == {"filled_quantity": D("0.4"), "remaining_quantity": D("0.6")}
    assert expired.event_time == at(1)
    assert eng.open_orders() == []


def test_ioc_limit_not_reached_on_the_first_bar_expires_unfilled() -> None:
    eng = engine()
    placed(eng, order(kind="LIMIT", price="95", tif="IOC"))
    events = eng.on_bar(bar(1, "100", "101", "96"))
    assert kinds(events) == ["EXPIRED"]
    assert eng.on_bar(bar(2, "90", "91", "89")) == []


def test_ioc_limit_reached_fills_completely() -> None:
    eng = engine()
    placed(eng, order(kind="LIMIT", price="95", tif="IOC"))
    assert only_fill(eng.on_bar(bar(1, "100", "101", "94"))).price == 95


def test_ioc_stop_waits_for_its_trigger_bar() -> None:
    eng = engine()
    placed(eng, order(kind="STOP", stop="105", tif="IOC"))
    assert eng.on_bar(bar(1, "100", "101", "99")) == []
    assert only_fill(eng.on_bar(bar(2, "100", "106", "99"))).price == D("105.0525")


def test_ioc_stop_limit_resting_after_its_trigger_expires() -> None:
    eng = engine()
    placed(eng, order(kind="STOP_LIMIT", stop="105", price="104", tif="IOC"))
    assert kinds(eng.on_bar(bar(1, "100", "106", "99"))) == ["EXPIRED"]


def test_fok_with_the_cap_smaller_than_the_quantity_expires_entirely() -> None:
    eng = engine(max_fill_quantity=D("0.5"))
    placed(eng, order(qty="1", tif="FOK"))
    events = eng.on_bar(flat(1, "100"))
    assert kinds(events) == ["EXPIRED"]
    expired = events[0]
    assert isinstance(expired, OrderUpdate)
    assert expired.reason == "FOK: only 0.5 of 1 could fill in one bar (max_fill_quantity 0.5)"
    assert expired.raw == {"filled_quantity": 0, "remaining_quantity": 1}
    assert eng.open_orders() == []


def test_fok_within_the_cap_fills_completely() -> None:
    eng = engine(max_fill_quantity=D("1"))
    placed(eng, order(qty="1", tif="FOK"))
    assert only_fill(eng.on_bar(flat(1, "100"))).quantity == 1


def test_fok_limit_not_reached_expires() -> None:
    eng = engine()
    placed(eng, order(kind="LIMIT", price="95", tif="FOK"))
    events = eng.on_bar(bar(1, "100", "101", "96"))
    assert kinds(events) == ["EXPIRED"]
    assert events[0].reason == "FOK: the order could not fill on its first eligible bar"  # type: ignore[union-attr]


def test_day_order_fills_before_the_day_ends() -> None:
    eng = engine()
    placed(eng, order(kind="LIMIT", price="95", tif="DAY", day_ends_at=at(10)))
    assert eng.on_bar(bar(8, "100", "101", "96")) == []
    assert only_fill(eng.on_bar(bar(9, "100", "101", "94"))).price == 95


def test_day_order_expires_at_day_end_before_matching() -> None:
    eng = engine()
    placed(eng, order(kind="LIMIT", price="95", tif="DAY", day_ends_at=at(10)))
    assert eng.on_bar(bar(9, "100", "101", "96")) == []
    events = eng.on_bar(bar(10, "90", "91", "89"))  # would fill, but the day is over
    assert kinds(events) == ["EXPIRED"]
    expired = events[0]
    assert isinstance(expired, OrderUpdate)
    assert expired.reason == "DAY order expired at 2024-03-01T12:10:00+00:00"
    assert expired.event_time == at(10)
    assert eng.open_orders() == []


def test_day_order_partially_filled_expires_with_its_remainder() -> None:
    eng = engine(max_fill_quantity=D("1"))
    placed(eng, order(qty="3", tif="DAY", day_ends_at=at(2)))
    assert kinds(eng.on_bar(flat(1, "100"))) == ["FILL", "PARTIALLY_FILLED"]
    events = eng.on_bar(flat(5, "100"))  # first bar after the end, late: still expires
    assert kinds(events) == ["EXPIRED"]
    assert events[0].raw == {"filled_quantity": 1, "remaining_quantity": 2}


# --- cancel -----------------------------------------------------------------------------------
def test_cancel_an_open_order() -> None:
    eng = engine(max_fill_quantity=D("1"))
    placed(eng, order("c", qty="2"))
    eng.on_bar(flat(1, "100"))
    (update,) = eng.cancel("c", at(1) + dt.timedelta(seconds=5))
    assert (update.status, update.broker_order_id, update.client_order_id) == (
        "CANCELED",
        "P-1",
        "c",
    )
    assert update.event_time == at(1) + dt.timedelta(seconds=5)
    assert update.raw == {"filled_quantity": 1, "remaining_quantity": 1}
    assert eng.open_orders() == []
    assert eng.on_bar(flat(2, "100")) == []


def test_cancel_unknown_or_closed_orders_returns_nothing() -> None:
    eng = engine()
    assert eng.cancel("nope", T0) == []
    placed(eng, order("f"), order("c", kind="LIMIT", price="1"))
    only_fill(eng.on_bar(flat(1, "100")))
    assert eng.cancel("f", at(2)) == []  # filled
    assert [u.status for u in eng.cancel("c", at(2))] == ["CANCELED"]
    assert eng.cancel("c", at(3)) == []  # already canceled


# --- fees and slippage, exactly ---------------------------------------------------------------
def test_fee_arithmetic_is_exact_decimal() -> None:
    eng = engine(fee_bps=D("7.5"))
    placed(eng, order(kind="LIMIT", price="123.45", qty="0.3"))
    fill = only_fill(eng.on_bar(bar(1, "124", "125", "123")))
    assert fill.price == D("123.45")
    assert fill.fee == D("0.02777625")  # 0.3 × 123.45 × 7.5 / 10000, no rounding needed
    assert isinstance(fill.fee, Decimal) and isinstance(fill.price, Decimal)
    assert str(fill.fee) == "0.02777625"


def test_fee_currency_comes_from_the_order_else_the_config() -> None:
    eng = engine(fee_currency="BNB")
    placed(eng, order("with", fee_currency="USDT"), order("without", fee_currency=None))
    events = eng.on_bar(flat(1, "100"))
    assert [(f.client_order_id, f.fee_currency) for f in fills(events)] == [
        ("with", "USDT"),
        ("without", "BNB"),
    ]


def test_zero_fee_needs_no_currency() -> None:
    eng = engine(fee_bps=D("0"), slippage_bps=D("0"))
    placed(eng, order(fee_currency=None))
    fill = only_fill(eng.on_bar(flat(1, "100")))
    assert (fill.price, fill.fee, fill.fee_currency) == (100, 0, None)


def test_slippage_rounds_half_even_to_18_places() -> None:
    # 0.5 × 5E-18 = 2.5E-18 → 2E-18 (half-even; half-up would give 3E-18)
    eng = engine(slippage_bps=D("5000"), fee_bps=D("0"))
    placed(eng, order(side="SELL"), order("b", side="SELL", symbol="ETHUSDT"))
    assert only_fill(eng.on_bar(flat(1, "0.000000000000000005"))).price == D("2E-18")
    # 0.5 × 7E-18 = 3.5E-18 → 4E-18
    assert only_fill(eng.on_bar(flat(1, "0.000000000000000007", "ETHUSDT"))).price == D("4E-18")


@pytest.mark.parametrize("side", ["BUY", "SELL"])
@pytest.mark.parametrize(
    ("open_", "slippage", "fee", "qty"),
    [
        ("0.123456789012345678", "5", "10", "1.5"),
        ("98765.432109876543210987", "3.3", "7.77", "0.000123"),
        ("1.000000000000000001", "1", "0.01", "123456789.123456789"),
        ("27.3", "12.5", "2.5", "0.07"),
    ],
)
def test_slippage_and_fee_match_an_exact_rational_reference(
    side: str, open_: str, slippage: str, fee: str, qty: str
) -> None:
    open_ = format(D(open_).quantize(D("1E-18")), "f")  # bar prices must fit 18 places
    eng = engine(slippage_bps=D(slippage), fee_bps=D(fee))
    placed(eng, order(side=side, qty=qty))
    fill = only_fill(eng.on_bar(flat(1, open_)))

    move = Fraction(D(slippage)) / 10000
    exact_price = Fraction(D(open_)) * (1 + move if side == "BUY" else 1 - move)
    assert fill.price == _round_half_even_18(exact_price)
    exact_fee = Fraction(D(qty)) * Fraction(fill.price) * Fraction(D(fee)) / 10000
    assert fill.fee == _round_half_even_18(exact_fee)
    assert fill.raw["reference_price"] == D(open_)


def _round_half_even_18(value: Fraction) -> Decimal:
    scaled = value * 10**18
    floor = scaled.numerator // scaled.denominator
    rest = scaled - floor
    if rest > Fraction(1, 2) or (rest == Fraction(1, 2) and floor % 2 == 1):
        floor += 1
    return D(floor).scaleb(-18)


# --- bars -------------------------------------------------------------------------------------
def test_only_the_bar_symbol_is_matched_in_submission_order() -> None:
    eng = engine()
    placed(
        eng,
        order("b1"),
        order("e1", symbol="ETHUSDT"),
        order("b2", side="SELL", kind="LIMIT", price="100"),
    )
    events = eng.on_bar(flat(1, "100"))
    assert [(e.client_order_id, kinds([e])[0]) for e in events] == [
        ("b1", "FILL"),
        ("b1", "FILLED"),
        ("b2", "FILL"),
        ("b2", "FILLED"),
    ]
    assert [o.client_order_id for o in eng.open_orders()] == ["e1"]


def test_replayed_or_late_bars_are_ignored() -> None:
    eng = engine(max_fill_quantity=D("1"))
    placed(eng, order(qty="5"))
    assert len(fills(eng.on_bar(flat(2, "100")))) == 1
    assert eng.on_bar(flat(2, "100")) == []
    assert eng.on_bar(flat(1, "100")) == []
    assert len(fills(eng.on_bar(flat(3, "100")))) == 1


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"high": D("99")}, ValueError),  # high under the open
        ({"low": D("101")}, ValueError),  # low over the open
        ({"close": D("200")}, ValueError),  # close over the high
        ({"open": 100.0}, TypeError),
        ({"open": D("0"), "low": D("0")}, ValueError),
        ({"time": dt.datetime(2024, 3, 1)}, ValueError),
        ({"symbol": ""}, ValueError),
    ],
)
def test_inconsistent_bars_are_refused(fields: dict[str, Any], error: type[Exception]) -> None:
    good = {"symbol": SYMBOL, "time": T0, "open": D(100), "high": D(110), "low": D(90)}
    with pytest.raises(error):
        Bar(**{"close": D(100), **good, **fields})


@pytest.mark.parametrize(
    "fields",
    [
        {"fee_bps": D("-1")},
        {"slippage_bps": D("10000")},
        {"slippage_bps": 5.0},
        {"max_fill_quantity": D("0")},
        {"fee_currency": ""},
    ],
)
def test_bad_configs_are_refused(fields: dict[str, Any]) -> None:
    with pytest.raises((TypeError, ValueError)):
        PaperConfig(**fields)


# --- determinism ------------------------------------------------------------------------------
def _scenario() -> list[Any]:
    eng = engine(max_fill_quantity=D("0.7"))
    out: list[Any] = []
    out += eng.submit(order("m", qty="2"), T0)
    out += eng.submit(order("l", side="SELL", kind="LIMIT", price="103", qty="1"), T0)
    out += eng.submit(order("s", kind="STOP", stop="104", qty="1", tif="IOC"), T0)
    out += eng.submit(order("t", kind="TRAILING", stop="1"), T0)
    out += eng.submit(order("f", qty="1", tif="FOK"), T0)
    out += eng.submit(order("d", kind="LIMIT", price="1", tif="DAY", day_ends_at=at(3)), T0)
    out += eng.on_bar(bar(1, "100", "105", "99"))
    out += eng.on_bar(bar(2, "102", "104", "101"))
    out += eng.cancel("l", at(2))
    out += eng.on_bar(bar(3, "101", "102", "100"))
    return out


def test_same_inputs_give_the_same_events() -> None:
    first, second = _scenario(), _scenario()
    assert first == second
    assert [kinds([e])[0] for e in first] == [
        *["NEW", "NEW", "NEW", "REJECTED", "NEW", "NEW"],
        # bar 1: m 0.7 at the open; l (high 105 ≥ 103) 0.7 at 103;
        # s triggers (IOC) → 0.7 and the rest expires; f FOK capped → expired
        *["FILL", "PARTIALLY_FILLED", "FILL", "PARTIALLY_FILLED"],
        *["FILL", "PARTIALLY_FILLED", "EXPIRED", "EXPIRED"],
        # bar 2: m 0.7 more; l high 104 ≥ 103 → the last 0.3
        *["FILL", "PARTIALLY_FILLED", "FILL", "FILLED"],
        # cancel of the filled l: nothing; bar 3: m the last 0.6; d expires
        *["FILL", "FILLED", "EXPIRED"],
    ]
    trade_ids = [e.broker_trade_id for e in first if isinstance(e, FillEvent)]
    assert trade_ids == [f"PT-{n}" for n in range(1, 7)]
    order_ids = [e.broker_order_id for e in first[:6]]
    assert order_ids == [f"P-{n}" for n in range(1, 7)]
    for event in first:
        for value in dataclasses.asdict(event).values():
            assert not isinstance(value, float)
