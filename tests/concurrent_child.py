"""Child process of tests/test_concurrent_ingest.py: one writer among several, sending fills to
portfolios that other processes write to at the same time.

Usage: ``python tests/concurrent_child.py '<json config>'`` with keys:

* ``url``, ``user_id``, ``name`` (unique per process; prefixes the broker trade ids);
* ``kind``: how fills are sent, one transaction each —
  ``session-single`` (``async with db.session(actor) as s: await s.trades.ingest_fill(f)``),
  ``scoped-single`` (``await db.scoped(actor).trades.ingest_fill(f)``),
  ``session-batch`` / ``scoped-batch`` (``ingest_fills`` of one fill per portfolio, in the
  order of ``portfolios``);
* ``portfolios``: ``[[portfolio_id, instrument_id, buy_order_id, sell_order_id,
  strategy_id], ...]`` — this process's own positions (its own strategy) in shared portfolios;
* ``transactions``: how many transactions to run; ``unlinked``: the share of single fills sent
  without an order (strategy only: the general path instead of the one-statement one);
* ``seed``.

Protocol: prints ``READY`` once the DAL is open, waits for a line on stdin (the start signal,
so every process starts at once), runs its transactions without ever retrying, and prints one
``RESULT <json>`` line: every broker trade id it sent, the errors that reached it (type,
SQLSTATE, first line of the message, the ids of the transaction) and its elapsed seconds.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import random
import sys
import time
from decimal import Decimal
from typing import Any

from dal.database import Database
from dal.scope import Actor

T0 = dt.datetime(2024, 5, 1, 9, 0, tzinfo=dt.UTC)


def emit(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _describe(exc: BaseException) -> dict[str, Any]:
    orig = getattr(exc, "orig", None)
    sqlstate = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    text = str(exc).splitlines()[0] if str(exc) else ""
    return {
        "type": f"{type(exc).__module__}.{type(exc).__qualname__}",
        "sqlstate": sqlstate,
        "message": text[:200],
    }


class Fills:
    """This process's fills: alternately buys and sells on its own positions, each one later
    than the last (no late fills), all on one local day so every writer of a portfolio shares
    its PnL summary day and month rows and its daily row."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.rng = random.Random(cfg["seed"])
        self.name = cfg["name"]
        self.unlinked = cfg.get("unlinked", 0.0)
        self.seq = 0

    def make(self, target: list[int], single: bool) -> dict[str, Any]:
        portfolio_id, instrument_id, buy_order, sell_order, strategy_id = target
        rng = self.rng
        side = "BUY" if self.seq % 4 < 2 else "SELL"  # keeps the positions near zero
        fill: dict[str, Any] = {
            "portfolio_id": portfolio_id,
            "instrument_id": instrument_id,
            "side": side,
            "quantity": Decimal(rng.randint(1, 400)) / 100,
            "price": Decimal(rng.randint(9_000, 11_000)) / 100,
            "fee": Decimal(rng.randint(1, 100)) / 1000,
            "fee_currency": "USDT",
            "exec_time": T0 + dt.timedelta(milliseconds=10 * self.seq),
            "broker_trade_id": f"{self.name}-{self.seq:05d}",
        }
        if single and rng.random() < self.unlinked:
            fill["strategy_id"] = strategy_id  # the same position, without its order
        else:
            fill["order_id"] = buy_order if side == "BUY" else sell_order
        self.seq += 1
        return fill


async def main(cfg: dict[str, Any]) -> None:
    db = Database(cfg["url"])
    actor = Actor.user(cfg["user_id"])
    dal = db.scoped(actor)
    kind: str = cfg["kind"]
    targets: list[list[int]] = cfg["portfolios"]
    fills = Fills(cfg)
    sent: list[str] = []
    errors: list[dict[str, Any]] = []
    emit("READY")
    await asyncio.to_thread(sys.stdin.readline)
    started = time.monotonic()
    for i in range(cfg["transactions"]):
        batch: list[Any]  # fill dicts, as ingest_fill(s) takes them
        if kind.endswith("-single"):
            batch = [fills.make(targets[i % len(targets)], single=True)]
        else:
            batch = [fills.make(target, single=False) for target in targets]
        ids = [f["broker_trade_id"] for f in batch]
        sent.extend(ids)
        try:
            if kind == "session-single":
                async with db.session(actor) as s:
                    await s.trades.ingest_fill(batch[0])
            elif kind == "scoped-single":
                await dal.trades.ingest_fill(batch[0])
            elif kind == "session-batch":
                async with db.session(actor) as s:
                    await s.trades.ingest_fills(batch)
            elif kind == "scoped-batch":
                await dal.trades.ingest_fills(batch)
            else:
                raise ValueError(f"unknown kind {kind!r}")
        except Exception as exc:  # what reached the caller: recorded, never retried
            errors.append({**_describe(exc), "ids": ids})
    elapsed = time.monotonic() - started
    await db.dispose()
    emit("RESULT " + json.dumps({"sent": sent, "errors": errors, "elapsed": elapsed}))


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))
