"""Broker accounts and portfolios, with ownership checks."""

from __future__ import annotations

import builtins
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from dal import schema as t
from dal.errors import Conflict, InvalidInput, NotFound
from dal.models import NewAccount, NewPortfolio, check_text, parse
from dal.ownership import forget_portfolios, owned_portfolio, owned_row
from dal.pnl_summary import owner_zone
from dal.scope import Tx, read_only
from dal.types import new_uid

accounts = t.accounts
portfolios = t.portfolios

# The user's current portfolio (users.current_portfolio_id, unless archived), else the default,
# for an approved and active user: ``PortfolioService.current`` in one statement.
_CURRENT_OF_APPROVED_USER = (
    sa.select(portfolios)
    .join(t.users, t.users.c.id == portfolios.c.user_id)
    .where(
        t.users.c.id == sa.bindparam("user_id"),
        t.users.c.is_active == sa.true(),
        t.users.c.approved_at.is_not(None),
        sa.or_(
            sa.and_(
                portfolios.c.id == t.users.c.current_portfolio_id,
                portfolios.c.archived_at.is_(None),
            ),
            portfolios.c.is_default,
        ),
    )
    .order_by(portfolios.c.is_default)  # the current one first, when it is not the default
    .limit(1)
)


def broker_code_of(conn: sa.Connection, portfolio_id: int) -> str:
    """The code of the broker a portfolio trades at (the caller has checked ownership)."""
    code: str = conn.execute(
        sa.select(t.brokers.c.code)
        .join(accounts, accounts.c.broker_id == t.brokers.c.id)
        .join(portfolios, portfolios.c.account_id == accounts.c.id)
        .where(portfolios.c.id == portfolio_id)
    ).scalar_one()
    return code


def portfolio_by_name(tx: Tx, name: str) -> sa.Row[Any]:
    row = tx.conn.execute(
        sa.select(portfolios).where(
            sa.func.lower(portfolios.c.name) == name.strip().lower(),
            portfolios.c.user_id == tx.user_id,
        )
    ).first()
    if row is None:
        raise NotFound(f"no portfolio named {name!r}")
    return row


def owned_account(tx: Tx, account_id: int) -> sa.Row[Any]:
    return owned_row(tx, accounts, account_id, "account")


def portfolio_currency(tx: Tx, portfolio_id: int) -> str:
    currency: str = tx.conn.execute(
        sa.select(accounts.c.base_currency)
        .join(portfolios, portfolios.c.account_id == accounts.c.id)
        .where(portfolios.c.id == portfolio_id)
    ).scalar_one()
    return currency


def _has_history(tx: Tx, portfolio_id: int) -> bool:
    for table in (t.trades, t.orders, t.cash_movements):
        if tx.conn.execute(
            sa.select(table.c.id).where(table.c.portfolio_id == portfolio_id).limit(1)
        ).first():
            return True
    return False


MAX_LEVERAGE = Decimal(100)


def _checked_leverage(leverage: Decimal | None) -> Decimal | None:
    if leverage is not None and not Decimal(0) < leverage <= MAX_LEVERAGE:
        raise InvalidInput(f"leverage must be above 0 and at most {MAX_LEVERAGE}")
    return leverage


