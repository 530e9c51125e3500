"""Strategies: versioned configs. A new version is a new row; history is never deleted.

Positions belong to the version that traded them. Starting a version while another version of
the same strategy still holds open positions in that portfolio is refused (``check_start``):
close them with the old version first. Handing positions over silently would mix two
versions' PnL in one row.
"""

from __future__ import annotations

import builtins
from typing import Any

import sqlalchemy as sa

from dal import schema as t
from dal.errors import Conflict, InvalidInput, NotFound
from dal.models import NewStrategy, parse
from dal.ownership import owned_portfolio, owned_row
from dal.scope import Tx
from dal.types import new_uid

strategies = t.strategies


def version_key(version: str) -> tuple[int, ...]:
    """Versions compare numerically: 1.10 > 1.9."""
    return tuple(int(part) for part in version.split("."))


def owned_strategy(tx: Tx, strategy_id: int) -> sa.Row[Any]:
    return owned_row(tx, strategies, strategy_id, "strategy")


def _has_history(tx: Tx, strategy_id: int) -> bool:
    for table in (t.trades, t.orders, t.positions):
        if tx.conn.execute(
            sa.select(table.c.id).where(table.c.strategy_id == strategy_id).limit(1)
        ).first():
            return True
    return False


class StrategyService:
    def __init__(self, tx: Tx) -> None:
        self.tx = tx

    def create(self, data: NewStrategy | dict[str, Any]) -> sa.Row[Any]:
        """Create a strategy or a new version of one (a new row)."""
        new = parse(NewStrategy, data)
        user_id = self.tx.user_id
        if self.tx.conn.execute(
            sa.select(strategies.c.id).where(
                strategies.c.user_id == user_id,
                strategies.c.name == new.name,
                strategies.c.version == new.version,
            )
        ).first():
            raise Conflict(f"strategy {new.name!r} version {new.version} already exists")
        strategy_id = self.tx.conn.execute(
            strategies.insert()
            .values(
                uid=new_uid(),
                user_id=user_id,
                name=new.name,
                version=new.version,
                params_json=new.params,
                created_at=self.tx.now(),
            )
            .returning(strategies.c.id)
        ).scalar_one()
        self.tx.audit(
            "STRATEGY",
            strategy_id,
            "CREATE",
            {"name": new.name, "version": new.version, "params": new.params},
        )
        return owned_strategy(self.tx, strategy_id)

    def get(self, strategy_id: int) -> sa.Row[Any]:
        return owned_strategy(self.tx, strategy_id)

    def list(self, include_inactive: bool = False) -> list[sa.Row[Any]]:
        query = sa.select(strategies).where(self.tx.owned(strategies.c.user_id))
        if not include_inactive:
            query = query.where(strategies.c.is_active)
        rows = list(self.tx.conn.execute(query))
        return sorted(rows, key=lambda r: (r.name, version_key(r.version)))

    def versions(self, name: str) -> builtins.list[sa.Row[Any]]:
        rows = list(
            self.tx.conn.execute(
                sa.select(strategies).where(
                    strategies.c.user_id == self.tx.user_id, strategies.c.name == name
                )
            )
        )
        return sorted(rows, key=lambda r: version_key(r.version))

    def latest(self, name: str, version: str | None = None) -> sa.Row[Any]:
        """The named version, or the latest active one (numeric version order)."""
        rows = self.versions(name)
        if version is not None:
            rows = [r for r in rows if r.version == version]
        else:
            rows = [r for r in rows if r.is_active]
        if not rows:
            what = f"{name!r} version {version}" if version else f"active {name!r}"
            raise NotFound(f"no {what} strategy")
        return rows[-1]

    def set_active(self, strategy_id: int, active: bool) -> sa.Row[Any]:
        row = owned_strategy(self.tx, strategy_id)
        if row.is_active != active:
            self.tx.conn.execute(
                strategies.update().where(strategies.c.id == row.id).values(is_active=active)
            )
            self.tx.audit(
                "STRATEGY",
                row.id,
                "ACTIVATE" if active else "DEACTIVATE",
                {"name": row.name, "version": row.version},
            )
        return owned_strategy(self.tx, strategy_id)

    def delete(self, strategy_id: int) -> None:
        """Delete a strategy version without history; one with history is only deactivated
        (deleting it would turn its positions into manual ones)."""
        row = owned_strategy(self.tx, strategy_id)
        if _has_history(self.tx, row.id):
            raise Conflict(
                f"strategy {row.name!r} {row.version} has orders, trades or positions; "
                "deactivate it instead"
            )
        self.tx.conn.execute(strategies.delete().where(strategies.c.id == row.id))
        self.tx.audit("STRATEGY", row.id, "DELETE", {"name": row.name, "version": row.version})

    def check_start(self, strategy_id: int, portfolio_id: int) -> sa.Row[Any]:
        """Refuse to start a version while another version of the same strategy holds open
        positions in the portfolio."""
        row = owned_strategy(self.tx, strategy_id)
        owned_portfolio(self.tx, portfolio_id, writable=True)
        if not row.is_active:
            raise Conflict(f"strategy {row.name!r} {row.version} is deactivated")
        others = (
            sa.select(strategies.c.version, t.instruments.c.symbol, t.positions.c.quantity)
            .join(t.positions, t.positions.c.strategy_id == strategies.c.id)
            .join(t.instruments, t.instruments.c.id == t.positions.c.instrument_id)
            .where(
                strategies.c.user_id == row.user_id,
                strategies.c.name == row.name,
                strategies.c.id != row.id,
                t.positions.c.portfolio_id == portfolio_id,
            )
        )
        held = [r for r in self.tx.conn.execute(others) if r.quantity]
        if held:
            listing = ", ".join(f"{r.symbol} {r.quantity} (v{r.version})" for r in held)
            raise Conflict(
                f"version {row.version} of {row.name!r} cannot start: other versions still "
                f"hold positions in this portfolio: {listing}. Close them first."
            )
        return row


