"""Risk policies (USER / PORTFOLIO / STRATEGY scope), pre-trade evaluation, breach log.

The rules themselves are pure (dal/risk_rules.py); this module loads the policies in effect,
builds the snapshot (equity from the cash ledger and positions at the given marks, today's
realized PnL in the user's time zone) and records breaches.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal, localcontext
from typing import Any

import sqlalchemy as sa

from dal import schema as t
from dal.clock import local_midnight
from dal.configs import PolicyConfig
from dal.decimals import DECIMAL_CONTEXT
from dal.errors import Conflict, InvalidInput, NotFound
from dal.instruments import resolve_instrument
from dal.models import (
    NewOrder,
    NewPolicy,
    aware_arg,
    check_marks,
    parse,
    parse_config,
)
from dal.orders import owned_order
from dal.ownership import PortfolioWith, owned_portfolio, owned_row
from dal.risk_rules import (
    EffectiveLimit,
    OrderIntent,
    RiskSnapshot,
    Verdict,
    evaluate,
    merge_limits,
)
from dal.scope import Tx
from dal.strategies import owned_strategy
from dal.types import new_uid
from dal.valuation import value_portfolio

policies = t.risk_policies
# The active policies covering an order: its owner's, its portfolio's and, with a strategy id
# (NULL matches nothing), its strategy's.
_APPLICABLE = sa.select(policies).where(
    policies.c.user_id == sa.bindparam("user_id"),
    policies.c.is_active,
    sa.or_(
        sa.and_(policies.c.scope_type == "USER", policies.c.scope_id == sa.bindparam("user_id")),
        sa.and_(
            policies.c.scope_type == "PORTFOLIO",
            policies.c.scope_id == sa.bindparam("portfolio_id"),
        ),
        sa.and_(
            policies.c.scope_type == "STRATEGY",
            policies.c.scope_id == sa.bindparam("strategy_id"),
        ),
    ),
)
# The same policies with the portfolio check of a fresh session, in one statement.
_COVERING = sa.and_(
    policies.c.user_id == t.portfolios.c.user_id,
    policies.c.is_active,
    sa.or_(
        sa.and_(policies.c.scope_type == "USER", policies.c.scope_id == t.portfolios.c.user_id),
        sa.and_(policies.c.scope_type == "PORTFOLIO", policies.c.scope_id == t.portfolios.c.id),
        sa.and_(
            policies.c.scope_type == "STRATEGY",
            policies.c.scope_id == sa.bindparam("strategy_id", type_=policies.c.scope_id.type),
        ),
    ),
)
_PORTFOLIO_AND_POLICIES = PortfolioWith(policies, _COVERING)
# An order's evaluation: also the balance lock its balance check takes next (the desk checks
# risk, then balances), and the account's terms that check reads.
_PRE_TRADE = PortfolioWith(policies, _COVERING, balance_lock=True)
breaches = t.risk_breaches
SCOPE_ORDER = {"STRATEGY": 0, "PORTFOLIO": 1, "USER": 2}


def _merged(rows: list[sa.Row[Any]]) -> dict[str, EffectiveLimit]:
    return merge_limits(
        (r.id, r.scope_type, PolicyConfig.model_validate(r.config_json)) for r in rows
    )


def owned_policy(tx: Tx, policy_id: int) -> sa.Row[Any]:
    return owned_row(tx, policies, policy_id, "policy")


class RiskService:
    def __init__(self, tx: Tx) -> None:
        self.tx = tx

    # --- policies -------------------------------------------------------------------------------
    def _check_scope(self, scope_type: str, scope_id: int | None) -> int:
        user_id = self.tx.user_id
        if scope_type == "USER":
            if scope_id not in (None, user_id):
                raise NotFound(f"no user #{scope_id}")
            return user_id
        if scope_id is None:
            raise InvalidInput(f"a {scope_type} policy needs the {scope_type.lower()} it covers")
        if scope_type == "PORTFOLIO":
            return int(owned_portfolio(self.tx, scope_id).id)
        return int(owned_strategy(self.tx, scope_id).id)

    def create_policy(self, data: NewPolicy | dict[str, Any]) -> sa.Row[Any]:
        new = parse(NewPolicy, data)
        scope_id = self._check_scope(new.scope_type, new.scope_id)
        user_id = self.tx.user_id
        if self.tx.conn.execute(
            sa.select(policies.c.id).where(
                policies.c.user_id == user_id, policies.c.name == new.name
            )
        ).first():
            raise Conflict(f"you already have a policy named {new.name!r}")
        values = {
            "scope_type": new.scope_type,
            "scope_id": scope_id,
            "name": new.name,
            "config_json": new.config.to_json(),
        }
        policy_id = self.tx.conn.execute(
            policies.insert()
            .values(uid=new_uid(), user_id=user_id, created_at=self.tx.now(), **values)
            .returning(policies.c.id)
        ).scalar_one()
        self.tx.audit("POLICY", policy_id, "CREATE", values)
        return owned_policy(self.tx, policy_id)

    def update_policy(self, policy_id: int, config: dict[str, Any]) -> sa.Row[Any]:
        row = owned_policy(self.tx, policy_id)
        typed = parse_config(PolicyConfig, config)
        self.tx.conn.execute(
            policies.update().where(policies.c.id == row.id).values(config_json=typed.to_json())
        )
        self.tx.audit(
            "POLICY", row.id, "UPDATE", {"config": typed.to_json(), "previous": row.config_json}
        )
        return owned_policy(self.tx, policy_id)

    def set_active(self, policy_id: int, active: bool) -> sa.Row[Any]:
        row = owned_policy(self.tx, policy_id)
        if row.is_active != active:
            self.tx.conn.execute(
                policies.update().where(policies.c.id == row.id).values(is_active=active)
            )
            self.tx.audit(
                "POLICY", row.id, "ACTIVATE" if active else "DEACTIVATE", {"name": row.name}
            )
        return owned_policy(self.tx, policy_id)

    def delete_policy(self, policy_id: int) -> None:
        row = owned_policy(self.tx, policy_id)
        if self.tx.conn.execute(
            sa.select(breaches.c.id).where(breaches.c.policy_id == row.id).limit(1)
        ).first():
            raise Conflict(f"policy {row.name!r} has recorded breaches; deactivate it instead")
        self.tx.conn.execute(policies.delete().where(policies.c.id == row.id))
        self.tx.audit("POLICY", row.id, "DELETE", {"name": row.name})

    def list_policies(self, include_inactive: bool = False) -> list[sa.Row[Any]]:
        query = sa.select(policies).where(self.tx.owned(policies.c.user_id)).order_by(policies.c.id)
        if not include_inactive:
            query = query.where(policies.c.is_active)
        return list(self.tx.conn.execute(query))

    def applicable_policies(
        self, portfolio_id: int, strategy_id: int | None = None
    ) -> list[sa.Row[Any]]:
        """Active policies covering an order in this portfolio (and strategy), most specific
        scope first."""
        return self._applicable(portfolio_id, strategy_id, _PORTFOLIO_AND_POLICIES)

    def _applicable(
        self, portfolio_id: int, strategy_id: int | None, fresh: PortfolioWith
    ) -> list[sa.Row[Any]]:
        rows = fresh.read(self.tx, portfolio_id, {"strategy_id": strategy_id})
        if rows is None:
            portfolio = owned_portfolio(self.tx, portfolio_id)
            rows = list(
                self.tx.conn.execute(
                    _APPLICABLE,
                    {
                        "user_id": portfolio.user_id,
                        "portfolio_id": portfolio.id,
                        "strategy_id": strategy_id,
                    },
                )
            )
        if strategy_id is not None:
            owned_strategy(self.tx, strategy_id)  # another user's id is NotFound, as elsewhere
        return sorted(rows, key=lambda r: (SCOPE_ORDER[r.scope_type], r.id))

    def load_policies(
        self, portfolio_id: int, strategy_id: int | None = None
    ) -> dict[str, EffectiveLimit]:
        """The effective limits: per limit key, STRATEGY over PORTFOLIO over USER."""
        return _merged(self.applicable_policies(portfolio_id, strategy_id))

    # --- evaluation -----------------------------------------------------------------------------
    def snapshot(
        self,
        portfolio_id: int,
        marks: dict[int, Decimal],
        currency: str,
        now: dt.datetime | None = None,
    ) -> RiskSnapshot:
        """Equity in ``currency`` at ``marks`` (``dal.valuation``, the one valuation), today's
        realized PnL (user's local day) and the net position per instrument. Equity at day
        start is equity minus today's realized PnL (unrealized moves during the day are not
        separated)."""
        portfolio = owned_portfolio(self.tx, portfolio_id)
        marks = check_marks(marks)
        conn = self.tx.conn
        now = aware_arg(now, "now") or self.tx.now()
        zone = conn.execute(
            sa.select(t.users.c.timezone).where(t.users.c.id == portfolio.user_id)
        ).scalar_one()
        equity = value_portfolio(conn, portfolio_id, currency, marks, open_orders=False).equity
        since = local_midnight(now, zone)
        with localcontext(DECIMAL_CONTEXT):
            realized_today = sum(
                conn.execute(
                    sa.select(t.trades.c.realized_pnl)
                    .join(t.instruments, t.instruments.c.id == t.trades.c.instrument_id)
                    .where(
                        t.trades.c.portfolio_id == portfolio_id,
                        t.trades.c.exec_time >= since,
                        t.instruments.c.currency == currency,
                    )
                ).scalars(),
                Decimal(0),
            )
            net: dict[int, Decimal] = {}
            for instrument_id, quantity in conn.execute(
                sa.select(t.positions.c.instrument_id, t.positions.c.quantity).where(
                    t.positions.c.portfolio_id == portfolio_id
                )
            ):
                net[instrument_id] = net.get(instrument_id, Decimal(0)) + quantity
            return RiskSnapshot(
                equity=equity,
                day_start_equity=equity - realized_today,
                realized_today=realized_today,
                positions={k: v for k, v in net.items() if v},
                marks=dict(marks),
            )

    def evaluate(
        self,
        order: NewOrder | dict[str, Any],
        marks: dict[int, Decimal],
        now: dt.datetime | None = None,
    ) -> Verdict:
        """Pre-trade check of an order against the policies in effect (writes nothing)."""
        new = parse(NewOrder, order)
        if marks is None:
            raise InvalidInput("give the latest marks (instrument id → price) to evaluate risk")
        marks = check_marks(marks)
        instrument = resolve_instrument(self.tx, new.instrument_id, new.symbol, new.exchange)
        limits = _merged(self._applicable(new.portfolio_id, new.strategy_id, _PRE_TRADE))
        if not limits:  # no policy in effect (the portfolio is owner-checked): nothing to measure
            return Verdict("allow", (), ())
        snapshot = self.snapshot(new.portfolio_id, marks, instrument.currency, now)
        intent = OrderIntent(
            instrument_id=instrument.id,
            side=new.side,
            quantity=new.quantity,
            price=new.price,
            stop_price=new.stop_price,
        )
        return evaluate(intent, snapshot, limits)

    def record_breach(
        self,
        verdict: Verdict,
        portfolio_id: int,
        instrument_id: int | None = None,
        order_id: int | None = None,
    ) -> list[int]:
        """One risk_breaches row (and audit row) per breach in the verdict."""
        portfolio = owned_portfolio(self.tx, portfolio_id)
        if instrument_id is not None:
            resolve_instrument(self.tx, instrument_id)
        if order_id is not None and owned_order(self.tx, order_id).portfolio_id != portfolio.id:
            raise NotFound(f"no order #{order_id}")
        observed = verdict.observed_json()
        ids = []
        for breach in verdict.breaches:
            owned_policy(self.tx, breach.policy_id)
            breach_id = self.tx.conn.execute(
                breaches.insert()
                .values(
                    policy_id=breach.policy_id,
                    portfolio_id=portfolio.id,
                    instrument_id=instrument_id,
                    order_id=order_id,
                    observed_json={**observed, "breach": breach.to_json()},
                    action=breach.action,
                    created_at=self.tx.now(),
                )
                .returning(breaches.c.id)
            ).scalar_one()
            self.tx.audit(
                "POLICY",
                breach.policy_id,
                "BREACH",
                {
                    "breach_id": breach_id,
                    "order_id": order_id,
                    "message": breach.message,
                    "action": breach.action,
                },
                user_id=portfolio.user_id,
            )
            ids.append(breach_id)
        return ids

    def breaches(self, portfolio_id: int | None = None, limit: int = 20) -> list[sa.Row[Any]]:
        """Latest breaches, newest first, with the policy name."""
        query = (
            sa.select(breaches, policies.c.name.label("policy_name"), policies.c.scope_type)
            .join(policies, policies.c.id == breaches.c.policy_id)
            .where(self.tx.owned(policies.c.user_id))
            .order_by(breaches.c.created_at.desc(), breaches.c.id.desc())
            .limit(max(1, min(limit, 500)))
        )
        if portfolio_id is not None:
            owned_portfolio(self.tx, portfolio_id)
            query = query.where(breaches.c.portfolio_id == portfolio_id)
        return list(self.tx.conn.execute(query))