class AccountService:
    def __init__(self, tx: Tx) -> None:
        self.tx = tx

    def list(self) -> list[sa.Row[Any]]:
        return list(
            self.tx.conn.execute(
                sa.select(accounts, t.brokers.c.code.label("broker_code"))
                .join(t.brokers, t.brokers.c.id == accounts.c.broker_id)
                .where(self.tx.owned(accounts.c.user_id))
                .order_by(accounts.c.name)
            )
        )

    def get(self, account_id: int) -> sa.Row[Any]:
        return owned_account(self.tx, account_id)

    def default_portfolio(self, account_id: int) -> sa.Row[Any]:
        """Where events for orders tradebook did not place land, for a gateway that serves a
        whole broker account: the user's default portfolio if it is on this account, else the
        account's oldest portfolio that is not archived."""
        account = owned_account(self.tx, account_id)
        rows = list(
            self.tx.conn.execute(
                sa.select(portfolios)
                .where(portfolios.c.account_id == account.id, portfolios.c.archived_at.is_(None))
                .order_by(portfolios.c.is_default.desc(), portfolios.c.created_at, portfolios.c.id)
            )
        )
        if not rows:
            raise NotFound(f"account {account.name!r} has no portfolio to receive broker events")
        return rows[0]

    def list_for_user(self, user_id: int) -> builtins.list[sa.Row[Any]]:
        """Another user's accounts (admin scope only)."""
        self.tx.require_admin()
        return list(
            self.tx.conn.execute(
                sa.select(accounts, t.brokers.c.code.label("broker_code"))
                .join(t.brokers, t.brokers.c.id == accounts.c.broker_id)
                .where(accounts.c.user_id == user_id)
                .order_by(accounts.c.name)
            )
        )

    def by_name(self, name: str) -> sa.Row[Any]:
        row = self.tx.conn.execute(
            sa.select(accounts).where(
                accounts.c.user_id == self.tx.user_id,
                sa.func.lower(accounts.c.name) == name.strip().lower(),
            )
        ).first()
        if row is None:
            raise NotFound(f"no account named {name!r}")
        return row

    def create(self, data: NewAccount | dict[str, Any]) -> sa.Row[Any]:
        new = parse(NewAccount, data)
        user_id = self.tx.user_id
        conn = self.tx.conn
        broker_id = conn.execute(
            sa.select(t.brokers.c.id).where(t.brokers.c.code == new.broker)
        ).scalar_one_or_none()
        if broker_id is None:
            codes = ", ".join(conn.execute(sa.select(t.brokers.c.code)).scalars())
            raise InvalidInput(f"unknown broker {new.broker!r}; known: {codes}")
        if conn.execute(
            sa.select(accounts.c.id).where(
                accounts.c.user_id == user_id, accounts.c.name == new.name
            )
        ).first():
            raise Conflict(f"you already have an account named {new.name!r}")
        account_id = conn.execute(
            accounts.insert()
            .values(
                uid=new_uid(),
                user_id=user_id,
                broker_id=broker_id,
                name=new.name,
                account_uid=new.account_uid,
                base_currency=new.base_currency,
                margin_leverage=_checked_leverage(new.margin_leverage),
                created_at=self.tx.now(),
            )
            .returning(accounts.c.id)
        ).scalar_one()
        self.tx.audit("ACCOUNT", account_id, "CREATE", new.model_dump(mode="json"))
        return owned_account(self.tx, account_id)

    def set_margin(self, account_id: int, leverage: Decimal | None) -> sa.Row[Any]:
        """Make the account a margin account with this leverage limit, or (None) spot."""
        row = owned_account(self.tx, account_id)
        leverage = _checked_leverage(leverage)
        self.tx.conn.execute(
            accounts.update().where(accounts.c.id == row.id).values(margin_leverage=leverage)
        )
        self.tx.audit(
            "ACCOUNT", row.id, "UPDATE", {"margin_leverage": leverage}, user_id=row.user_id
        )
        return owned_account(self.tx, account_id)

    def set_trading_mode(self, account_id: int, mode: str) -> sa.Row[Any]:
        """Send the account's orders to the exchange's testnet or to the live exchange."""
        row = owned_account(self.tx, account_id)
        if mode not in t.TRADING_MODES:
            raise InvalidInput(f"trading mode must be testnet or live, not {mode!r}")
        self.tx.conn.execute(
            accounts.update().where(accounts.c.id == row.id).values(trading_mode=mode)
        )
        self.tx.audit(
            "ACCOUNT",
            row.id,
            "UPDATE",
            {"trading_mode": mode, "was": row.trading_mode},
            user_id=row.user_id,
        )
        return owned_account(self.tx, account_id)

    def delete(self, account_id: int) -> None:
        row = owned_account(self.tx, account_id)
        if self.tx.conn.execute(
            sa.select(portfolios.c.id).where(portfolios.c.account_id == row.id).limit(1)
        ).first():
            raise Conflict(
                f"account {row.name!r} still has portfolios; archive or delete them first"
            )
        self.tx.conn.execute(accounts.delete().where(accounts.c.id == row.id))
        self.tx.audit("ACCOUNT", row.id, "DELETE", {"name": row.name})


