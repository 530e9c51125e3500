"""Whose row is it: the checks every service runs before it reads or changes a row by id.

A row belongs to the acting user when its ``user_id`` is theirs, or — for rows without one
(orders) — when its portfolio's is. Another user's row and a row that does not exist give the
same ``NotFound``, so ids reveal nothing. The admin scope sees every row (``Tx.owned``).

* ``owned_row``: any table, by id.
* ``owned_portfolio`` and its fast forms: the portfolio check every service that takes a
  portfolio id runs. On a fresh session (every short bot call, every fill) the actor's approval
  and the ownership are checked in the same statement as the read (``one_statement_check``);
  a miss of that statement proves nothing, and the two-step check then raises the precise
  error (NotApproved before NotFound).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from dal import schema as t
from dal.compiled import DriverStatement, row_type
from dal.errors import Conflict, NotFound
from dal.models import valid_id
from dal.scope import Tx


def owned_row(tx: Tx, table: sa.Table, row_id: int, noun: str) -> sa.Row[Any]:
    """The row ``row_id`` of ``table`` if the actor may see it, else NotFound("no <noun> #id")."""
    if not valid_id(row_id):
        raise NotFound(f"no {noun} #{row_id}")
    query = sa.select(table).where(table.c.id == row_id)
    if "user_id" in table.c:
        query = query.where(tx.owned(table.c.user_id))
    else:
        portfolios = t.portfolios
        query = query.join(portfolios, portfolios.c.id == table.c.portfolio_id).where(
            tx.owned(portfolios.c.user_id)
        )
    row = tx.conn.execute(query).one_or_none()
    if row is None:
        raise NotFound(f"no {noun} #{row_id}")
    return row


portfolios = t.portfolios


# --- query functions (used by every service that takes a portfolio id) --------------------------
# Hot-path statements are built once: building a statement per call costs more than running it.
_PORTFOLIO = sa.select(portfolios).where(portfolios.c.id == sa.bindparam("portfolio_id"))
_OWNED_PORTFOLIO = _PORTFOLIO.where(portfolios.c.user_id == sa.bindparam("owner_id"))


# The same check in one statement: the portfolio, owned by the actor, who is approved and
# active. As a query of the portfolio, and as a condition for a query of its rows (never
# correlated to the tables of that query).
OF_APPROVED_OWNER = (
    portfolios.c.id == sa.bindparam("portfolio_id"),
    portfolios.c.user_id == sa.bindparam("owner_id"),
    t.users.c.id == portfolios.c.user_id,
    t.users.c.is_active == sa.true(),
    t.users.c.approved_at.is_not(None),
)
_APPROVED_OWNER_OF_PORTFOLIO = sa.exists().where(*OF_APPROVED_OWNER).correlate(None)
# The owner's time zone rides along: a fill's PnL summary and a DAY order's end need it.
_PORTFOLIO_OF_APPROVED_OWNER = sa.select(
    portfolios, t.users.c.timezone.label("owner_timezone")
).where(*OF_APPROVED_OWNER)
# A row of that query read as part of a wider statement's row (as Core's rows are read).
PortfolioRow = row_type([c.name for c in portfolios.c] + ["owner_timezone"])


# What a balance check needs of the portfolio's account.
ACCOUNT_TERMS = (t.accounts.c.margin_leverage, t.accounts.c.base_currency)
AccountTerms = row_type([c.name for c in ACCOUNT_TERMS])


class PortfolioWith:
    """The portfolio check of a fresh session and the rows of ``table`` that go with the
    portfolio (``on``, a condition on both tables), in one statement: the portfolio LEFT JOIN
    the table, so a portfolio without such rows still comes back, once. The portfolio is then
    remembered as ``owned_portfolio`` remembers it.

    ``balance_lock`` also takes the portfolio's balance lock and reads its account's terms
    (``lock_portfolio_account``'s work, remembered for it): for reads that an order's balance
    check follows in the same transaction."""

    def __init__(
        self, table: sa.Table, on: sa.ColumnElement[bool], *, balance_lock: bool = False
    ) -> None:
        columns = [*_PORTFOLIO_OF_APPROVED_OWNER.selected_columns, *ACCOUNT_TERMS]
        query = (
            sa.select(*columns, *(c.label(f"with_{c.name}") for c in table.c))
            .select_from(
                portfolios.join(t.accounts, t.accounts.c.id == portfolios.c.account_id).outerjoin(
                    table, on
                )
            )
            .where(*OF_APPROVED_OWNER)
        )
        if balance_lock:
            query = query.with_for_update(key_share=True, of=portfolios)
        self.statement = DriverStatement(query)
        self.balance_lock = balance_lock
        self.row_type = row_type([c.name for c in table.c])
        self._split = len(columns)
        self._terms_at = len(columns) - len(ACCOUNT_TERMS)
        self._id_at = len(columns) + list(table.c.keys()).index("id")

    def read(self, tx: Tx, portfolio_id: int, params: dict[str, Any]) -> list[Any] | None:
        """The table's rows, the portfolio checked. None when the session is not fresh, the
        portfolio was checked already, or the statement found nothing (which proves nothing):
        the caller then checks the portfolio as usual and reads its rows itself."""
        if portfolio_id in tx.state.get("checked_portfolios", ()) or not one_statement_check(
            tx, portfolio_id
        ):
            return None
        rows = self.statement.execute(tx.conn, {**owner_params(tx, portfolio_id), **params})
        if not rows:
            return None
        split, terms_at = self._split, self._terms_at
        first = rows[0]
        _remember(tx, PortfolioRow(*first[:terms_at]))
        if self.balance_lock:
            locks = tx.state.setdefault("balance_locks", {})
            locks[portfolio_id] = AccountTerms(*first[terms_at:split])
        return [self.row_type(*row[split:]) for row in rows if row[self._id_at] is not None]


def owned_portfolio(tx: Tx, portfolio_id: int, *, writable: bool = False) -> sa.Row[Any]:
    """The portfolio if the actor owns it (or in admin scope), else NotFound; NotApproved
    first when the acting user is not approved and active.

    ``writable`` also refuses archived portfolios: their history stays but nothing new lands.
    """
    return _owned_portfolio(tx, portfolio_id, writable, _PORTFOLIO_OF_APPROVED_OWNER)


def owned_portfolio_rows(tx: Tx, portfolio_id: int, query: sa.Select[Any]) -> list[sa.Row[Any]]:
    """The rows of ``query``, which reads rows of this one portfolio, after the check of
    ``owned_portfolio`` (the portfolio row itself is not returned).

    On a fresh session the check rides in the query as a condition: one statement instead of
    two. Rows prove the check passed; no rows prove nothing, so the precise check runs then
    (NotApproved before NotFound), and the query again.
    """
    if one_statement_check(tx, portfolio_id):
        checked = query.where(_APPROVED_OWNER_OF_PORTFOLIO)
        rows = list(tx.conn.execute(checked, owner_params(tx, portfolio_id)))
        if rows:
            tx.state["approved"] = True  # the rows prove the actor approved and active, too
            return rows
    owned_portfolio(tx, portfolio_id)
    return list(tx.conn.execute(query))


def one_statement_check(tx: Tx, portfolio_id: int) -> bool:
    """Whether the actor's approval and ownership can be checked in one statement: while the
    session has not read the user row (every short bot call starts so; on PostgreSQL each
    statement is a round trip), for a user outside the admin scope. A miss of that statement
    proves nothing: the two-step check then raises the precise error."""
    return (
        not tx.admin_scope
        and tx.actor.user_id is not None
        and "user" not in tx.state
        and valid_id(portfolio_id)
    )


def owner_params(tx: Tx, portfolio_id: int) -> dict[str, Any]:
    return {"portfolio_id": portfolio_id, "owner_id": tx.actor.user_id}


def _owned_portfolio(
    tx: Tx, portfolio_id: int, writable: bool, one_statement: sa.Select[Any]
) -> sa.Row[Any]:
    if not valid_id(portfolio_id):
        raise NotFound(f"no portfolio #{portfolio_id}")
    # Checked once per transaction: an order's risk check, balance check and insert each ask.
    checked: dict[int, sa.Row[Any]] = tx.state.setdefault("checked_portfolios", {})
    row = checked.get(portfolio_id)
    if row is None:
        if one_statement_check(tx, portfolio_id):
            row = tx.conn.execute(one_statement, owner_params(tx, portfolio_id)).one_or_none()
            if row is not None:
                _remember(tx, row)
        if row is None:
            row = checked[portfolio_id] = _portfolio_in_scope(tx, portfolio_id)
    if writable and row.archived_at is not None:
        raise Conflict(f"portfolio {row.name!r} is archived")
    return row


def _remember(tx: Tx, row: Any) -> None:
    """A portfolio the one-statement check read: checked for this transaction, the actor
    approved and active, the owner's zone known."""
    tx.state.setdefault("checked_portfolios", {})[row.id] = row
    tx.state["approved"] = True
    tx.state.setdefault("owner_zones", {})[row.id] = row.owner_timezone


def forget_portfolios(tx: Tx) -> None:
    """After a change to portfolio rows: the next check in this transaction reads them again
    (a balance lock taken stays taken; its account terms are read again)."""
    tx.state.pop("checked_portfolios", None)
    tx.state.pop("balance_locks", None)


def _portfolio_in_scope(tx: Tx, portfolio_id: int) -> sa.Row[Any]:
    """The acting user's approval (its row, read once per session), then the portfolio."""
    owner = tx.owner_id()
    if owner is None:
        row = tx.conn.execute(_PORTFOLIO, {"portfolio_id": portfolio_id}).one_or_none()
    else:
        row = tx.conn.execute(
            _OWNED_PORTFOLIO, {"portfolio_id": portfolio_id, "owner_id": owner}
        ).one_or_none()
    if row is None:
        raise NotFound(f"no portfolio #{portfolio_id}")
    return row
