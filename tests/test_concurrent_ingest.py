"""Concurrent writers never lose a fill: several OS processes ingest fills into the same
portfolios at once, and every fill sent is stored exactly once, no error reaches a caller,
and ``tradebook db verify`` finds nothing wrong — on SQLite and on PostgreSQL.

The writers (tests/concurrent_child.py, one process each; its docstring has the protocol) each
own one strategy, so they write different positions of shared portfolios but share the
portfolios' PnL summary rows (same instrument, same day, same fee currency) and daily rows:

* single fills in a session (``db.session(actor)`` + ``ingest_fill``; on PostgreSQL the
  one-statement write, and the general path for fills without an order);
* single fills as one-call scoped calls (``db.scoped(actor).trades.ingest_fill``);
* batches (``ingest_fills``, in a session or scoped) with one fill per portfolio, covering two
  portfolios of a user in opposite orders in different processes.

Two users, each with two portfolios. On PostgreSQL these mixes used to deadlock (SQLSTATE
40P01) and the deadlock victim's fills were lost: nothing retried them.
``CONCURRENT_SCALE=<x>`` multiplies the number of transactions (default 1).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from dal import schema as t
from dal.database import Database
from dal.scope import Actor
from tests.factories import (
    default_portfolio,
    make_instrument,
    make_portfolio,
    make_strategy,
    make_user,
)
from tradebook.ops.verify import verify_database

ROOT = Path(__file__).resolve().parent.parent
CHILD = Path(__file__).resolve().parent / "concurrent_child.py"
CHILD_TIMEOUT_S = 120.0
BIG = Decimal(1_000_000_000)  # orders that never fill up
SCALE = float(os.environ.get("CONCURRENT_SCALE", "1"))

# (process name, user, kind, portfolio order (indexes into the user's portfolios), transactions)
WRITERS: list[tuple[str, str, str, list[int], int]] = [
    ("a-session-single", "a", "session-single", [0, 1], 40),
    ("a-scoped-single", "a", "scoped-single", [1, 0], 40),
    ("a-session-batch", "a", "session-batch", [0, 1], 20),
    ("a-scoped-batch", "a", "scoped-batch", [1, 0], 20),
    ("b-scoped-single", "b", "scoped-single", [0, 1], 30),
    ("b-session-batch", "b", "session-batch", [0, 1], 15),
    ("b-scoped-batch", "b", "scoped-batch", [1, 0], 15),
]

pytestmark = pytest.mark.parametrize(
    "engine_name",
    [pytest.param("sqlite"), pytest.param("postgresql", marks=pytest.mark.postgres)],
    indirect=True,
)


async def _setup(db: Database, url: str) -> list[dict[str, Any]]:
    """Users, portfolios, one instrument, and per writer its strategy with a BUY and a SELL
    order in each portfolio it writes to; returns the children's configs."""
    instrument = await make_instrument(db)
    users: dict[str, tuple[Actor, list[int]]] = {}
    for name in ("a", "b"):
        actor = await make_user(db)
        users[name] = (actor, [await default_portfolio(db, actor), await make_portfolio(db, actor)])
    configs = []
    for seed, (name, user, kind, order, transactions) in enumerate(WRITERS):
        actor, portfolios = users[user]
        strategy = await make_strategy(db, actor, name=f"s-{name}")
        targets = []
        async with db.session(actor) as s:
            for index in order:
                pid = portfolios[index]
                ids = []
                for side in ("BUY", "SELL"):
                    row = await s.orders.place(
                        {
                            "portfolio_id": pid,
                            "instrument_id": instrument,
                            "side": side,
                            "quantity": BIG,
                            "strategy_id": strategy,
                        }
                    )
                    ids.append(row.id)
                targets.append([pid, instrument, *ids, strategy])
        configs.append(
            {
                "url": url,
                "user_id": actor.user_id,
                "name": name,
                "kind": kind,
                "portfolios": targets,
                "transactions": max(1, round(transactions * SCALE)),
                "unlinked": 0.25,
                "seed": seed,
            }
        )
    return configs


def _run_children(configs: list[dict[str, Any]], tmp_path: Path) -> list[dict[str, Any]]:
    """Start every child, let them all go at once, and collect their RESULT lines."""
    pythonpath = [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(pythonpath)}
    procs = []
    for cfg in configs:
        stderr = (tmp_path / f"{cfg['name']}.stderr").open("wb")
        proc = subprocess.Popen(
            [sys.executable, str(CHILD), json.dumps(cfg)],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
        procs.append((cfg["name"], proc, stderr))
    try:
        for name, proc, _ in procs:
            assert proc.stdout is not None
            line = proc.stdout.readline().strip()
            assert line == "READY", f"{name} did not start: {line!r}\n{_stderr(tmp_path, name)}"
        for _, proc, _ in procs:  # go
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        deadline = time.monotonic() + CHILD_TIMEOUT_S
        results = []
        for name, proc, _ in procs:
            out, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            lines = [x for x in out.splitlines() if x.startswith("RESULT ")]
            assert proc.returncode == 0 and lines, (
                f"{name} exited with {proc.returncode}\n{_stderr(tmp_path, name)}"
            )
            results.append({"name": name, **json.loads(lines[-1][len("RESULT ") :])})
        return results
    finally:
        for _, proc, stderr in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            stderr.close()


def _stderr(tmp_path: Path, name: str) -> str:
    return (tmp_path / f"{name}.stderr").read_text(errors="replace")[-3000:]


async def _stored(engine: AsyncEngine) -> Counter[str]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            sa.select(t.trades.c.broker_trade_id, sa.func.count()).group_by(
                t.trades.c.broker_trade_id
            )
        )
        return Counter({broker_id: count for broker_id, count in rows})


async def test_concurrent_writers_store_every_fill_exactly_once(
    engine_name: str, db: Database, db_url: str, engine: AsyncEngine, tmp_path: Path
) -> None:
    configs = await _setup(db, db_url)
    await db.dispose()  # the children are the only writers from here on
    started = time.monotonic()
    results = await asyncio.to_thread(_run_children, configs, tmp_path)
    elapsed = time.monotonic() - started

    sent = [broker_id for r in results for broker_id in r["sent"]]
    assert len(sent) == len(set(sent))
    stored = await _stored(engine)
    missing = [b for b in sent if stored[b] == 0]
    duplicated = [b for b in sent if stored[b] > 1]
    unexpected = sorted(set(stored) - set(sent))
    errors = [(r["name"], e) for r in results for e in r["errors"]]
    transactions = sum(c["transactions"] for c in configs)
    report = await verify_database(db_url)

    by_kind = Counter(
        f"{name}: {e['type'].rsplit('.', 1)[-1]} {e['sqlstate'] or ''} {e['message'][:60]}"
        for name, e in errors
    )
    summary = "\n".join(
        [
            f"{engine_name}: {len(configs)} processes, {transactions} transactions, "
            f"{len(sent)} fills in {elapsed:.1f} s",
            f"errors that reached the callers: {len(errors)} of {transactions} transactions",
            *(f"  {count} × {what}" for what, count in by_kind.most_common()),
            f"fills never stored: {len(missing)} of {len(sent)}; stored twice or more: "
            f"{len(duplicated)}; stored but never sent: {len(unexpected)}",
            *(f"verify: {line}" for line in report.lines() if not report.ok),
        ]
    )
    print(summary)
    assert not errors and not missing and not duplicated and not unexpected and report.ok, summary