class PortfolioService:
    def __init__(self, tx: Tx) -> None:
        self.tx = tx

    @read_only
    def list(self, include_archived: bool = False) -> list[sa.Row[Any]]:
        query = (
            sa.select(
                portfolios,
                accounts.c.name.label("account_name"),
                accounts.c.base_currency,
                accounts.c.trading_mode,
                t.brokers.c.code.label("broker_code"),
            )
            .join(accounts, accounts.c.id == portfolios.c.account_id)
            .join(t.brokers, t.brokers.c.id == accounts.c.broker_id)
            .where(self.tx.owned(portfolios.c.user_id))
            .order_by(portfolios.c.is_default.desc(), portfolios.c.name)
        )
        if not include_archived:
            query = query.where(portfolios.c.archived_at.is_(None))
        return list(self.tx.conn.execute(query))

    @read_only
    def get(self, portfolio_id: int) -> sa.Row[Any]:
        return owned_portfolio(self.tx, portfolio_id)

    @read_only
    def owner_zone(self, portfolio_id: int) -> str:
        """The time zone of the portfolio's owner: where a DAY order of it ends."""
        owned_portfolio(self.tx, portfolio_id)
        return owner_zone(self.tx, portfolio_id)

    @read_only
    def by_name(self, name: str) -> sa.Row[Any]:
        return portfolio_by_name(self.tx, name)

    def broker_code(self, portfolio_id: int) -> str:
        """The code of the broker a portfolio trades at (PAPER, BINANCE, …)."""
        owned_portfolio(self.tx, portfolio_id)
        return broker_code_of(self.tx.conn, portfolio_id)

    @read_only
    def default(self) -> sa.Row[Any]:
        row = self.tx.conn.execute(
            sa.select(portfolios).where(
                portfolios.c.user_id == self.tx.user_id, portfolios.c.is_default
            )
        ).one_or_none()
        if row is None:
            raise NotFound("you have no default portfolio")
        return row

    @read_only
    def current(self) -> sa.Row[Any]:
        """The bot's portfolio context: users.current_portfolio_id, else the default."""
        if self.tx.actor.user_id is not None and "user" not in self.tx.state:
            # A fresh session (every bot command's): one statement. No row proves nothing;
            # the steps below then raise the precise error.
            row = self.tx.conn.execute(
                _CURRENT_OF_APPROVED_USER, {"user_id": self.tx.actor.user_id}
            ).one_or_none()
            if row is not None:
                return row
        user = self.tx.user_row()
        if user.current_portfolio_id is not None:
            row = self.tx.conn.execute(
                sa.select(portfolios).where(
                    portfolios.c.id == user.current_portfolio_id,
                    portfolios.c.user_id == self.tx.user_id,
                    portfolios.c.archived_at.is_(None),
                )
            ).one_or_none()
            if row is not None:
                return row
        return self.default()

    def set_current(self, portfolio_id: int) -> sa.Row[Any]:
        row = owned_portfolio(self.tx, portfolio_id, writable=True)
        if row.user_id != self.tx.user_id:
            raise NotFound(f"no portfolio #{portfolio_id}")
        self.tx.conn.execute(
            t.users.update().where(t.users.c.id == row.user_id).values(current_portfolio_id=row.id)
        )
        self.tx.forget_user()
        return row

    def create(self, data: NewPortfolio | dict[str, Any]) -> sa.Row[Any]:
        new = parse(NewPortfolio, data)
        user_id = self.tx.user_id
        account = owned_account(self.tx, new.account_id)
        conn = self.tx.conn
        if conn.execute(
            sa.select(portfolios.c.id).where(
                portfolios.c.user_id == user_id,
                sa.func.lower(portfolios.c.name) == new.name.lower(),
            )
        ).first():
            raise Conflict(f"you already have a portfolio named {new.name!r}")
        has_default = conn.execute(
            sa.select(portfolios.c.id).where(
                portfolios.c.user_id == user_id, portfolios.c.is_default
            )
        ).first()
        make_default = new.is_default or has_default is None
        if make_default and has_default is not None:
            conn.execute(
                portfolios.update()
                .where(portfolios.c.id == has_default.id)
                .values(is_default=False)
            )
        portfolio_id = conn.execute(
            portfolios.insert()
            .values(
                uid=new_uid(),
                user_id=user_id,
                account_id=account.id,
                name=new.name,
                description=new.description,
                is_default=make_default,
                created_at=self.tx.now(),
            )
            .returning(portfolios.c.id)
        ).scalar_one()
        self.tx.audit(
            "PORTFOLIO",
            portfolio_id,
            "CREATE",
            {"name": new.name, "account_id": account.id, "default": make_default},
        )
        forget_portfolios(self.tx)
        return owned_portfolio(self.tx, portfolio_id)

    def update(
        self, portfolio_id: int, *, name: str | None = None, description: str | None = None
    ) -> sa.Row[Any]:
        row = owned_portfolio(self.tx, portfolio_id)
        changes: dict[str, Any] = {}
        if name is not None:
            new_name = parse(NewPortfolio, {"name": name, "account_id": row.account_id}).name
            if self.tx.conn.execute(
                sa.select(portfolios.c.id).where(
                    portfolios.c.user_id == row.user_id,
                    sa.func.lower(portfolios.c.name) == new_name.lower(),
                    portfolios.c.id != row.id,
                )
            ).first():
                raise Conflict(f"you already have a portfolio named {new_name!r}")
            changes["name"] = new_name
        if description is not None:
            changes["description"] = check_text(description, "description")
        if changes:
            self.tx.conn.execute(
                portfolios.update().where(portfolios.c.id == row.id).values(**changes)
            )
            self.tx.audit("PORTFOLIO", row.id, "UPDATE", changes)
            forget_portfolios(self.tx)
        return owned_portfolio(self.tx, portfolio_id)

    def set_default(self, portfolio_id: int) -> sa.Row[Any]:
        row = owned_portfolio(self.tx, portfolio_id, writable=True)
        conn = self.tx.conn
        # Two statements in one transaction: the partial unique index never sees two defaults.
        conn.execute(
            portfolios.update()
            .where(portfolios.c.user_id == row.user_id, portfolios.c.is_default)
            .values(is_default=False)
        )
        conn.execute(portfolios.update().where(portfolios.c.id == row.id).values(is_default=True))
        self.tx.audit("PORTFOLIO", row.id, "UPDATE", {"is_default": True})
        forget_portfolios(self.tx)
        return owned_portfolio(self.tx, portfolio_id)

    def archive(self, portfolio_id: int) -> sa.Row[Any]:
        row = owned_portfolio(self.tx, portfolio_id)
        if row.is_default:
            raise Conflict(
                "the default portfolio cannot be archived; make another one default first"
            )
        if row.archived_at is None:
            self.tx.conn.execute(
                portfolios.update()
                .where(portfolios.c.id == row.id)
                .values(archived_at=self.tx.now())
            )
            self.tx.audit("PORTFOLIO", row.id, "ARCHIVE", {"name": row.name})
            forget_portfolios(self.tx)
        return owned_portfolio(self.tx, portfolio_id)

    def delete(self, portfolio_id: int) -> None:
        """Delete an empty portfolio. One with trades, orders or cash is archived instead."""
        row = owned_portfolio(self.tx, portfolio_id)
        if row.is_default:
            raise Conflict("the default portfolio cannot be deleted")
        if _has_history(self.tx, row.id):
            raise Conflict(
                f"portfolio {row.name!r} has history (trades, orders or cash); archive it instead"
            )
        self.tx.conn.execute(portfolios.delete().where(portfolios.c.id == row.id))
        self.tx.audit("PORTFOLIO", row.id, "DELETE", {"name": row.name})
        forget_portfolios(self.tx)
