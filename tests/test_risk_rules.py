"""The risk rules: the worked examples of the docs table, merging of policies, exactness."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from dal.configs import POLICY_LIMITS, PolicyConfig
from dal.decimals import quantize18
from dal.risk_rules import (
    SCOPES,
    Breach,
    EffectiveLimit,
    OrderIntent,
    RiskSnapshot,
    Verdict,
    evaluate,
    merge_limits,
)
from dal.schema import BREACH_ACTIONS, POLICY_SCOPES

DOC_PATH = Path(__file__).resolve().parent.parent / "docs" / "risk-rules.md"
HEADING = "# Risk rules"
COLUMNS = [
    "#",
    "rule",
    "limit",
    "mode",
    "equity",
    "day start equity",
    "realized today",
    "position",
    "mark",
    "side",
    "qty",
    "price",
    "stop",
    "observed",
    "decision",
]
INSTRUMENT = 1


# --- the table parser --------------------------------------------------------------------------
def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def _heading_level(line: str) -> int:
    stripped = line.lstrip()
    return len(stripped) - len(stripped.lstrip("#")) if stripped.startswith("#") else 0


def parse_examples(path: Path, heading: str, columns: list[str] = COLUMNS) -> list[dict[str, str]]:
    """The rows of the first table with header ``columns`` in the section under ``heading``.

    The section runs to the next heading of the same or a higher level, so the lead can move it
    into README.md and point this at that file unchanged.
    """
    lines = path.read_text(encoding="utf-8").splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip() == heading.strip()]
    if not starts:
        raise AssertionError(f"{path}: no {heading!r} heading")
    level = _heading_level(heading)
    section = []
    for line in lines[starts[0] + 1 :]:
        if 0 < _heading_level(line) <= level:
            break
        section.append(line)
    for i, line in enumerate(section):
        if line.lstrip().startswith("|") and _cells(line) == columns:
            separator = section[i + 1] if i + 1 < len(section) else ""
            if not all(set(cell) <= set("-:") and cell for cell in _cells(separator)):
                raise AssertionError(f"{path}: table header not followed by a separator row")
            rows = []
            for row_line in section[i + 2 :]:
                if not row_line.lstrip().startswith("|"):
                    break
                cells = _cells(row_line)
                if len(cells) != len(columns):
                    raise AssertionError(f"{path}: row has {len(cells)} cells: {row_line!r}")
                rows.append(dict(zip(columns, cells, strict=True)))
            return rows
    raise AssertionError(f"{path}: no table with columns {columns} under {heading!r}")


def _amount(cell: str) -> Decimal | None:
    return None if cell == "-" else Decimal(cell)


def run_example(row: dict[str, str]) -> Verdict:
    equity = Decimal(row["equity"])
    position = _amount(row["position"])
    mark = _amount(row["mark"])
    snapshot = RiskSnapshot(
        equity=equity,
        day_start_equity=_amount(row["day start equity"]) or equity,
        realized_today=_amount(row["realized today"]) or Decimal(0),
        positions={} if position is None else {INSTRUMENT: position},
        marks={} if mark is None else {INSTRUMENT: mark},
    )
    order = OrderIntent(
        instrument_id=INSTRUMENT,
        side=row["side"],
        quantity=Decimal(row["qty"]),
        price=_amount(row["price"]),
        stop_price=_amount(row["stop"]),
    )
    rule = row["rule"]
    limit = EffectiveLimit(rule, Decimal(row["limit"]), 7, "PORTFOLIO", row["mode"])
    return evaluate(order, snapshot, {rule: limit})


EXAMPLES = parse_examples(DOC_PATH, HEADING)


@pytest.mark.parametrize("row", EXAMPLES, ids=[f"row{row['#']}" for row in EXAMPLES])
def test_documented_example(row: dict[str, str]) -> None:
    verdict = run_example(row)
    assert verdict.decision == row["decision"], verdict
    rule = row["rule"]
    if row["observed"] == "-":
        assert rule not in verdict.metrics
    else:
        assert quantize18(verdict.metrics[rule]) == quantize18(Decimal(row["observed"]))
    # Breaches agree with the decision, carry the policy and are about the row's rule.
    for breach in verdict.breaches:
        assert breach.rule == rule
        assert breach.policy_id == 7 and breach.scope == "PORTFOLIO"
        assert "(policy #7, PORTFOLIO)" in breach.message
    assert bool(verdict.breaches) == (row["decision"] != "allow")
    json.dumps(verdict.observed_json())


def test_examples_cover_every_rule_and_decision() -> None:
    assert len(EXAMPLES) >= 12
    assert [int(row["#"]) for row in EXAMPLES] == list(range(1, len(EXAMPLES) + 1))
    seen = {(row["rule"], row["decision"]) for row in EXAMPLES}
    for rule in POLICY_LIMITS:
        for decision in ("allow", "warn", "block"):
            assert (rule, decision) in seen, (rule, decision)
    no_stop = [r for r in EXAMPLES if r["rule"] == "max_risk_per_trade" and r["stop"] == "-"]
    assert {r["decision"] for r in no_stop} >= {"warn", "block"}
    assert any(Decimal(r["equity"]) <= 0 for r in EXAMPLES)


def test_parser_finds_the_table_under_its_heading_only(tmp_path: Path) -> None:
    header = "| " + " | ".join(COLUMNS) + " |"
    separator = "|" + "---|" * len(COLUMNS)
    row = "| 1 | max_leverage | 2 | block | 10 | - | - | - | 1 | BUY | 1 | 1 | - | 0.1 | allow |"
    readme = tmp_path / "README.md"
    readme.write_text(
        "\n".join(
            [
                "# Project",
                "## Other",
                header,
                separator,
                "| 9 | x |",
                "## Risk rules",
                "text",
                "### Examples",
                header,
                separator,
                row,
                "",
                "## Next",
            ]
        ),
        encoding="utf-8",
    )
    rows = parse_examples(readme, "## Risk rules")
    assert len(rows) == 1 and rows[0]["rule"] == "max_leverage"
    assert run_example(rows[0]).decision == "allow"
    with pytest.raises(AssertionError, match="no table"):
        parse_examples(readme, "## Next")
    with pytest.raises(AssertionError, match="heading"):
        parse_examples(readme, "## Missing")


# --- helpers for the unit tests ----------------------------------------------------------------
def snap(
    equity: str = "10000",
    positions: dict[int, str] | None = None,
    marks: dict[int, str] | None = None,
    day_start: str | None = None,
    realized: str = "0",
) -> RiskSnapshot:
    return RiskSnapshot(
        equity=Decimal(equity),
        day_start_equity=Decimal(day_start or equity),
        realized_today=Decimal(realized),
        positions={k: Decimal(v) for k, v in (positions or {}).items()},
        marks={k: Decimal(v) for k, v in (marks or {1: "100"}).items()},
    )


def order(
    side: str = "BUY",
    qty: str = "10",
    price: str | None = "100",
    stop: str | None = None,
    instrument: int = 1,
) -> OrderIntent:
    return OrderIntent(
        instrument_id=instrument,
        side=side,
        quantity=Decimal(qty),
        price=None if price is None else Decimal(price),
        stop_price=None if stop is None else Decimal(stop),
    )


def limit(
    key: str, value: str, mode: str = "block", policy: int = 1, scope: str = "USER"
) -> EffectiveLimit:
    return EffectiveLimit(key, Decimal(value), policy, scope, mode)


def policy(**limits: str) -> PolicyConfig:
    """A policy written as stored, limits as text (PolicyConfig turns them into Decimals)."""
    return PolicyConfig.model_validate(limits)


# --- merge_limits ------------------------------------------------------------------------------
def test_merge_most_specific_scope_wins_even_when_looser() -> None:
    merged = merge_limits(
        [
            (1, "USER", policy(max_risk_per_trade="0.01", max_leverage="2")),
            (2, "PORTFOLIO", policy(max_risk_per_trade="0.02", mode="warn")),
            (3, "STRATEGY", policy(max_risk_per_trade="0.05")),
            (4, "PORTFOLIO", policy(max_leverage="3", max_daily_loss="0.03")),
        ]
    )
    assert merged["max_risk_per_trade"] == EffectiveLimit(
        "max_risk_per_trade", Decimal("0.05"), 3, "STRATEGY", "block"
    )
    assert merged["max_leverage"] == EffectiveLimit(
        "max_leverage", Decimal(3), 4, "PORTFOLIO", "block"
    )
    assert merged["max_daily_loss"].policy_id == 4
    assert set(merged) == {"max_risk_per_trade", "max_leverage", "max_daily_loss"}
    assert list(merged) == [key for key in POLICY_LIMITS if key in merged]


def test_merge_within_a_scope_the_stricter_value_wins_with_its_mode() -> None:
    merged = merge_limits(
        [
            (5, "PORTFOLIO", policy(max_exposure_per_asset="0.3", mode="block")),
            (6, "PORTFOLIO", policy(max_exposure_per_asset="0.2", mode="warn")),
            (7, "USER", policy(max_exposure_per_asset="0.1", mode="block")),
        ]
    )
    winner = merged["max_exposure_per_asset"]
    assert (winner.value, winner.policy_id, winner.mode) == (Decimal("0.2"), 6, "warn")


def test_merge_ties_prefer_block_then_lower_policy_id() -> None:
    policies = [
        (9, "USER", policy(max_order_notional="1000", mode="warn")),
        (8, "USER", policy(max_order_notional="1000.0", mode="block")),
        (3, "USER", policy(max_order_notional="1000", mode="block")),
    ]
    assert merge_limits(policies)["max_order_notional"].policy_id == 3
    assert merge_limits(policies[:2])["max_order_notional"].policy_id == 8
    assert merge_limits(reversed(policies))["max_order_notional"].policy_id == 3


def test_merge_empty_and_bad_scope() -> None:
    assert merge_limits([]) == {}
    with pytest.raises(ValueError, match="scope"):
        merge_limits([(1, "ACCOUNT", policy(max_leverage="2"))])


def test_scopes_and_actions_match_the_schema() -> None:
    assert set(SCOPES) == set(POLICY_SCOPES)
    assert {"BLOCKED", "WARNED"} <= set(BREACH_ACTIONS)


# --- several limits together -------------------------------------------------------------------
def test_several_limits_block_wins_over_warn_and_each_breach_is_reported() -> None:
    merged = merge_limits(
        [
            (1, "USER", policy(max_risk_per_trade="0.01", max_leverage="1", mode="warn")),
            (2, "PORTFOLIO", policy(max_order_notional="5000", max_daily_loss="0.05")),
            (3, "STRATEGY", policy(max_exposure_per_asset="0.5", mode="warn")),
        ]
    )
    snapshot = snap(positions={1: "20", 2: "-30"}, marks={1: "100", 2: "50"})
    # BUY 60 @ 100, stop 98: risk 120 / 10000 = 1.2 %; exposure 80 × 100 = 80 %;
    # gross 8000 + 1500 = 9500 -> 0.95x; notional 6000 > 5000; no loss today.
    verdict = evaluate(order(qty="60", stop="98"), snapshot, merged)
    assert verdict.decision == "block"
    by_rule = {breach.rule: breach for breach in verdict.breaches}
    assert set(by_rule) == {"max_risk_per_trade", "max_exposure_per_asset", "max_order_notional"}
    assert by_rule["max_risk_per_trade"] == Breach(
        rule="max_risk_per_trade",
        policy_id=1,
        scope="USER",
        action="WARNED",
        observed=Decimal("0.012"),
        limit=Decimal("0.01"),
        message="risk per trade 1.2% of equity exceeds the 1% limit (policy #1, USER)",
    )
    assert by_rule["max_exposure_per_asset"].action == "WARNED"
    assert by_rule["max_exposure_per_asset"].policy_id == 3
    assert by_rule["max_order_notional"].action == "BLOCKED"
    assert by_rule["max_order_notional"].message == (
        "order notional 6000 exceeds the 5000 limit (policy #2, PORTFOLIO)"
    )
    assert verdict.metrics["max_leverage"] == Decimal("0.95")
    assert verdict.metrics["max_daily_loss"] == 0

    # Without the notional breach only warnings are left.
    smaller = evaluate(order(qty="40", stop="97"), snapshot, merged)
    assert smaller.decision == "warn"
    assert {b.rule for b in smaller.breaches} == {"max_risk_per_trade", "max_exposure_per_asset"}
    assert all(b.action == "WARNED" for b in smaller.breaches)

    # A small order with a close stop passes them all.
    assert evaluate(order(qty="1", stop="99"), snapshot, merged).decision == "allow"


def test_example_message_from_the_brief() -> None:
    limits = {
        "max_risk_per_trade": limit("max_risk_per_trade", "0.01", policy=3, scope="PORTFOLIO")
    }
    verdict = evaluate(order(qty="20", stop="87.5"), snap(), limits)
    (breach,) = verdict.breaches
    assert breach.message == (
        "risk per trade 2.5% of equity exceeds the 1% limit (policy #3, PORTFOLIO)"
    )
    assert breach.observed == Decimal("0.025") and breach.action == "BLOCKED"


def test_no_stop_message_and_observed() -> None:
    limits = {"max_risk_per_trade": limit("max_risk_per_trade", "0.01", mode="warn")}
    verdict = evaluate(order(stop=None), snap(), limits)
    (breach,) = verdict.breaches
    assert breach.message.startswith("no stop price: risk per trade is unbounded")
    assert breach.observed is None and breach.action == "WARNED"
    assert verdict.decision == "warn"


def test_leverage_sums_every_instrument_and_needs_their_marks() -> None:
    limits = {"max_leverage": limit("max_leverage", "2")}
    snapshot = snap(positions={1: "10", 2: "-100", 3: "0"}, marks={1: "100", 2: "50"})
    # gross = 20 × 110 (entry for the order's instrument) + 100 × 50 = 7200 -> 0.72x
    verdict = evaluate(order(qty="10", price="110"), snapshot, limits)
    assert verdict.decision == "allow"
    assert verdict.metrics["max_leverage"] == Decimal("0.72")
    assert verdict.observed_json()["gross_exposure_after"] == "7200"

    no_mark = snap(positions={1: "10", 4: "5"}, marks={1: "100"})
    blocked = evaluate(order(), no_mark, {"max_leverage": limit("max_leverage", "2", "warn")})
    assert blocked.decision == "block"
    assert "no price for instrument 4: cannot evaluate leverage" in blocked.breaches[0].message
    # An order that only reduces is not judged by leverage, so the missing mark does not matter.
    assert evaluate(order(side="SELL", qty="5"), no_mark, limits).decision == "allow"


def test_no_entry_price_blocks_whatever_the_mode() -> None:
    limits = {
        "max_daily_loss": limit("max_daily_loss", "0.05", "warn", policy=1),
        "max_order_notional": limit("max_order_notional", "100", "warn", policy=2),
    }
    verdict = evaluate(order(price=None, instrument=9), snap(), limits)
    assert verdict.decision == "block"
    assert [b.policy_id for b in verdict.breaches] == [1, 2]
    assert all(b.action == "BLOCKED" and b.observed is None for b in verdict.breaches)
    assert verdict.breaches[0].message.startswith("no price for instrument 9: cannot evaluate risk")


def test_no_limits_allows() -> None:
    verdict = evaluate(order(price=None, instrument=9), snap(), {})
    assert verdict == Verdict("allow", (), ("no risk limits apply",), {}, verdict.facts)


def test_ratios_are_exact_and_rounded_only_for_display() -> None:
    limits = {"max_exposure_per_asset": limit("max_exposure_per_asset", "0.01")}
    # 1 × 100.001 / 10000 = 0.0100001: over the 1 % limit by a hair.
    verdict = evaluate(order(qty="1", price="100.001"), snap(), limits)
    (breach,) = verdict.breaches
    assert breach.observed == Decimal("0.0100001")
    assert "1.00001% of equity exceeds the 1% limit" in breach.message
    # A third of equity is not a terminating decimal: exact to the context, 18 places in JSON.
    thirds = evaluate(order(qty="1", price="100"), snap(equity="300"), {})
    assert thirds.decision == "allow"
    third = evaluate(
        order(qty="1", price="100"),
        snap(equity="300"),
        {"max_exposure_per_asset": limit("max_exposure_per_asset", "0.5")},
    )
    assert third.metrics["max_exposure_per_asset"] * 3 == Decimal(1)
    assert third.observed_json()["metrics"]["max_exposure_per_asset"] == "0.333333333333333333"


def test_observed_json_is_json_safe_with_canonical_strings() -> None:
    limits = {
        "max_risk_per_trade": limit("max_risk_per_trade", "0.010", policy=4, scope="STRATEGY"),
        "max_daily_loss": limit("max_daily_loss", "0.03", "warn"),
    }
    snapshot = snap(equity="9650.00", day_start="10000", realized="-350.0")
    verdict = evaluate(order(qty="10", price="100.50", stop="99"), snapshot, limits)
    data = verdict.observed_json()
    assert json.loads(json.dumps(data)) == data
    assert data["decision"] == "warn"
    assert data["price"] == "100.5" and data["stop_price"] == "99" and data["mark"] == "100"
    assert data["equity"] == "9650" and data["realized_today"] == "-350"
    assert data["position_before"] == "0" and data["position_after"] == "10"
    assert data["reduces_only"] is False
    assert data["metrics"] == {
        "max_risk_per_trade": "0.00155440414507772",
        "max_daily_loss": "0.035",
    }
    assert data["limits"]["max_risk_per_trade"] == {
        "value": "0.01",
        "policy_id": 4,
        "scope": "STRATEGY",
        "mode": "block",
    }
    assert data["breaches"][0]["observed"] == "0.035"
    assert data["breaches"][0]["action"] == "WARNED"


# --- floats and other bad input ----------------------------------------------------------------
@pytest.mark.parametrize("field", ["quantity", "price", "stop_price"])
def test_order_refuses_floats(field: str) -> None:
    values = {"quantity": Decimal(1), "price": Decimal(100), "stop_price": Decimal(95)}
    values[field] = 1.5  # type: ignore[assignment]  # the float to be refused
    with pytest.raises(TypeError, match="float"):
        OrderIntent(instrument_id=1, side="BUY", **values)


def test_snapshot_and_limits_refuse_floats() -> None:
    good = {
        "equity": Decimal(1),
        "day_start_equity": Decimal(1),
        "realized_today": Decimal(0),
        "positions": {},
        "marks": {},
    }
    for name in ("equity", "day_start_equity", "realized_today"):
        with pytest.raises(TypeError, match="float"):
            RiskSnapshot(**{**good, name: 0.1})  # type: ignore[arg-type]  # a float: refused
    with pytest.raises(TypeError, match="float"):
        RiskSnapshot(**{**good, "positions": {1: 0.5}})  # type: ignore[arg-type]  # a float: refused
    with pytest.raises(TypeError, match="float"):
        RiskSnapshot(**{**good, "marks": {1: 100.0}})  # type: ignore[arg-type]  # a float: refused
    with pytest.raises(TypeError, match="float"):
        EffectiveLimit("max_leverage", 2.0, 1, "USER", "block")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"quantity": 1}, TypeError),
        ({"quantity": "1"}, TypeError),
        ({"quantity": Decimal(0)}, ValueError),
        ({"quantity": Decimal("NaN")}, ValueError),
        ({"price": Decimal(-1)}, ValueError),
        ({"side": "HOLD"}, ValueError),
        ({"instrument_id": True}, TypeError),
    ],
)
def test_order_refuses_bad_values(kwargs: dict[str, object], error: type[Exception]) -> None:
    values: dict[str, object] = {
        "instrument_id": 1,
        "side": "BUY",
        "quantity": Decimal(1),
        "price": None,
        "stop_price": None,
    }
    with pytest.raises(error):
        OrderIntent(**{**values, **kwargs})  # type: ignore[arg-type]


def test_snapshot_is_a_frozen_copy() -> None:
    positions = {1: Decimal(5)}
    snapshot = RiskSnapshot(Decimal(1), Decimal(1), Decimal(0), positions, {1: Decimal(2)})
    positions[1] = Decimal(50)
    assert snapshot.positions[1] == Decimal(5)
    with pytest.raises(TypeError):
        snapshot.positions[2] = Decimal(1)  # type: ignore[index]


def test_limits_must_match_their_keys() -> None:
    with pytest.raises(ValueError, match="key"):
        evaluate(order(), snap(), {"max_leverage": limit("max_order_notional", "10")})
    with pytest.raises(ValueError, match="unknown limit"):
        limit("max_fun", "1")
    with pytest.raises(ValueError, match="mode"):
        limit("max_leverage", "1", mode="shout")
