"""Order and fill ingestion log one structured line each, with a correlation id."""

from __future__ import annotations

import json
import logging

import pytest

from dal.database import Database
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
