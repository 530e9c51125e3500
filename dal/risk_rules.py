"""Pre-trade risk rules: merge the policies that apply to an order, then judge the order.

A pure module: no database, no I/O. Every amount is an exact ``Decimal`` (floats are refused
with ``TypeError``) and every computation runs in ``DECIMAL_CONTEXT``; ratios are exact and are
rounded only for messages (2 places, more when needed to tell them apart from the limit) and for
``Verdict.observed_json`` (18 places, like the Money columns).

The rules are defined in docs/risk-rules.md ("Risk rules"), whose worked examples are the tests:

* entry price = the order's limit price, else the latest mark of the instrument; without either
  the order cannot be judged and every set limit is a BLOCKED breach ("no price ...");
* an order *only reduces* when it is on the opposite side of the position and its quantity is at
  most the position's size; any other order (opening, adding, crossing zero) increases exposure;
* the ratio rules (risk per trade, exposure per asset, daily loss, leverage) never breach on an
  order that only reduces, so a position can always be closed; ``max_order_notional`` is a
  per-order size check and applies to every order;
* a ratio breaches when strictly greater than its limit, except daily loss (greater or equal);
* an increasing order without a stop price breaches ``max_risk_per_trade`` ("unbounded");
* with equity <= 0 every set ratio rule breaches on an increasing order ("equity is not positive").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation, localcontext
from types import MappingProxyType
from typing import Any

from dal.configs import POLICY_LIMITS, PolicyConfig
from dal.decimals import DECIMAL_CONTEXT, canonical_decimal, quantize18
from dal.vocabulary import SIDES

ZERO = Decimal(0)
MODES = ("block", "warn")
# Lowest to highest precedence; the same values as dal.schema.POLICY_SCOPES.
SCOPES = ("USER", "PORTFOLIO", "STRATEGY")
_SCOPE_RANK = {scope: rank for rank, scope in enumerate(SCOPES)}
_ACTIONS = {"block": "BLOCKED", "warn": "WARNED"}
# Rules measured as a ratio of equity (ratio rules) and the one absolute rule.
RATIO_RULES = ("max_risk_per_trade", "max_exposure_per_asset", "max_daily_loss", "max_leverage")
_LABELS = {
    "max_risk_per_trade": "risk per trade",
    "max_exposure_per_asset": "exposure per asset",
    "max_daily_loss": "daily loss",
    "max_leverage": "leverage",
    "max_order_notional": "order notional",
}


# --- input checks ------------------------------------------------------------------------------
def _decimal(name: str, value: object) -> Decimal:
    """``value`` if it is a finite Decimal; TypeError for floats and anything else not Decimal."""
    if isinstance(value, float):
        raise TypeError(f"{name} is the float {value!r}; give amounts as Decimal, never float")
    if not isinstance(value, Decimal):
        raise TypeError(f"{name} must be a Decimal, not {type(value).__name__}")
    if not value.is_finite():
        raise ValueError(f"{name} must be a finite number, not {value}")
    return value


def _positive(name: str, value: object) -> Decimal:
    amount = _decimal(name, value)
    if amount <= 0:
        raise ValueError(f"{name} must be positive, got {amount}")
    return amount


def _optional_positive(name: str, value: object) -> Decimal | None:
    return None if value is None else _positive(name, value)


def _instrument_id(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    return value


def _frozen_amounts(name: str, mapping: object, *, positive: bool) -> Mapping[int, Decimal]:
    if not isinstance(mapping, Mapping):
        raise TypeError(f"{name} must be a mapping of instrument id to Decimal")
    check = _positive if positive else _decimal
    items: dict[int, Decimal] = {}
    for key, value in mapping.items():
        _instrument_id(f"{name} key", key)
        items[key] = check(f"{name}[{key}]", value)
    return MappingProxyType(items)


# --- data --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EffectiveLimit:
    """One limit after merging: its value and the policy it comes from."""

    key: str  # one of POLICY_LIMITS
    value: Decimal
    policy_id: int
    scope: str  # "USER" | "PORTFOLIO" | "STRATEGY"
    mode: str  # "block" | "warn"

    def __post_init__(self) -> None:
        if self.key not in POLICY_LIMITS:
            raise ValueError(f"unknown limit {self.key!r}; known: {', '.join(POLICY_LIMITS)}")
        _positive("limit value", self.value)
        _instrument_id("policy_id", self.policy_id)
        if self.scope not in SCOPES:
            raise ValueError(f"scope must be one of {', '.join(SCOPES)}, not {self.scope!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be 'block' or 'warn', not {self.mode!r}")

    @property
    def action(self) -> str:
        return _ACTIONS[self.mode]


@dataclass(frozen=True)
class OrderIntent:
    """The order to judge. Amounts must be Decimals; a float raises TypeError."""

    instrument_id: int
    side: str  # "BUY" | "SELL"
    quantity: Decimal  # > 0
    price: Decimal | None  # limit price; None for MARKET/STOP
    stop_price: Decimal | None  # protective stop / stop trigger

    def __post_init__(self) -> None:
        _instrument_id("instrument_id", self.instrument_id)
        if self.side not in SIDES:
            raise ValueError(f"side must be BUY or SELL, not {self.side!r}")
        _positive("quantity", self.quantity)
        _optional_positive("price", self.price)
        _optional_positive("stop_price", self.stop_price)


@dataclass(frozen=True)
class RiskSnapshot:
    """The account as the order finds it (one portfolio)."""

    equity: Decimal  # cash + realized - fees + unrealized at marks
    day_start_equity: Decimal  # equity at the start of the user's local day
    realized_today: Decimal  # realized PnL since the start of the local day (negative = loss)
    positions: Mapping[int, Decimal]  # instrument_id -> signed net quantity
    marks: Mapping[int, Decimal]  # instrument_id -> latest price

    def __post_init__(self) -> None:
        _decimal("equity", self.equity)
        _decimal("day_start_equity", self.day_start_equity)
        _decimal("realized_today", self.realized_today)
        # Frozen copies: the caller's dicts may change after the snapshot is taken.
        object.__setattr__(
            self, "positions", _frozen_amounts("positions", self.positions, positive=False)
        )
        object.__setattr__(self, "marks", _frozen_amounts("marks", self.marks, positive=True))


@dataclass(frozen=True)
class Breach:
    """One limit the order breaks. ``observed`` is None when the metric cannot be measured
    (no stop price, equity not positive, no price)."""

    rule: str
    policy_id: int
    scope: str
    action: str  # "BLOCKED" | "WARNED"
    observed: Decimal | None
    limit: Decimal
    message: str

    def to_json(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "policy_id": self.policy_id,
            "scope": self.scope,
            "action": self.action,
            "observed": _json_amount(self.observed),
            "limit": canonical_decimal(self.limit),
            "message": self.message,
        }


@dataclass(frozen=True)
class Verdict:
    """The judgement: block if any BLOCKED breach, else warn if any breach, else allow."""

    decision: str  # "allow" | "warn" | "block"
    breaches: tuple[Breach, ...]
    notes: tuple[str, ...]  # remarks that are not breaches
    # Exact metric per rule that could be measured (rule key -> ratio, or amount for notional).
    metrics: Mapping[str, Decimal] = field(default_factory=dict)
    # Inputs and derived facts (Decimal, int, str, bool or None), for observed_json.
    facts: Mapping[str, Any] = field(default_factory=dict, repr=False)

    def observed_json(self) -> dict[str, Any]:
        """JSON-safe inputs and metrics for ``risk_breaches.observed_json``.

        Decimals are canonical strings; metrics are rounded half-even to 18 places.
        """
        return {
            **{key: _json_amount(value) for key, value in self.facts.items()},
            "metrics": {key: _json_amount(quantize(value)) for key, value in self.metrics.items()},
            "decision": self.decision,
            "breaches": [breach.to_json() for breach in self.breaches],
            "notes": list(self.notes),
        }


def quantize(value: Decimal) -> Decimal:
    """18 fractional places, or the value itself when that would not fit the context."""
    try:
        return quantize18(value)
    except InvalidOperation:
        return value


def _json_amount(value: Any) -> Any:
    return canonical_decimal(value) if isinstance(value, Decimal) else value


# --- merging -----------------------------------------------------------------------------------
def merge_limits(policies: Iterable[tuple[int, str, PolicyConfig]]) -> dict[str, EffectiveLimit]:
    """The effective limit per key from (policy_id, scope, config) triples.

    Per key, the most specific scope that sets it wins (STRATEGY over PORTFOLIO over USER), even
    when its value is looser; within one scope the smaller value wins, then "block" over "warn",
    then the smaller policy id. The mode is that of the winning policy.
    """
    best: dict[str, EffectiveLimit] = {}
    for policy_id, scope, config in policies:
        for key in POLICY_LIMITS:
            value = getattr(config, key)
            if value is None:
                continue
            candidate = EffectiveLimit(key, value, policy_id, scope, config.mode)
            current = best.get(key)
            if current is None or _precedence(candidate) < _precedence(current):
                best[key] = candidate
    return {key: best[key] for key in POLICY_LIMITS if key in best}


def _precedence(limit: EffectiveLimit) -> tuple[int, Decimal, int, int]:
    return (-_SCOPE_RANK[limit.scope], limit.value, MODES.index(limit.mode), limit.policy_id)


# --- evaluation --------------------------------------------------------------------------------
def evaluate(
    order: OrderIntent, snapshot: RiskSnapshot, limits: Mapping[str, EffectiveLimit]
) -> Verdict:
    """Judge ``order`` against ``limits`` given ``snapshot``; see the module docstring."""
    if not isinstance(order, OrderIntent):
        raise TypeError("order must be an OrderIntent")
    if not isinstance(snapshot, RiskSnapshot):
        raise TypeError("snapshot must be a RiskSnapshot")
    for key, limit in limits.items():
        if not isinstance(limit, EffectiveLimit) or limit.key != key:
            raise ValueError(f"limits[{key!r}] must be an EffectiveLimit with key {key!r}")
    with localcontext(DECIMAL_CONTEXT):
        return _Evaluation(order, snapshot, limits).run()


class _Evaluation:
    def __init__(
        self, order: OrderIntent, snapshot: RiskSnapshot, limits: Mapping[str, EffectiveLimit]
    ) -> None:
        self.order = order
        self.snap = snapshot
        self.limits = {key: limits[key] for key in POLICY_LIMITS if key in limits}
        self.breaches: list[Breach] = []
        self.notes: list[str] = []
        self.metrics: dict[str, Decimal] = {}

        iid = order.instrument_id
        mark = snapshot.marks.get(iid)
        self.entry = order.price if order.price is not None else mark
        self.before = snapshot.positions.get(iid, ZERO)
        self.after = self.before + (order.quantity if order.side == "BUY" else -order.quantity)
        opposite = self.before != 0 and (self.before > 0) != (order.side == "BUY")
        self.reduces_only = opposite and order.quantity <= abs(self.before)
        # Quantity that opens or adds exposure: all of it, or the part beyond zero.
        self.opening = order.quantity - abs(self.before) if opposite else order.quantity
        self.facts: dict[str, Any] = {
            "instrument_id": iid,
            "side": order.side,
            "quantity": order.quantity,
            "price": order.price,
            "stop_price": order.stop_price,
            "mark": mark,
            "entry_price": self.entry,
            "equity": snapshot.equity,
            "day_start_equity": snapshot.day_start_equity,
            "realized_today": snapshot.realized_today,
            "position_before": self.before,
            "position_after": self.after,
            "reduces_only": self.reduces_only,
            "limits": {
                key: {
                    "value": canonical_decimal(limit.value),
                    "policy_id": limit.policy_id,
                    "scope": limit.scope,
                    "mode": limit.mode,
                }
                for key, limit in self.limits.items()
            },
        }

    # -- helpers --
    def breach(self, key: str, observed: Decimal | None, message: str) -> None:
        limit = self.limits[key]
        self.breaches.append(
            Breach(
                rule=key,
                policy_id=limit.policy_id,
                scope=limit.scope,
                action=limit.action,
                observed=observed,
                limit=limit.value,
                message=f"{message} (policy #{limit.policy_id}, {limit.scope})",
            )
        )

    def verdict(self) -> Verdict:
        actions = {breach.action for breach in self.breaches}
        decision = "block" if "BLOCKED" in actions else "warn" if actions else "allow"
        return Verdict(
            decision=decision,
            breaches=tuple(self.breaches),
            notes=tuple(self.notes),
            metrics=MappingProxyType(dict(self.metrics)),
            facts=MappingProxyType(self.facts),
        )

    # -- the rules --
    def run(self) -> Verdict:
        if not self.limits:
            self.notes.append("no risk limits apply")
            return self.verdict()
        iid = self.order.instrument_id
        if self.entry is None:
            # Nothing can be measured: fail closed whatever the policies' modes.
            for key, limit in self.limits.items():
                self.breaches.append(
                    Breach(
                        rule=key,
                        policy_id=limit.policy_id,
                        scope=limit.scope,
                        action="BLOCKED",
                        observed=None,
                        limit=limit.value,
                        message=f"no price for instrument {iid}: cannot evaluate risk "
                        f"(policy #{limit.policy_id}, {limit.scope})",
                    )
                )
            return self.verdict()
        if self.order.price is None:
            self.notes.append(f"no limit price: entry taken at the mark {self.entry}")
        if self.reduces_only:
            self.notes.append(
                f"order only reduces the position in instrument {iid}: the ratio rules do not "
                "apply, max_order_notional does"
            )
        elif self.opening != self.order.quantity:
            self.notes.append(
                f"order crosses zero: {self.opening} of {self.order.quantity} open the other side"
            )
        self.risk_per_trade()
        self.exposure_per_asset()
        self.daily_loss()
        self.leverage()
        self.order_notional()
        return self.verdict()

    def equity_not_positive(self, key: str) -> bool:
        """With equity <= 0 an increasing order breaches every set ratio rule."""
        if self.snap.equity > 0:
            return False
        if not self.reduces_only:
            self.breach(key, None, f"equity is not positive: {_LABELS[key]} cannot be measured")
        return True

    def risk_per_trade(self) -> None:
        key = "max_risk_per_trade"
        if key not in self.limits or self.reduces_only:
            return
        if self.equity_not_positive(key):
            return
        stop = self.order.stop_price
        if stop is None:
            self.breach(key, None, "no stop price: risk per trade is unbounded")
            return
        assert self.entry is not None
        wrong_side = stop > self.entry if self.order.side == "BUY" else stop < self.entry
        if wrong_side:
            where = "above" if self.order.side == "BUY" else "below"
            self.notes.append(
                f"stop price {stop} is {where} the entry {self.entry} of a {self.order.side}; "
                "risk measured as |entry - stop|"
            )
        ratio = abs(self.entry - stop) * self.opening / self.snap.equity
        self.check_ratio(key, ratio, "risk per trade {observed}% of equity")

    def exposure_per_asset(self) -> None:
        key = "max_exposure_per_asset"
        if key not in self.limits or self.equity_not_positive(key):
            return
        assert self.entry is not None
        ratio = abs(self.after) * self.entry / self.snap.equity
        self.check_ratio(
            key,
            ratio,
            f"exposure to instrument {self.order.instrument_id} after the order "
            "{observed}% of equity",
        )

    def daily_loss(self) -> None:
        key = "max_daily_loss"
        if key not in self.limits or self.equity_not_positive(key):
            return
        loss = max(ZERO, -self.snap.realized_today)
        if not loss:
            self.metrics[key] = ZERO
            return
        if self.snap.day_start_equity <= 0:
            if not self.reduces_only:
                self.breach(key, None, "equity at day start is not positive: daily loss unbounded")
            return
        ratio = loss / self.snap.day_start_equity
        self.check_ratio(key, ratio, "daily loss {observed}% of day-start equity", inclusive=True)

    def leverage(self) -> None:
        key = "max_leverage"
        if key not in self.limits or self.equity_not_positive(key):
            return
        assert self.entry is not None
        iid = self.order.instrument_id
        gross = abs(self.after) * self.entry
        for other, quantity in sorted(self.snap.positions.items()):
            if other == iid or not quantity:
                continue
            mark = self.snap.marks.get(other)
            if mark is None:
                if not self.reduces_only:
                    limit = self.limits[key]
                    self.breaches.append(
                        Breach(
                            rule=key,
                            policy_id=limit.policy_id,
                            scope=limit.scope,
                            action="BLOCKED",
                            observed=None,
                            limit=limit.value,
                            message=f"no price for instrument {other}: cannot evaluate leverage "
                            f"(policy #{limit.policy_id}, {limit.scope})",
                        )
                    )
                return
            gross += abs(quantity) * mark
        self.facts["gross_exposure_after"] = gross
        ratio = gross / self.snap.equity
        limit = self.limits[key]
        self.metrics[key] = ratio
        if ratio > limit.value and not self.reduces_only:
            observed, bound = _display_pair(ratio, limit.value, 2)
            self.breach(
                key, ratio, f"leverage after the order {observed}x exceeds the {bound}x limit"
            )

    def order_notional(self) -> None:
        key = "max_order_notional"
        if key not in self.limits:
            return
        assert self.entry is not None
        notional = self.order.quantity * self.entry
        limit = self.limits[key]
        self.metrics[key] = notional
        if notional > limit.value:  # every order, reducing or not
            observed, bound = _display_pair(notional, limit.value, 2)
            self.breach(key, notional, f"order notional {observed} exceeds the {bound} limit")

    def check_ratio(
        self, key: str, ratio: Decimal, template: str, *, inclusive: bool = False
    ) -> None:
        """Record the metric; breach when over the limit (or at it, if inclusive)."""
        limit = self.limits[key]
        self.metrics[key] = ratio
        over = ratio >= limit.value if inclusive else ratio > limit.value
        if not over or self.reduces_only:
            return
        observed, bound = _display_pair(ratio * 100, limit.value * 100, 2)
        verb = "reaches" if ratio == limit.value else "exceeds"
        self.breach(key, ratio, f"{template.format(observed=observed)} {verb} the {bound}% limit")


def _display_pair(observed: Decimal, limit: Decimal, places: int) -> tuple[str, str]:
    """Both values rounded to ``places`` (more if needed so that unequal values look unequal)."""
    while True:
        shown = _display(observed, places), _display(limit, places)
        if shown[0] != shown[1] or observed == limit or places >= 18:
            return shown
        places += 1


def _display(value: Decimal, places: int) -> str:
    with localcontext(DECIMAL_CONTEXT):
        try:
            rounded = value.quantize(Decimal(1).scaleb(-places))
        except InvalidOperation:
            rounded = value
        return canonical_decimal(rounded)


__all__ = [
    "POLICY_LIMITS",
    "RATIO_RULES",
    "SCOPES",
    "Breach",
    "EffectiveLimit",
    "OrderIntent",
    "RiskSnapshot",
    "Verdict",
    "evaluate",
    "merge_limits",
]
