"""Binance Spot ``executionReport`` → OrderUpdate / FillEvent, on recorded-style payloads.

Pure mapping: no database, no network. Payloads live in ``tests/payloads/binance/``.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from dal.errors import InvalidInput, NotFound
from trading.binance_gateway import order_refusal
from trading.brokers.binance import (
    ExecutionReport,
    parse_event,
    payload_to_events,
    to_events,
)
from trading.events import FillEvent, OrderUpdate

PAYLOADS = Path(__file__).parent / "payloads" / "binance"
KNOWN = {"BTCUSDT": "BTCUSDT", "ETHUSDT": "ETHUSDT"}
BUY_UID = "6f1c2a9e-4d3b-4a57-9b1e-2f8d7c3a1b05"

SEQUENCE = [
    "limit_buy_1_new.json",
    "limit_buy_2_trade_partial.json",
    "limit_buy_3_trade_filled.json",
    "cancel.json",
    "rejected.json",
    "ioc_1_trade.json",
    "ioc_2_expired.json",
    "stp_expired_in_match.json",
    "pending_cancel.json",
    "outbound_account_position.json",
    "ws_api_event_stream_terminated.json",
    "ws_api_limit_buy_3_trade_filled.json",
]


def load(name: str) -> dict[str, Any]:
    return json.loads((PAYLOADS / name).read_text(encoding="utf-8"))


def events(name: str) -> list[Any]:
    return payload_to_events(load(name), KNOWN)


def ms(value: int) -> dt.datetime:
    return dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(milliseconds=value)


def kinds(evs: list[Any]) -> list[tuple[str, str | None]]:
    return [(type(e).__name__, getattr(e, "status", None)) for e in evs]


def test_every_payload_file_is_covered() -> None:
    assert sorted(p.name for p in PAYLOADS.glob("*.json")) == sorted(SEQUENCE)


# --- the LIMIT BUY sequence: NEW → PARTIALLY_FILLED → FILLED ---------------------------------


def test_new_is_an_order_update() -> None:
    payload = load("limit_buy_1_new.json")
    [update] = payload_to_events(payload, KNOWN)
    assert update == OrderUpdate(
        symbol="BTCUSDT",
        exchange="BINANCE",
        broker_order_id="28457120034",
        client_order_id=BUY_UID,
        status="NEW",
        side="BUY",
        order_type="LIMIT",
        quantity=Decimal("0.5"),
        price=Decimal("27000"),
        stop_price=None,  # P is "0.00000000"
        time_in_force="GTC",
        event_time=ms(1710403200125),
        reason=None,
        raw=payload,
    )
    assert update.event_time.tzinfo is dt.UTC


def test_partial_fill_is_a_fill_then_partially_filled() -> None:
    fill, update = events("limit_buy_2_trade_partial.json")
    assert isinstance(fill, FillEvent) and isinstance(update, OrderUpdate)
    assert fill.broker_trade_id == "3475910021"
    assert fill.broker_order_id == update.broker_order_id == "28457120034"
    assert fill.client_order_id == update.client_order_id == BUY_UID
    assert (fill.side, fill.quantity, fill.price) == ("BUY", Decimal("0.2"), Decimal("26995.2"))
    assert (fill.fee, fill.fee_currency) == (Decimal("0.0002"), "BTC")
    assert fill.exec_time == ms(1710403200124)  # T, not E
    assert update.status == "PARTIALLY_FILLED"
    assert update.quantity == Decimal("0.5") and update.price == Decimal("27000")


def test_last_fill_uses_l_and_L_not_the_cumulative_z_and_Z() -> None:
    payload = load("limit_buy_3_trade_filled.json")
    fill, update = payload_to_events(payload, KNOWN)
    assert isinstance(fill, FillEvent) and isinstance(update, OrderUpdate)
    assert (payload["l"], payload["z"]) == ("0.30000000", "0.50000000")
    assert fill.quantity == Decimal("0.3")  # l, not z = 0.5
    assert fill.price == Decimal("27000")  # L
    assert (fill.fee, fill.fee_currency) == (Decimal("0.01029661"), "BNB")
    assert update.status == "FILLED"
    assert fill.raw == payload


def test_amounts_are_exact_decimals_from_text() -> None:
    (fill, _), (ioc_fill, _) = events("limit_buy_3_trade_filled.json"), events("ioc_1_trade.json")
    for value in (fill.quantity, fill.price, fill.fee, ioc_fill.price, ioc_fill.fee):
        assert type(value) is Decimal
    assert str(fill.quantity) == "0.3" and str(fill.fee) == "0.01029661"
    assert str(ioc_fill.fee) == "1.08406"  # through a float it would be 1.0840599999…
    assert ioc_fill.quantity * ioc_fill.price == Decimal("1084.06")  # Y, exactly


def test_fill_amounts_add_up_over_the_sequence() -> None:
    fills = [e for name in SEQUENCE[:3] for e in events(name) if isinstance(e, FillEvent)]
    assert sum(f.quantity for f in fills) == Decimal("0.5")  # the final z
    assert sum(f.quantity * f.price for f in fills) == Decimal("13499.04")  # the final Z


def test_fill_without_commission_has_no_fee_currency() -> None:
    payload = load("ioc_1_trade.json") | {"n": "0", "N": None}
    fill, _ = payload_to_events(payload, KNOWN)
    assert isinstance(fill, FillEvent)
    assert (fill.fee, fill.fee_currency) == (Decimal(0), None)


# --- cancel, reject, expire, STP, pending cancel -------------------------------------------


def test_cancel_takes_the_orders_client_id_from_C() -> None:
    payload = load("cancel.json")
    [update] = payload_to_events(payload, KNOWN)
    assert isinstance(update, OrderUpdate)
    assert update.status == "CANCELED"
    assert update.client_order_id == payload["C"] == "0b9e3c1d-8f27-4c61-a5d4-93e7f0b2c6aa"
    assert update.client_order_id != payload["c"]  # the cancel request's own id
    assert update.raw["c"] == payload["c"]  # still on record
    assert update.raw["tradebook"] == {"client_order_id_from": "C"}
    assert (update.side, update.quantity, update.price) == ("SELL", Decimal("1.5"), Decimal(4100))


def test_cancel_without_C_falls_back_to_c() -> None:
    payload = load("cancel.json") | {"C": ""}
    [update] = payload_to_events(payload, KNOWN)
    assert update.client_order_id == payload["c"]
    assert "tradebook" not in update.raw


def test_rejected_carries_the_reason() -> None:
    [update] = events("rejected.json")
    assert (update.status, update.reason) == ("REJECTED", "INSUFFICIENT_BALANCES")
    no_reason = load("rejected.json") | {"r": "NONE"}
    [update] = payload_to_events(no_reason, KNOWN)
    assert isinstance(update, OrderUpdate)
    assert update.reason == "rejected by Binance"


def test_ioc_partial_fill_then_expired() -> None:
    assert kinds(events("ioc_1_trade.json")) == [
        ("FillEvent", None),
        ("OrderUpdate", "PARTIALLY_FILLED"),
    ]
    [update] = events("ioc_2_expired.json")
    assert (update.status, update.time_in_force, update.reason) == ("EXPIRED", "IOC", None)


def test_self_trade_prevention_expires_the_order() -> None:
    payload = load("stp_expired_in_match.json")
    [update] = payload_to_events(payload, KNOWN)
    assert isinstance(update, OrderUpdate)
    assert update.status == "EXPIRED"
    assert update.reason == "expired by self-trade prevention (prevented match 12)"
    assert update.raw["tradebook"] == {"binance_status": "EXPIRED_IN_MATCH", "status": "EXPIRED"}
    assert {k: update.raw[k] for k in ("x", "X", "A", "B")} == {
        "x": "TRADE_PREVENTION",
        "X": "EXPIRED_IN_MATCH",
        "A": "0.25000000",
        "B": "0.25000000",
    }


def test_expired_in_match_on_an_expired_report_is_expired() -> None:
    payload = load("stp_expired_in_match.json") | {"x": "EXPIRED"}
    [update] = payload_to_events(payload, KNOWN)
    assert isinstance(update, OrderUpdate)
    assert update.status == "EXPIRED" and "self-trade prevention" in (update.reason or "")


def test_stp_decrement_on_an_open_order_is_ignored() -> None:
    for status in ("NEW", "PARTIALLY_FILLED"):
        payload = load("stp_expired_in_match.json") | {"X": status, "V": "DECREMENT"}
        assert payload_to_events(payload, KNOWN) == []


def test_pending_cancel_is_ignored() -> None:
    report = parse_event(load("pending_cancel.json"))
    assert report is not None and report.order_status == "PENDING_CANCEL"
    assert to_events(report, KNOWN) == []


def test_a_trade_reported_with_pending_cancel_still_gives_its_fill() -> None:
    payload = load("limit_buy_2_trade_partial.json") | {"X": "PENDING_CANCEL"}
    assert kinds(payload_to_events(payload, KNOWN)) == [("FillEvent", None)]


def test_pending_new_order_list_leg_is_new() -> None:
    payload = load("limit_buy_1_new.json") | {"X": "PENDING_NEW"}
    [update] = payload_to_events(payload, KNOWN)
    assert isinstance(update, OrderUpdate)
    assert update.status == "NEW"
    assert update.raw["tradebook"] == {"binance_status": "PENDING_NEW", "status": "NEW"}


def test_replaced_reports_the_amended_quantity() -> None:
    payload = load("limit_buy_2_trade_partial.json") | {
        "x": "REPLACED",
        "q": "0.40000000",
        "l": "0.00000000",
        "L": "0.00000000",
        "n": "0",
        "N": None,
        "t": -1,
    }
    [update] = payload_to_events(payload, KNOWN)
    assert isinstance(update, OrderUpdate)
    assert (update.status, update.quantity) == ("PARTIALLY_FILLED", Decimal("0.4"))


@pytest.mark.parametrize(
    ("binance_type", "price", "stop", "expected", "noted"),
    [
        ("MARKET", "0.00000000", "0.00000000", "MARKET", False),
        ("LIMIT", "27000.00000000", "0.00000000", "LIMIT", False),
        ("LIMIT_MAKER", "27000.00000000", "0.00000000", "LIMIT", True),
        ("STOP_LOSS", "0.00000000", "26000.00000000", "STOP", False),
        ("STOP_LOSS_LIMIT", "25990.00000000", "26000.00000000", "STOP_LIMIT", False),
        ("TAKE_PROFIT", "0.00000000", "28000.00000000", "STOP", True),
        ("TAKE_PROFIT_LIMIT", "28010.00000000", "28000.00000000", "STOP_LIMIT", True),
    ],
)
def test_order_types(binance_type: str, price: str, stop: str, expected: str, noted: bool) -> None:
    payload = load("limit_buy_1_new.json") | {"o": binance_type, "p": price, "P": stop}
    [update] = payload_to_events(payload, KNOWN)
    assert isinstance(update, OrderUpdate)
    assert update.order_type == expected
    assert update.price == (Decimal(price) or None)
    assert update.stop_price == (Decimal(stop) or None)
    assert update.raw["o"] == binance_type
    note = update.raw.get("tradebook", {})
    assert (note.get("binance_order_type"), note.get("order_type")) == (
        (binance_type, expected) if noted else (None, None)
    )


# --- forms of the message ------------------------------------------------------------------


def test_ws_api_wrapper_equals_plain_form() -> None:
    wrapped = load("ws_api_limit_buy_3_trade_filled.json")
    assert wrapped["subscriptionId"] == 0
    assert payload_to_events(wrapped, KNOWN) == events("limit_buy_3_trade_filled.json")
    assert parse_event(wrapped) == parse_event(wrapped["event"])


def test_text_and_bytes_equal_the_dict() -> None:
    text = (PAYLOADS / "limit_buy_2_trade_partial.json").read_text(encoding="utf-8")
    expected = events("limit_buy_2_trade_partial.json")
    assert payload_to_events(text, KNOWN) == expected
    assert payload_to_events(text.encode(), KNOWN) == expected


@pytest.mark.parametrize(
    "payload",
    [
        load("outbound_account_position.json"),
        load("ws_api_event_stream_terminated.json"),
        {"e": "balanceUpdate", "E": 1710403261460, "a": "BTC", "d": "0.1", "T": 1710403261459},
        {"e": "listStatus", "E": 1710403261461, "s": "BTCUSDT", "g": 2, "c": "OCO"},
        {"e": "listenKeyExpired", "E": 1710403261462, "listenKey": "k"},
        {"e": "externalLockUpdate", "E": 1710403261463, "a": "BTC", "d": "1", "T": 1},
        {"subscriptionId": 3, "event": {"e": "someFutureEvent", "E": 1710403261464}},
    ],
)
def test_other_event_types_are_ignored(payload: dict[str, Any]) -> None:
    assert parse_event(payload) is None
    assert payload_to_events(payload, KNOWN) == []


# --- refused input -------------------------------------------------------------------------


def without(name: str, key: str) -> dict[str, Any]:
    payload = load(name)
    del payload[key]
    return payload


def changed(name: str, **values: Any) -> dict[str, Any]:
    return load(name) | values


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (without("limit_buy_1_new.json", "i"), r"i \(order id\): missing"),
        (without("limit_buy_2_trade_partial.json", "l"), r"l \(last executed quantity\): missing"),
        (changed("limit_buy_2_trade_partial.json", l=0.2), r"l \(.*\): 0\.2 is a float"),
        ('{"e": "executionReport", "q": 0.5}', r"q \(order quantity\): 0\.5 is a float"),
        (changed("limit_buy_1_new.json", X="DONE"), r"X \(order status\): .*got 'DONE'"),
        (changed("limit_buy_1_new.json", x="AMENDED"), r"x \(execution type\): .*'AMENDED'"),
        (changed("limit_buy_1_new.json", o="OCO"), r"o \(order type\)"),
        (changed("limit_buy_1_new.json", f="GTD"), r"f \(time in force\)"),
        (changed("limit_buy_1_new.json", S="buy"), r"S \(side\)"),
        (changed("limit_buy_1_new.json", q="1,5"), r"q \(.*\): '1,5' is not a decimal number"),
        (changed("limit_buy_1_new.json", p="-1"), r"p \(order price\): -1 is negative"),
        (changed("limit_buy_1_new.json", q="NaN"), r"q \(.*\): NaN is not a finite number"),
        (changed("limit_buy_1_new.json", q="0.0000000000000000001"), r"fractional digits"),
        (changed("limit_buy_1_new.json", q=5), r"q \(.*\): 5 is not decimal text"),
        (changed("limit_buy_1_new.json", i="28457120034"), r"i \(order id\)"),
        (changed("limit_buy_1_new.json", i=True), r"i \(order id\)"),
        (changed("limit_buy_1_new.json", E=1710403200125.0), r"E \(event time\): .*not integer"),
        (changed("limit_buy_1_new.json", T=-5), r"T \(transaction time\): .*out of range"),
        (changed("limit_buy_1_new.json", s=""), r"s \(symbol\)"),
        (changed("limit_buy_1_new.json", X="FILLED"), r"NEW with order status FILLED"),
        (changed("limit_buy_2_trade_partial.json", t=-1), r"TRADE report needs a trade id"),
        (changed("limit_buy_2_trade_partial.json", X="NEW"), r"TRADE with order status NEW"),
        (changed("limit_buy_2_trade_partial.json", l="0"), r"positive last quantity l"),
        (changed("limit_buy_2_trade_partial.json", z="0.1"), r"exceeds the cumulative"),
        (changed("limit_buy_2_trade_partial.json", N=None), r"has no commission asset N"),
        ("{not json", r"not valid JSON"),
        ('{"e": "executionReport", "q": NaN}', r"not valid JSON: NaN"),
        (b"\xff\xfe", r"not UTF-8"),
        ("[1, 2]", r"is a JSON object, not list"),
        (42, r"is a JSON object, not int"),
        ({"E": 1}, r"event type 'e' is missing"),
        ({"e": 7}, r"event type 'e' is missing or not text"),
        ({"subscriptionId": 0, "event": "executionReport"}, r"'event' is a str"),
    ],
)
def test_malformed_payloads_are_refused(payload: Any, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        payload_to_events(payload, KNOWN)


def test_refusal_names_the_order() -> None:
    with pytest.raises(InvalidInput, match=r"^invalid Binance executionReport \(order 28457"):
        parse_event(changed("limit_buy_1_new.json", X="DONE"))


def test_unknown_symbol_is_not_found() -> None:
    report = parse_event(changed("limit_buy_1_new.json", s="XYZUSDT"))
    assert report is not None
    with pytest.raises(NotFound, match="unknown symbol XYZUSDT on BINANCE"):
        to_events(report, KNOWN)
    with pytest.raises(NotFound, match="unknown symbol XYZUSDT on BINANCE"):
        to_events(report, lambda symbol: symbol in KNOWN)
    assert to_events(report)[0].symbol == "XYZUSDT"  # no list given: no check


def test_known_symbols_mapping_renames_and_predicate_keeps() -> None:
    report = parse_event(load("limit_buy_2_trade_partial.json"))
    assert report is not None
    assert {e.symbol for e in to_events(report, {"BTCUSDT": "BTC-USDT"})} == {"BTC-USDT"}
    assert {e.symbol for e in to_events(report, lambda s: s == "BTCUSDT")} == {"BTCUSDT"}


# --- purity --------------------------------------------------------------------------------


def test_replaying_the_sequence_twice_gives_identical_events() -> None:
    payloads = [load(name) for name in SEQUENCE]
    before = copy.deepcopy(payloads)
    first = [payload_to_events(p, KNOWN) for p in payloads]
    second = [payload_to_events(p, KNOWN) for p in payloads]
    assert first == second
    assert payloads == before  # the input is never modified
    assert [kinds(evs) for evs in first] == [
        [("OrderUpdate", "NEW")],
        [("FillEvent", None), ("OrderUpdate", "PARTIALLY_FILLED")],
        [("FillEvent", None), ("OrderUpdate", "FILLED")],
        [("OrderUpdate", "CANCELED")],
        [("OrderUpdate", "REJECTED")],
        [("FillEvent", None), ("OrderUpdate", "PARTIALLY_FILLED")],
        [("OrderUpdate", "EXPIRED")],
        [("OrderUpdate", "EXPIRED")],
        [],
        [],
        [],
        [("FillEvent", None), ("OrderUpdate", "FILLED")],
    ]


def test_raw_is_a_copy() -> None:
    payload = load("limit_buy_2_trade_partial.json")
    report = ExecutionReport.model_validate(payload)
    fill, update = to_events(report, KNOWN)
    fill.raw["l"] = "999"
    update.raw["X"] = "CANCELED"
    payload["z"] = "123"
    assert report.raw == load("limit_buy_2_trade_partial.json")
    assert to_events(report, KNOWN) == events("limit_buy_2_trade_partial.json")


ALL_TYPES = frozenset({"LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LOSS", "STOP_LOSS_LIMIT"})


@pytest.mark.parametrize(
    ("order_type", "tif", "offered", "refusal"),
    [
        ("MARKET", None, ALL_TYPES, None),
        ("LIMIT", None, ALL_TYPES, None),  # GTC unless told
        ("STOP_LIMIT", "IOC", ALL_TYPES, None),
        ("STOP", None, None, None),  # the symbol's types not known: Binance decides
        ("TRAILING", None, ALL_TYPES, "Binance takes no TRAILING orders"),
        ("LIMIT", "DAY", ALL_TYPES, "Binance takes GTC, IOC or FOK orders, not DAY"),
        ("MARKET", "DAY", ALL_TYPES, None),  # a market order sends no time in force
        (
            "STOP",
            None,
            ALL_TYPES - {"STOP_LOSS"},
            "Binance takes no STOP orders on XYZUSDT (it takes MARKET, LIMIT, STOP_LIMIT)",
        ),
    ],
)
def test_what_binance_refuses_before_an_order_is_sent(
    order_type: str, tif: str | None, offered: frozenset[str] | None, refusal: str | None
) -> None:
    assert order_refusal(order_type, tif, "XYZUSDT", offered) == refusal
