"""Brokers: the reference list every account points at (admins add to it)."""

from __future__ import annotations

import re
from typing import Any

import sqlalchemy as sa

from dal import schema as t
from dal.errors import Conflict, InvalidInput
from dal.scope import Tx

brokers = t.brokers
_CODE = re.compile(r"^[A-Z][A-Z0-9_]{1,31}$")


class BrokerService:
    def __init__(self, tx: Tx) -> None:
        self.tx = tx

    def list(self) -> list[sa.Row[Any]]:
        self.tx.require_approved()
        return list(self.tx.conn.execute(sa.select(brokers).order_by(brokers.c.code)))

    def create(self, code: str, name: str) -> sa.Row[Any]:
        self.tx.require_admin()
        code = code.strip().upper()
        name = name.strip()
        if not _CODE.match(code):
            raise InvalidInput("a broker code is 2–32 letters, digits or _ (e.g. KRAKEN)")
        if not 1 <= len(name) <= 64:
            raise InvalidInput("a broker name is 1–64 characters")
        if self.tx.conn.execute(sa.select(brokers.c.id).where(brokers.c.code == code)).first():
            raise Conflict(f"broker {code} already exists")
        broker_id = self.tx.conn.execute(
            brokers.insert().values(code=code, name=name).returning(brokers.c.id)
        ).scalar_one()
        self.tx.audit("BROKER", broker_id, "CREATE", {"code": code, "name": name})
        return self.tx.conn.execute(sa.select(brokers).where(brokers.c.id == broker_id)).one()