runs = t.strategy_runs


class StrategyRunService:
    """Run state of strategies per portfolio, persisted so running strategies resume after a
    restart. The runtime (strategies/runtime.py) drives it; users see it through the bot."""

    def __init__(self, tx: Tx) -> None:
        self.tx = tx

    def _run(self, strategy_id: int, portfolio_id: int) -> sa.Row[Any] | None:
        return self.tx.conn.execute(
            sa.select(runs).where(
                runs.c.strategy_id == strategy_id, runs.c.portfolio_id == portfolio_id
            )
        ).one_or_none()

    def _run_row(self, strategy_id: int, portfolio_id: int) -> sa.Row[Any]:
        """The run just written (start/stop always leave one)."""
        row = self._run(strategy_id, portfolio_id)
        if row is None:
            raise NotFound(f"no run of strategy #{strategy_id} on portfolio #{portfolio_id}")
        return row

    def start(self, strategy_id: int, portfolio_id: int) -> sa.Row[Any]:
        """Mark a version as running on a portfolio (refused while another version of the
        same strategy holds positions there; see StrategyService.check_start)."""
        strategy = StrategyService(self.tx).check_start(strategy_id, portfolio_id)
        now = self.tx.now()
        existing = self._run(strategy.id, portfolio_id)
        values = {"status": "RUNNING", "started_at": now, "stopped_at": None, "error": None}
        if existing is None:
            self.tx.conn.execute(
                runs.insert().values(strategy_id=strategy.id, portfolio_id=portfolio_id, **values)
            )
        else:
            self.tx.conn.execute(runs.update().where(runs.c.id == existing.id).values(**values))
        self.tx.audit(
            "STRATEGY",
            strategy.id,
            "START",
            {"portfolio_id": portfolio_id, "version": strategy.version},
            user_id=strategy.user_id,
        )
        return self._run_row(strategy.id, portfolio_id)

    def stop(
        self, strategy_id: int, portfolio_id: int, status: str = "STOPPED", error: str | None = None
    ) -> sa.Row[Any]:
        """Record that a run ended: STOPPED (by its owner), CRASHED (with the error) or
        FINISHED (its data ended)."""
        if status not in ("STOPPED", "CRASHED", "FINISHED"):
            raise InvalidInput(f"a run ends STOPPED, CRASHED or FINISHED, not {status!r}")
        strategy = owned_strategy(self.tx, strategy_id)
        owned_portfolio(self.tx, portfolio_id)
        existing = self._run(strategy.id, portfolio_id)
        if existing is None:
            raise NotFound(
                f"strategy {strategy.name!r} is not running on portfolio #{portfolio_id}"
            )
        self.tx.conn.execute(
            runs.update()
            .where(runs.c.id == existing.id)
            .values(status=status, stopped_at=self.tx.now(), error=(error or None) and error[:2000])
        )
        self.tx.audit(
            "STRATEGY",
            strategy.id,
            "STOP",
            {
                "portfolio_id": portfolio_id,
                "status": status,
                **({"error": error[:500]} if error else {}),
            },
            user_id=strategy.user_id,
        )
        return self._run_row(strategy.id, portfolio_id)

    def list(self) -> list[sa.Row[Any]]:
        """Runs of the user's strategies (every user's in admin scope), with names."""
        return list(
            self.tx.conn.execute(
                sa.select(
                    runs,
                    strategies.c.name,
                    strategies.c.version,
                    strategies.c.user_id,
                    t.portfolios.c.name.label("portfolio_name"),
                )
                .join(strategies, strategies.c.id == runs.c.strategy_id)
                .join(t.portfolios, t.portfolios.c.id == runs.c.portfolio_id)
                .where(self.tx.owned(strategies.c.user_id))
                .order_by(strategies.c.name, runs.c.id)
            )
        )

    def running(self) -> builtins.list[sa.Row[Any]]:
        """Runs to resume at start-up (admin/system scope: every user's)."""
        return [r for r in self.list() if r.status == "RUNNING"]
