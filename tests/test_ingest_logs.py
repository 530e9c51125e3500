"""Order and fill ingestion log one structured line each, with a correlation id."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from dal.database import Database
from dal.models import Fill
from tests.factories import default_portfolio, fill, make_instrument, make_user
from tradebook.logs import JsonFormatter


async def test_ingestion_lines_carry_the_order_client_id(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tradebook.ingest")
    actor = await make_user(db)
    pid = await default_portfolio(db, actor)
    inst = await make_instrument(db)
    async with db.session(actor) as s:
        order = await s.orders.place(
            {
                "portfolio_id": pid,
                "instrument_id": inst,
                "side": "BUY",
                "quantity": "1",
                "client_order_id": "cid-42",
            }
        )
        await s.trades.ingest_fill(
            fill(pid, inst, "BUY", "1", "10", order_id=order.id, trade_id="T-9")
        )
    lines = [
        json.loads(JsonFormatter().format(r))
        for r in caplog.records
        if r.name == "tradebook.ingest"
    ]
    assert [line["correlation_id"] for line in lines] == ["cid-42", "cid-42"]
    assert lines[0]["msg"].startswith("order placed") and lines[1]["trade_id"] >= 1


async def test_a_batch_logs_one_line_and_each_fill_at_debug(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    actor = await make_user(db)
    pid = await default_portfolio(db, actor)
    inst = await make_instrument(db)
    dal = db.scoped(actor)
    ids = []
    for cid in ("cid-a", "cid-b"):
        order = await dal.orders.place(
            {"portfolio_id": pid, "instrument_id": inst, "side": "BUY", "quantity": "5",
             "client_order_id": cid}
        )  # fmt: skip
        ids.append(order.id)
    fills: list[Fill | dict[str, Any]] = [
        fill(pid, inst, "BUY", "1", "10", order_id=order_id, trade_id=f"T-{i}")
        for i, order_id in enumerate([ids[0], ids[1], ids[0]])
    ]
    caplog.set_level(logging.INFO, logger="tradebook.ingest")
    await dal.trades.ingest_fills(fills[:2])
    (line,) = [
        json.loads(JsonFormatter().format(r))
        for r in caplog.records
        if r.name == "tradebook.ingest"
    ]
    assert line["msg"] == "fills applied (in transaction): 2, 0 late"
    assert (line["correlation_ids"], line["orders"]) == (["cid-a", "cid-b"], 2)
    caplog.clear()
    caplog.set_level(logging.DEBUG, logger="tradebook.ingest")
    again = {**fill(pid, inst, "BUY", "1", "10", order_id=ids[0], trade_id="T-9")}
    await dal.trades.ingest_fills([fills[2], again])
    messages = [r.getMessage() for r in caplog.records if r.name == "tradebook.ingest"]
    assert messages[0] == "fills applied (in transaction): 2, 0 late"
    assert [m.startswith("fill applied") for m in messages[1:]] == [True, True]
