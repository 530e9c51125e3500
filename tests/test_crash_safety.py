"""Crash safety on SQLite: a process ingesting fills is SIGKILLed at random points, 20 times.

After every kill the database must be intact and consistent: positions equal a recompute from
the trades, every order's filled quantity / average price / status agree with its trades,
every trade has its one audit row, every commit the child reported survived (a process kill
in WAL mode with synchronous=NORMAL loses nothing committed), and the transaction in flight
at the kill is either entirely there or entirely absent.

The child is tests/crash_child.py (its docstring describes the fill mix and the line protocol).
``CRASH_SEED=<n>`` replays one run of kill points.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from decimal import Decimal, localcontext
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from dal import schema as t
from dal.database import Database
from dal.decimals import NOTIONAL_CONTEXT, average_price
from dal.positions import derive
from dal.scope import Actor, Tx
from tests.factories import default_portfolio, make_instrument, make_strategy, make_user

KILLS = 20
ROOT = Path(__file__).resolve().parent.parent
CHILD = Path(__file__).resolve().parent / "crash_child.py"
CHILD_TIMEOUT_S = 20.0


class Child:
    """A running crash_child.py whose stdout lines are collected by a thread."""

    def __init__(self, cfg: dict[str, Any], stderr_path: Path) -> None:
        pythonpath = [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(pythonpath)}
        self.stderr_path = stderr_path
        self._stderr = stderr_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, str(CHILD), json.dumps(cfg)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
        )
        self.lines: list[str] = []
        self.commits = 0
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                if line.startswith("C "):
                    self.commits += 1
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, done: Any, what: str) -> None:
        deadline = time.monotonic() + CHILD_TIMEOUT_S
        with self._changed:
            while not done():
                if self.proc.poll() is not None and not self._reader.is_alive():
                    raise AssertionError(f"the child exited before {what}:\n{self.stderr()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"the child did not reach {what}:\n{self.stderr()}")
                self._changed.wait(min(left, 0.1))

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(CHILD_TIMEOUT_S)
        self._reader.join(CHILD_TIMEOUT_S)
        self._stderr.close()
        assert self.proc.returncode == -signal.SIGKILL, (self.proc.returncode, self.stderr())

    def stderr(self) -> str:
        self._stderr.flush()
        return self.stderr_path.read_text(errors="replace")[-4000:]


@dataclass
class RunReport:
    """What one child said: committed fill ranges, the transaction in flight, speed."""

    committed: set[int] = field(default_factory=set)
    commits: int = 0
    in_flight: tuple[int, int] | None = None
    commit_times: list[tuple[float, int]] = field(default_factory=list)  # (monotonic, fills)

    @classmethod
    def parse(cls, lines: list[str]) -> RunReport:
        report = cls()
        for line in lines:
            kind, *rest = line.split()
            if kind == "B":
                report.in_flight = (int(rest[0]), int(rest[1]))
            elif kind == "C":
                lo, hi = int(rest[0]), int(rest[1])
                assert report.in_flight == (lo, hi), line
                report.in_flight = None
                report.committed.update(range(lo, hi + 1))
                report.commits += 1
                report.commit_times.append((float(rest[2]), hi - lo + 1))
        return report

    def fills_per_second(self) -> float | None:
        """New fills per second between the first and the last reported commit."""
        if len(self.commit_times) < 5:
            return None
        span = self.commit_times[-1][0] - self.commit_times[0][0]
        if span < 0.05:
            return None
        return sum(n for _, n in self.commit_times[1:]) / span


def _snapshot(tx: Tx, portfolio_id: int) -> dict[str, Any]:
    conn = tx.conn
    return {
        "integrity": [r[0] for r in conn.exec_driver_sql("PRAGMA integrity_check")],
        "foreign_keys": list(conn.exec_driver_sql("PRAGMA foreign_key_check")),
        "trades": list(
            conn.execute(
                sa.select(t.trades)
                .where(t.trades.c.portfolio_id == portfolio_id)
                .order_by(t.trades.c.id)
            )
        ),
        "all_trades": conn.execute(sa.select(sa.func.count()).select_from(t.trades)).scalar(),
        "orders": list(conn.execute(sa.select(t.orders).order_by(t.orders.c.id))),
        "positions": list(
            conn.execute(sa.select(t.positions).where(t.positions.c.portfolio_id == portfolio_id))
        ),
        "fill_audits": list(
            conn.execute(
                sa.select(t.audit_log.c.entity_id, t.audit_log.c.user_id).where(
                    t.audit_log.c.entity_type == "TRADE", t.audit_log.c.action == "FILL"
                )
            )
        ),
    }


def _check_orders(orders: list[sa.Row], trades: list[sa.Row]) -> None:
    by_order: dict[int, list[sa.Row]] = defaultdict(list)
    for trade in trades:  # in id order = ingestion order
        if trade.order_id is not None:
            by_order[trade.order_id].append(trade)
    assert set(by_order) <= {o.id for o in orders}
    for order in orders:
        filled, notional = Decimal(0), Decimal(0)
        with localcontext(NOTIONAL_CONTEXT):
            for trade in by_order[order.id]:
                assert (trade.instrument_id, trade.side) == (order.instrument_id, order.side)
                filled += trade.quantity
                notional += trade.quantity * trade.price
        where = f"order #{order.id} ({len(by_order[order.id])} trades)"
        assert order.filled_quantity == filled, where
        assert order.fill_notional == notional, where
        assert order.avg_fill_price == (average_price(notional, filled) if filled else None), where
        assert filled <= order.quantity, where
        if filled == order.quantity:
            assert order.status == "FILLED", where
        elif filled > 0:
            assert order.status == "PARTIALLY_FILLED", where
        else:
            assert order.status == "NEW", where


def _check_positions(positions: list[sa.Row], trades: list[sa.Row]) -> dict[str, int]:
    """Beyond PositionService.verify: last_exec_time / last_trade_id follow the trades too.
    Returns how many late fills and zero crossings the trades contain (test coverage)."""
    canonical = sorted(trades, key=lambda r: (r.exec_time, r.id))
    expected = derive(canonical)
    for row in positions:
        key = (row.portfolio_id, row.instrument_id, row.strategy_id)
        want = expected.get(key)
        assert want is not None, f"position {key} has no trades"
        assert (row.last_exec_time, row.last_trade_id) == (
            want.last_exec_time,
            want.last_trade_id,
        ), key
    assert len(positions) == len(expected)

    late, crossings = 0, 0
    newest: dict[tuple[int, int | None], Any] = {}
    for trade in trades:  # id order: was it older than what its position had seen?
        pos_key = (trade.instrument_id, trade.strategy_id)
        if pos_key in newest and trade.exec_time < newest[pos_key]:
            late += 1
        else:
            newest[pos_key] = trade.exec_time
    quantity: dict[tuple[int, int | None], Decimal] = defaultdict(Decimal)
    for trade in canonical:
        pos_key = (trade.instrument_id, trade.strategy_id)
        before = quantity[pos_key]
        quantity[pos_key] += trade.quantity if trade.side == "BUY" else -trade.quantity
        crossings += before * quantity[pos_key] < 0
    return {"late fills": late, "zero crossings": crossings}


async def _check_database(
    url: str, actor: Actor, portfolio_id: int, reports: list[RunReport]
) -> dict[str, Any]:
    async with Database(url) as db:
        async with db.session(actor, readonly=True) as s:
            differences = await s.positions.verify(portfolio_id)
        async with db.session(actor, readonly=True) as s:
            snap = await s.run(_snapshot, portfolio_id)
    assert snap["integrity"] == ["ok"]
    assert snap["foreign_keys"] == []
    assert [str(d) for d in differences] == []

    trades: list[sa.Row] = snap["trades"]
    assert snap["all_trades"] == len(trades)
    _check_orders(snap["orders"], trades)
    coverage = _check_positions(snap["positions"], trades)

    # Exactly one FILL audit row per trade, for the trade's owner, and none for lost trades.
    audits = Counter(entity_id for entity_id, _ in snap["fill_audits"])
    assert audits == Counter(trade.id for trade in trades)
    assert {user_id for _, user_id in snap["fill_audits"]} <= {actor.user_id}

    # Durability and atomicity per child run.
    seqs: dict[int, set[int]] = defaultdict(set)
    for trade in trades:
        run, seq = trade.broker_trade_id.removeprefix("r").split("-")
        seqs[int(run)].add(int(seq))
    outcome: Counter[str] = Counter()
    for run, report in enumerate(reports):
        present = seqs.pop(run, set())
        lost = report.committed - present
        assert not lost, f"run {run}: {len(lost)} reported commits lost, e.g. {min(lost)}"
        extra = present - report.committed
        if report.in_flight is None:
            assert not extra, f"run {run}: trades nobody started: {sorted(extra)[:5]}"
            outcome["killed between transactions"] += 1
        else:
            lo, hi = report.in_flight
            in_flight = set(range(lo, hi + 1))
            assert extra in (set(), in_flight), f"run {run}: half a transaction: {sorted(extra)}"
            outcome[
                "in-flight tx committed, not yet reported" if extra else "in-flight tx rolled back"
            ] += 1
    assert not seqs, f"trades of unknown runs: {sorted(seqs)}"
    coverage["orders filled"] = sum(o.status == "FILLED" for o in snap["orders"])
    return {"trades": len(trades), "coverage": coverage, "kill points": dict(outcome)}


async def test_sigkill_while_ingesting_fills_leaves_a_consistent_database(
    tmp_path: Path, sqlite_template: Path
) -> None:
    seed = int(os.environ.get("CRASH_SEED") or random.randrange(2**32))
    rng = random.Random(seed)
    print(f"\ncrash safety: CRASH_SEED={seed}")
    path = tmp_path / "crash.db"
    shutil.copyfile(sqlite_template, path)
    url = f"sqlite+aiosqlite:///{path}"

    async with Database(url) as db:
        actor = await make_user(db)
        portfolio_id = await default_portfolio(db, actor)
        instruments = [await make_instrument(db, "BTCUSDT"), await make_instrument(db, "ETHUSDT")]
        strategy_id = await make_strategy(db, actor)
        async with db.session(actor) as s:
            for instrument in instruments:
                for side in ("BUY", "SELL"):
                    for quantity in ("10000000", "50"):  # one never fills up, one does
                        await s.orders.place(
                            {
                                "portfolio_id": portfolio_id,
                                "instrument_id": instrument,
                                "side": side,
                                "quantity": Decimal(quantity),
                            }
                        )
            await s.orders.place(
                {
                    "portfolio_id": portfolio_id,
                    "instrument_id": instruments[0],
                    "strategy_id": strategy_id,
                    "side": "BUY",
                    "quantity": Decimal("10000000"),
                }
            )

    reports: list[RunReport] = []
    started = time.monotonic()
    for run in range(KILLS):
        cfg = {
            "url": url,
            "user_id": actor.user_id,
            "portfolio_id": portfolio_id,
            "instrument_ids": instruments,
            "strategy_id": strategy_id,
            "run": run,
            "seed": rng.randrange(2**32),
        }
        child = Child(cfg, tmp_path / f"child-{run}.stderr")
        try:
            child.wait_for(lambda c=child: bool(c.lines), "READY")
            assert child.lines[0] == "READY", child.lines[0]
            if rng.random() < 0.5:
                k = rng.randint(1, 200)
                child.wait_for(lambda c=child, k=k: c.commits >= k, f"{k} commits")
                time.sleep(rng.uniform(0, 0.002))
            else:
                time.sleep(rng.uniform(0.05, 0.5))
        finally:
            child.kill()
        reports.append(RunReport.parse(child.lines))
        result = await _check_database(url, actor, portfolio_id, reports)
        trades = result["trades"]

    rates = [r for r in (report.fills_per_second() for report in reports) if r is not None]
    reported_fills = sum(len(report.committed) for report in reports)
    summary = {
        "seed": seed,
        "kills": len(reports),
        "commits reported": sum(report.commits for report in reports),
        "fills reported": reported_fills,
        "trades in db": trades,
        "max fills/s": round(max(rates)) if rates else None,
        "median fills/s": round(sorted(rates)[len(rates) // 2]) if rates else None,
        "kill points": result["kill points"],
        "coverage": result["coverage"],
        "seconds": round(time.monotonic() - started, 1),
    }
    print(f"crash safety: {json.dumps(summary)}")
    assert len(reports) == KILLS
    assert trades >= reported_fills > 0
