"""The typed service facades (dal/services.py) expose every service method, unchanged."""

from __future__ import annotations

import pytest

from dal.database import Database, ScopedDal, Session
from dal.scope import Actor
from dal.services import Exposed, Services, TxServices, facades, tx_services


def test_every_public_service_method_is_exposed_as_itself() -> None:
    for name, facade in facades().items():
        public = {
            attr
            for attr in dir(facade.service)
            if not attr.startswith("_") and callable(getattr(facade.service, attr))
        }
        exposed = {attr: v for attr, v in vars(facade).items() if isinstance(v, Exposed)}
        assert set(exposed) == public, f"{name}: {sorted(public ^ set(exposed))}"
        for attr, entry in exposed.items():
            assert entry.method is getattr(facade.service, attr), f"{name}.{attr}"


def test_sessions_and_scoped_handles_offer_the_same_services() -> None:
    assert issubclass(Session, Services) and issubclass(ScopedDal, Services)
    assert len(facades()) == 20


async def test_facade_calls_run_in_the_session_or_as_their_own_transaction(
    db: Database,
) -> None:
    async with db.session(Actor.system()) as s:
        created = await s.brokers.create("ACME", "Acme Brokerage")
        in_session = [b.code for b in await s.brokers.list()]
    assert "ACME" in in_session  # the session's own uncommitted insert is visible
    assert "ACME" in {b.code for b in await db.scoped(Actor.system()).brokers.list()}
    assert created.name == "Acme Brokerage"


def test_a_unit_of_work_sees_the_same_services_called_directly() -> None:
    assert {name: facade.service for name, facade in facades().items()} == tx_services()


async def test_a_unit_of_work_runs_as_one_transaction(db: Database) -> None:
    dal = db.scoped(Actor.system())

    def create_then_fail(s: TxServices) -> None:
        s.brokers.create("HALF", "Half done")
        raise RuntimeError("the unit fails after its first write")

    with pytest.raises(RuntimeError, match="after its first write"):
        await dal.run(create_then_fail)
    assert "HALF" not in {b.code for b in await dal.brokers.list()}  # nothing was kept

    def create_and_list(s: TxServices) -> list[str]:
        s.brokers.create("WHOLE", "Whole")
        return [b.code for b in s.brokers.list()]

    assert "WHOLE" in await dal.run(create_and_list)  # its own write, seen inside it
    assert "WHOLE" in {b.code for b in await dal.brokers.list()}
