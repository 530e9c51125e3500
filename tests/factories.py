"""Factory helpers: users, accounts, portfolios, instruments, strategies through the DAL."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from dal.database import Database
from dal.scope import Actor

_ids = itertools.count(1000)
T0 = dt.datetime(2024, 5, 1, 9, 0, tzinfo=dt.UTC)


async def make_user(
    db: Database, *, approved: bool = True, admin: bool = False, username: str | None = None
) -> Actor:
    telegram_id = next(_ids)
    async with db.session(Actor.system()) as s:
        if admin:
            (row,) = await s.users.bootstrap_admins([telegram_id])
        else:
            row = await s.users.register(
                telegram_id, username or f"user{telegram_id}", chat_id=telegram_id
            )
            if approved:
                row = await s.users.approve(telegram_id)
    return Actor.user(row.id)


async def make_instrument(db: Database, symbol: str | None = None, **kw: Any) -> int:
    values = {
        "symbol": symbol or f"SYM{next(_ids)}",
        "exchange": "TEST",
        "asset_type": "CRYPTO",
        "currency": "USDT",
        **kw,
    }
    async with db.session(Actor.system()) as s:
        return (await s.instruments.create(values)).id


async def default_portfolio(db: Database, actor: Actor) -> int:
    async with db.session(actor) as s:
        return (await s.portfolios.default()).id


async def make_portfolio(db: Database, actor: Actor, name: str | None = None) -> int:
    async with db.session(actor) as s:
        account = (await s.accounts.list())[0]
        row = await s.portfolios.create(
            {"name": name or f"pf{next(_ids)}", "account_id": account.id}
        )
        return row.id


async def make_strategy(
    db: Database, actor: Actor, name: str = "sma", version: str = "1.0", **params: Any
) -> int:
    async with db.session(actor) as s:
        return (await s.strategies.create({"name": name, "version": version, "params": params})).id


def fill(
    portfolio_id: int,
    instrument_id: int,
    side: str,
    qty: str,
    price: str,
    *,
    at: dt.datetime | None = None,
    trade_id: str | None = None,
    **kw: Any,
) -> dict[str, Any]:
    return {
        "portfolio_id": portfolio_id,
        "instrument_id": instrument_id,
        "side": side,
        "quantity": Decimal(qty),
        "price": Decimal(price),
        "exec_time": at or T0,
        "broker_trade_id": trade_id,
        **kw,
    }


class Notes:
    """A ``Notify`` that keeps what was said: (user id, text) in order."""

    def __init__(self) -> None:
        self.texts: list[tuple[int, str]] = []

    async def __call__(self, user_id: int, text: str, kind: str = "") -> None:
        self.texts.append((user_id, text))

    def joined(self) -> str:
        return "\n".join(text for _, text in self.texts)


async def wait_until(condition: Callable[[], object], timeout: float) -> None:
    """Poll ``condition`` until it holds, or fail the test after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)
