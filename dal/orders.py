"""Orders: place, cancel, status transitions, idempotent on client and broker ids."""

from __future__ import annotations

import builtins
import logging
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from dal import schema as t
from dal.audit import audit_row_of
from dal.compiled import DriverStatement
from dal.decimals import check_amount
from dal.errors import Conflict, InvalidInput, NotFound
from dal.instruments import check_increments, check_min_notional, resolve_instrument
from dal.models import NewOrder, check_json_arg, check_text, parse
from dal.ownership import owned_portfolio, owned_portfolio_rows, owned_row
from dal.scope import Tx, read_only
from dal.strategies import owned_strategy
from dal.types import new_uid
from dal.vocabulary import OPEN_STATUSES, ORDER_STATUSES

orders = t.orders
portfolios = t.portfolios
log = logging.getLogger("tradebook.ingest")

TERMINAL = frozenset({"FILLED", "CANCELED", "REJECTED", "EXPIRED"})
_OPEN = frozenset(OPEN_STATUSES)
# Legal status changes (a repeat of the current status is a no-op, so replays are harmless).
TRANSITIONS: dict[str, frozenset[str]] = {
    "NEW": frozenset({"PARTIALLY_FILLED", "FILLED", "CANCELED", "REJECTED", "EXPIRED"}),
    "PARTIALLY_FILLED": frozenset({"FILLED", "CANCELED", "REJECTED", "EXPIRED"}),
}

# Fields that must match when an idempotency key is reused.
_IDENTITY_FIELDS = ("instrument_id", "side", "type", "quantity", "price", "stop_price")


# SQLite's order insert (PostgreSQL's writes its audit row too: _INSERT_AUDITED_ORDER).
_INSERT_ORDER = sqlite.insert(orders).on_conflict_do_nothing().returning(*orders.c)


# An order's broker id, where it has none, in one statement with the ownership check (the
# admin scope passes any_owner).
_RECORD_BROKER_ID = DriverStatement(
    orders.update()
    .where(
        orders.c.id == sa.bindparam("order_id"),
        orders.c.broker_order_id.is_(None),
        orders.c.portfolio_id.in_(
            sa.select(t.portfolios.c.id).where(
                sa.or_(
                    sa.bindparam("any_owner", type_=sa.Boolean),
                    t.portfolios.c.user_id == sa.bindparam("owner_id"),
                )
            )
        ),
    )
    .values(
        broker_order_id=sa.bindparam("b_broker_order_id"),
        updated_at=sa.bindparam("b_updated_at"),
    )
    .returning(*orders.c)
)


def _insert_audited_order() -> sa.Select[Any]:
    """PostgreSQL: the order's insert and, when it inserted a row, its audit row, as one
    statement of data-modifying CTEs (as a single fill's writes, dal/ingest.py)."""
    columns = [
        "uid", "status", "placed_at", "updated_at", "meta_json", "reserve_price", "portfolio_id",
        "instrument_id", "strategy_id", "side", "type", "time_in_force", "quantity", "price",
        "stop_price", "client_order_id", "broker_order_id",
    ]  # fmt: skip
    new_order = (
        postgresql.insert(orders)
        .values({name: sa.bindparam(f"o_{name}") for name in columns})
        .on_conflict_do_nothing()
        .returning(*orders.c)
        .cte("new_order")
    )
    action = sa.bindparam("a_action", type_=t.audit_log.c.action.type)
    audit_row = audit_row_of("ORDER", new_order.c.id, action).cte("order_audit")
    return sa.select(new_order).add_cte(audit_row)


_INSERT_AUDITED_ORDER = DriverStatement(_insert_audited_order(), dialect="postgresql")


def owned_order(tx: Tx, order_id: int) -> sa.Row[Any]:
    return owned_row(tx, orders, order_id, "order")


def _with_client_id(portfolio_id: int, client_order_id: str) -> sa.Select[Any]:
    return sa.select(orders).where(
        orders.c.portfolio_id == portfolio_id, orders.c.client_order_id == client_order_id
    )


def order_by_client_id(
    conn: sa.Connection, portfolio_id: int, client_order_id: str
) -> sa.Row[Any] | None:
    return conn.execute(_with_client_id(portfolio_id, client_order_id)).one_or_none()


