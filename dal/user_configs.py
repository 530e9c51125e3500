"""Alerts, schedules and screeners: per-user rows with typed JSON configs."""

from __future__ import annotations

import datetime as dt
from typing import Any, ClassVar

import sqlalchemy as sa

from dal import schema as t
from dal.configs import ALERT_CONFIGS, ScheduleConfig, ScreenerConfig, next_run_after
from dal.errors import Conflict, InvalidInput
from dal.models import (
    NewAlert,
    NewSchedule,
    NewScreener,
    aware_arg,
    parse,
    parse_config,
)
from dal.ownership import owned_portfolio, owned_row
from dal.scope import Tx
from dal.types import new_uid


class _UserConfigService:
    """Create, list, edit, pause and delete a user's own rows of one table."""

    table: ClassVar[sa.Table]
    entity: ClassVar[str]

    def __init__(self, tx: Tx) -> None:
        self.tx = tx

    def _owned(self, row_id: int) -> sa.Row[Any]:
        return owned_row(self.tx, self.table, row_id, self.entity.lower())

    def _check_name_free(self, name: str, except_id: int | None = None) -> None:
        query = sa.select(self.table.c.id).where(
            self.table.c.user_id == self.tx.user_id, self.table.c.name == name
        )
        if except_id is not None:
            query = query.where(self.table.c.id != except_id)
        if self.tx.conn.execute(query).first():
            raise Conflict(f"you already have a {self.entity.lower()} named {name!r}")

    def _insert(self, values: dict[str, Any]) -> sa.Row[Any]:
        self._check_name_free(values["name"])
        row_id = self.tx.conn.execute(
            self.table.insert()
            .values(uid=new_uid(), user_id=self.tx.user_id, created_at=self.tx.now(), **values)
            .returning(self.table.c.id)
        ).scalar_one()
        self.tx.audit(self.entity, row_id, "CREATE", values)
        return self._owned(row_id)

    def _update(self, row_id: int, values: dict[str, Any]) -> sa.Row[Any]:
        self.tx.conn.execute(self.table.update().where(self.table.c.id == row_id).values(**values))
        self.tx.audit(self.entity, row_id, "UPDATE", values)
        return self._owned(row_id)

    def get(self, row_id: int) -> sa.Row[Any]:
        return self._owned(row_id)

    def list(self, include_inactive: bool = True) -> list[sa.Row[Any]]:
        query = (
            sa.select(self.table)
            .where(self.tx.owned(self.table.c.user_id))
            .order_by(self.table.c.id)
        )
        if not include_inactive:
            query = query.where(self.table.c.is_active)
        return list(self.tx.conn.execute(query))

    def set_active(self, row_id: int, active: bool) -> sa.Row[Any]:
        row = self._owned(row_id)
        if row.is_active == active:
            return row
        self.tx.conn.execute(
            self.table.update().where(self.table.c.id == row.id).values(is_active=active)
        )
        self.tx.audit(self.entity, row.id, "ACTIVATE" if active else "DEACTIVATE", {})
        return self._owned(row_id)

    def delete(self, row_id: int) -> None:
        row = self._owned(row_id)
        self.tx.conn.execute(self.table.delete().where(self.table.c.id == row.id))
        self.tx.audit(self.entity, row.id, "DELETE", {"name": row.name})


class AlertService(_UserConfigService):
    table = t.alerts
    entity = "ALERT"

    def create(self, data: NewAlert | dict[str, Any]) -> sa.Row[Any]:
        new = parse(NewAlert, data)
        if new.portfolio_id is not None:
            owned_portfolio(self.tx, new.portfolio_id)
        config = new.typed_config().to_json()
        self._known_symbol(config)
        return self._insert(
            {
                "name": new.name,
                "type": new.type,
                "portfolio_id": new.portfolio_id,
                "config_json": config,
            }
        )

    def update_config(self, alert_id: int, config: dict[str, Any]) -> sa.Row[Any]:
        row = self._owned(alert_id)
        typed = parse_config(ALERT_CONFIGS[row.type], config).to_json()
        self._known_symbol(typed)
        return self._update(row.id, {"config_json": typed})

    def _known_symbol(self, config: dict[str, Any]) -> None:
        """An alert on a symbol no instrument has would never fire: refused when stored."""
        symbol = config.get("symbol")
        if (
            symbol is not None
            and not self.tx.conn.execute(
                sa.select(t.instruments.c.id).where(t.instruments.c.symbol == symbol).limit(1)
            ).first()
        ):
            raise InvalidInput(f"no instrument {symbol!r}: an alert on it would never fire")


class ScheduleService(_UserConfigService):
    """Schedules fire on a 5-field cron read in UTC (as the specification says)."""

    table = t.schedules
    entity = "SCHEDULE"

    def create(self, data: NewSchedule | dict[str, Any]) -> sa.Row[Any]:
        new = parse(NewSchedule, data)
        return self._insert(
            {
                "name": new.name,
                "cron": new.cron,
                "config_json": new.config.to_json(),
                "next_run_at": next_run_after(new.cron, self.tx.now()),
            }
        )

    def update(
        self, schedule_id: int, cron: str | None = None, config: dict[str, Any] | None = None
    ) -> sa.Row[Any]:
        row = self._owned(schedule_id)
        new = parse(
            NewSchedule,
            {"name": row.name, "cron": cron or row.cron, "config": config or row.config_json},
        )
        return self._update(
            row.id,
            {
                "cron": new.cron,
                "config_json": parse_config(ScheduleConfig, new.config).to_json(),
                "next_run_at": next_run_after(new.cron, self.tx.now()),
            },
        )

    def due(self, now: dt.datetime) -> list[sa.Row[Any]]:
        """Active schedules whose next run is at or before ``now`` (admin/system scope:
        every user's; otherwise the user's own)."""
        now = aware_arg(now, "now")
        return list(
            self.tx.conn.execute(
                sa.select(self.table)
                .where(
                    self.tx.owned(self.table.c.user_id),
                    self.table.c.is_active,
                    self.table.c.next_run_at <= now,
                )
                .order_by(self.table.c.next_run_at, self.table.c.id)
            )
        )

    def mark_run(self, schedule_id: int, ran_at: dt.datetime) -> sa.Row[Any]:
        """Record a run; the next run is the first cron time after ``ran_at``, so runs missed
        during downtime collapse into this one."""
        ran_at = aware_arg(ran_at, "ran_at")
        row = self._owned(schedule_id)
        self.tx.conn.execute(
            self.table.update()
            .where(self.table.c.id == row.id)
            .values(last_run_at=ran_at, next_run_at=next_run_after(row.cron, ran_at))
        )
        return self._owned(schedule_id)


class ScreenerService(_UserConfigService):
    table = t.screeners
    entity = "SCREENER"

    def create(self, data: NewScreener | dict[str, Any]) -> sa.Row[Any]:
        new = parse(NewScreener, data)
        return self._insert({"name": new.name, "config_json": new.config.to_json()})

    def update_config(self, screener_id: int, config: dict[str, Any]) -> sa.Row[Any]:
        row = self._owned(screener_id)
        typed = parse_config(ScreenerConfig, config)
        return self._update(row.id, {"config_json": typed.to_json()})