def owned_order_by_client_id(tx: Tx, portfolio_id: int, client_order_id: str) -> sa.Row[Any] | None:
    """The portfolio's order with that client id, the portfolio checked as
    ``owned_portfolio`` checks it (in the same statement on a fresh session)."""
    rows = owned_portfolio_rows(tx, portfolio_id, _with_client_id(portfolio_id, client_order_id))
    return rows[0] if rows else None


def order_by_broker_id(
    conn: sa.Connection, portfolio_id: int, instrument_id: int, broker_order_id: str
) -> sa.Row[Any] | None:
    return conn.execute(
        sa.select(orders).where(
            orders.c.portfolio_id == portfolio_id,
            orders.c.instrument_id == instrument_id,
            orders.c.broker_order_id == broker_order_id,
        )
    ).one_or_none()


def check_transition(order: sa.Row[Any], status: str) -> bool:
    """True when the change applies, False for a harmless repeat; Conflict when illegal."""
    if status not in ORDER_STATUSES:
        raise InvalidInput(f"unknown order status {status!r}")
    if status == order.status:
        return False
    if status not in TRANSITIONS.get(order.status, frozenset()):
        raise Conflict(f"order #{order.id} is {order.status}; it cannot become {status}")
    return True


MAX_OFFSET = 10**9  # beyond any real history; larger ones overflow the databases' integers


class OrderService:
    def __init__(self, tx: Tx) -> None:
        self.tx = tx

    def place(
        self,
        data: NewOrder | dict[str, Any],
        *,
        status: str = "NEW",
        reason: str | None = None,
        reserve_price: Decimal | None = None,
    ) -> sa.Row[Any]:
        """Store a new order (status NEW). The same client/broker id with the same fields
        returns the existing order; with different fields it raises Conflict.

        ``status="REJECTED"`` with a ``reason`` stores an order refused before it reached a
        gateway (by pre-trade risk or the account's balance), so the refusal stays on record.
        ``reserve_price`` is what a BUY holds back per unit while it is open (dal/balances.py).
        """
        new = parse(NewOrder, data)
        reason = check_text(reason, "reason")
        if status not in ("NEW", "REJECTED"):
            raise InvalidInput("an order is placed NEW (or stored REJECTED with a reason)")
        tx = self.tx
        portfolio = owned_portfolio(tx, new.portfolio_id, writable=True)
        instrument = resolve_instrument(tx, new.instrument_id, new.symbol, new.exchange)
        check_increments(instrument, new.quantity, new.price, new.stop_price)
        check_min_notional(instrument, new.quantity, new.price or new.stop_price)
        if new.strategy_id is not None:
            strategy = owned_strategy(tx, new.strategy_id)
            if strategy.user_id != portfolio.user_id:
                raise NotFound(f"no strategy #{new.strategy_id}")
        values: dict[str, Any] = {
            "portfolio_id": portfolio.id,
            "instrument_id": instrument.id,
            "strategy_id": new.strategy_id,
            "side": new.side,
            "type": new.type,
            "time_in_force": new.time_in_force,
            "quantity": new.quantity,
            "price": new.price,
            "stop_price": new.stop_price,
            "client_order_id": new.client_order_id,
            "broker_order_id": new.broker_order_id,
        }
        now = tx.now()
        meta = dict(new.meta)
        if reason:
            meta["reason"] = reason
        inserted = {
            "uid": new_uid(),
            "status": status,
            "placed_at": new.placed_at or now,
            "updated_at": now,
            "meta_json": meta,
            "reserve_price": None if reserve_price is None else check_amount(reserve_price),
            **values,
        }
        action = "CREATE" if status == "NEW" else "REJECT"
        details = {k: v for k, v in values.items() if v is not None}
        details.update({"reason": reason} if reason else {})
        # Inserted unless its client or broker id is taken: then the order with that id is
        # the answer (the same order placed again) or a Conflict (another order's id).
        if tx.dialect == "postgresql":  # the order and its audit row in one round trip
            rows = _INSERT_AUDITED_ORDER.execute(
                tx.conn,
                {
                    **{f"o_{name}": value for name, value in inserted.items()},
                    "a_user_id": portfolio.user_id,
                    "a_action": action,
                    "a_details": details,
                    "a_created_at": now,
                },
            )
            row: sa.Row[Any] | None = rows[0] if rows else None  # a named tuple of its columns
        else:
            row = tx.conn.execute(_INSERT_ORDER, inserted).one_or_none()
            if row is not None:
                tx.audit("ORDER", row.id, action, details, user_id=portfolio.user_id)
        if row is None:
            existing = self._existing(values)
            if existing is None:  # taken by an order since deleted: cannot happen to orders
                raise Conflict("this order's id is taken; place it again")
            return existing
        order_id = row.id
        log.info(
            "order %s (in transaction) %s %s #%s",
            "placed" if status == "NEW" else "rejected",
            new.side,
            new.quantity,
            order_id,
            extra={"correlation_id": row.client_order_id or row.uid, "order_id": order_id},
        )
        return row

    def _existing(self, values: dict[str, Any]) -> sa.Row[Any] | None:
        conn = self.tx.conn
        found = None
        if values["client_order_id"] is not None:
            found = order_by_client_id(conn, values["portfolio_id"], values["client_order_id"])
        if found is None and values["broker_order_id"] is not None:
            found = order_by_broker_id(
                conn, values["portfolio_id"], values["instrument_id"], values["broker_order_id"]
            )
        if found is None:
            return None
        different = [f for f in _IDENTITY_FIELDS if getattr(found, f) != values[f]]
        for key in ("client_order_id", "broker_order_id", "strategy_id"):
            if values[key] is not None and getattr(found, key) not in (None, values[key]):
                different.append(key)
        if different:
            raise Conflict(
                f"order #{found.id} already uses this id with different {', '.join(different)}"
            )
        return found

    def get(self, order_id: int) -> sa.Row[Any]:
        return owned_order(self.tx, order_id)

    def by_client_id(self, portfolio_id: int, client_order_id: str) -> sa.Row[Any]:
        row = owned_order_by_client_id(self.tx, portfolio_id, client_order_id)
        if row is None:
            raise NotFound(f"no order with client id {client_order_id!r}")
        return row

    def by_broker_id(
        self, portfolio_id: int, instrument_id: int, broker_order_id: str
    ) -> sa.Row[Any]:
        owned_portfolio(self.tx, portfolio_id)
        row = order_by_broker_id(self.tx.conn, portfolio_id, instrument_id, broker_order_id)
        if row is None:
            raise NotFound(f"no order with broker id {broker_order_id!r}")
        return row

    def cancel(self, order_id: int, reason: str | None = None) -> sa.Row[Any]:
        return self.update_status(order_id, "CANCELED", reason=reason)

    def update_status(
        self,
        order_id: int,
        status: str,
        *,
        broker_order_id: str | None = None,
        reason: str | None = None,
        meta: dict[str, Any] | None = None,
    ) -> sa.Row[Any]:
        """Move an order along NEW → PARTIALLY_FILLED → FILLED or to CANCELED / REJECTED /
        EXPIRED. Terminal statuses are final; repeating the current status changes nothing."""
        tx = self.tx
        order = owned_order(tx, order_id)
        reason = check_text(reason, "reason")
        if meta is not None:
            check_json_arg(meta, "meta")
        locked = tx.conn.execute(
            sa.select(orders).where(orders.c.id == order.id).with_for_update()
        ).one()
        changes: dict[str, Any] = {}
        if broker_order_id is not None and locked.broker_order_id != broker_order_id:
            if locked.broker_order_id is not None:
                raise Conflict(
                    f"order #{order_id} already has broker id {locked.broker_order_id!r}"
                )
            changes["broker_order_id"] = broker_order_id
        if status in ("PARTIALLY_FILLED", "FILLED") and status != locked.status:
            raise InvalidInput("fill statuses follow from fills; ingest the fill instead")
        applies = check_transition(locked, status)
        if applies:
            changes["status"] = status
        if meta or reason:
            merged = dict(locked.meta_json or {})
            merged.update(meta or {})
            if reason:
                merged["reason"] = reason
            changes["meta_json"] = merged
        if not changes:
            return locked
        changes["updated_at"] = tx.now()
        tx.conn.execute(orders.update().where(orders.c.id == locked.id).values(**changes))
        action = {"CANCELED": "CANCEL", "REJECTED": "REJECT", "EXPIRED": "EXPIRE"}.get(
            status, "UPDATE"
        )
        tx.audit(
            "ORDER",
            locked.id,
            action if applies else "UPDATE",
            {
                "status": status,
                **({"reason": reason} if reason else {}),
                **({"broker_order_id": broker_order_id} if broker_order_id else {}),
            },
            user_id=_owner(tx, locked.portfolio_id),
        )
        return owned_order(tx, order_id)

    def record_broker_id(self, order_id: int, broker_order_id: str) -> Any:
        """Record the broker's id of an order that has none yet (the broker took the order);
        the order as it is now. The same id again changes nothing; another is a Conflict."""
        tx = self.tx
        checked = check_text(broker_order_id, "broker_order_id", limit=64)
        if not checked:
            raise InvalidInput("give the broker's order id")
        broker_order_id = checked
        owner = tx.owner_id()
        rows = _RECORD_BROKER_ID.execute(
            tx.conn,
            {
                "order_id": order_id,
                "b_broker_order_id": broker_order_id,
                "b_updated_at": tx.now(),
                "owner_id": owner,
                "any_owner": owner is None,
            },
        )
        if not rows:  # not the actor's, or it has a broker id already
            order = owned_order(tx, order_id)
            if order.broker_order_id != broker_order_id:
                raise Conflict(f"order #{order_id} already has broker id {order.broker_order_id!r}")
            return order
        (order,) = rows
        tx.audit(
            "ORDER",
            order.id,
            "UPDATE",
            {"status": order.status, "broker_order_id": broker_order_id},
            user_id=owner if owner is not None else _owner(tx, order.portfolio_id),
        )
        return order

    @read_only
    def list(
        self,
        portfolio_id: int | None = None,
        status: str | list[str] | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[sa.Row[Any]]:
        """Orders newest first (open ones by default: NEW and PARTIALLY_FILLED)."""
        statuses = [status] if isinstance(status, str) else list(status or OPEN_STATUSES)
        if not isinstance(offset, int) or not 0 <= offset <= MAX_OFFSET:
            raise InvalidInput(f"a page offset is a whole number from 0 to {MAX_OFFSET}")
        for s in statuses:
            if s not in ORDER_STATUSES:
                raise InvalidInput(
                    f"unknown order status {s!r}; use one of {', '.join(ORDER_STATUSES)}"
                )
        wanted: sa.ColumnElement[bool] = orders.c.status.in_(statuses)
        if _OPEN.issuperset(statuses):
            # Repeating the partial index's predicate lets the index of open orders serve it.
            wanted = sa.and_(t.OPEN_ORDER, wanted)
        query = (
            sa.select(orders, t.instruments.c.symbol)
            .join(t.instruments, t.instruments.c.id == orders.c.instrument_id)
            .where(wanted)
            .order_by(orders.c.placed_at.desc(), orders.c.id.desc())
            .limit(max(1, min(limit, 1000)))
            .offset(max(0, offset))
        )
        if portfolio_id is not None:
            # The bot's /orders: the ownership check rides in the query on a fresh session.
            query = query.where(orders.c.portfolio_id == portfolio_id)
            return owned_portfolio_rows(self.tx, portfolio_id, query)
        query = query.join(portfolios, portfolios.c.id == orders.c.portfolio_id)
        return list(self.tx.conn.execute(query.where(self.tx.owned(portfolios.c.user_id))))

    @read_only
    def open_orders(
        self, portfolio_id: int | None = None, limit: int = 50
    ) -> builtins.list[sa.Row[Any]]:
        return self.list(portfolio_id, None, limit)


def _owner(tx: Tx, portfolio_id: int) -> int:
    user_id: int = tx.conn.execute(
        sa.select(portfolios.c.user_id).where(portfolios.c.id == portfolio_id)
    ).scalar_one()
    return user_id
