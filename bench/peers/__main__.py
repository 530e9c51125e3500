"""`make bench-peers` / `python -m bench.peers`: the DAL against freqtrade's persistence pattern.

The same fills (``bench.peers.fills``) go through the DAL, one ``ingest_fill`` transaction per
fill, and through freqtrade's own persistence code, one commit per fill, in a worker process
of its own virtual environment (``bench/peers/freqtrade_worker.py``, run by
``.venv-peers/bin/python``). Rounds alternate the two (DAL, freqtrade, DAL, freqtrade, …;
on SQLite freqtrade runs twice a round, on the DAL's settings and on its stock ones), each run
on a fresh database; a ratio is the median of the rounds' ratios. Every DAL run ends with
the exact check of ``bench.common.check_portfolios``. The float drift of freqtrade's realized
profit is measured once, over 10,000 fills, against the DAL's exact value.

Writes ``bench/results/peers-YYYYMMDD-HHMMSS.json``. Exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import gc
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal, localcontext
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from bench.common import (
    CheckFailed,
    ProductionLogging,
    _pg_admin,
    check_portfolios,
    fresh_database,
    make_instrument,
    make_portfolio,
    make_users,
    median,
    pg_base_url,
)
from bench.peers.fills import PeerFill, make_sequence
from dal import schema as t
from dal.database import Database
from dal.decimals import DECIMAL_CONTEXT
from dal.position_math import canonical_amount, replay
from dal.scope import Actor, Tx

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
RESULTS = HERE.parent / "results"
WORKER = HERE / "freqtrade_worker.py"
PEER_PYTHON = ROOT / ".venv-peers" / "bin" / "python"
TARGET = 2.5  # DAL / freqtrade's pattern, fills per second, on each engine
ROUNDS = 5
FILLS = 2500
DRIFT_FILLS = 10000
BIG = Decimal("1000000000")
# What runs in each round, in this order: the DAL, freqtrade with tradebook's SQLite settings
# (WAL, synchronous=NORMAL), and on SQLite freqtrade as it leaves SQLite (rollback journal,
# synchronous=FULL).
IMPLS = {"sqlite": ["dal", "freqtrade", "freqtrade-stock"], "postgresql": ["dal", "freqtrade"]}


@dataclass
class Run:
    fills_per_s: float
    realized: Decimal  # the DAL's exact value, or freqtrade's float as a Decimal
    text: str  # as stored: the DAL's decimal, freqtrade's float repr
    info: dict[str, Any]


def _ok(ok: bool) -> str:
    return "ok" if ok else "MISS"


def _spread(values: list[float], digits: int) -> str:
    return f"{min(values):,.{digits}f}–{max(values):,.{digits}f}"


# --- the DAL ------------------------------------------------------------------------------
def _stored_realized(tx: Tx, portfolio_id: int) -> tuple[Decimal, Decimal]:
    """The realized PnL of the portfolio's trades, summed exactly, and its position's."""
    values = tx.conn.execute(
        sa.select(t.trades.c.realized_pnl).where(t.trades.c.portfolio_id == portfolio_id)
    ).scalars()
    with localcontext(DECIMAL_CONTEXT):
        total = sum(values, Decimal(0))
    position = tx.conn.execute(
        sa.select(t.positions.c.realized_pnl).where(t.positions.c.portfolio_id == portfolio_id)
    ).scalar_one()
    return total, position


async def dal_run(engine: str, fills: list[PeerFill], logs: ProductionLogging) -> Run:
    """A fresh migrated database, one user, portfolio and instrument, a BUY and a SELL order
    the fills go against; then every fill in its own transaction through
    ``db.scoped(actor).trades.ingest_fill``, as the bot calls it; then the exact check."""
    logs.use("human")
    async with fresh_database(engine, "peers") as bdb:
        db = Database(bdb.url)
        try:
            (actor,) = await make_users(db, [900201])
            iid = await make_instrument(db, "BTCUSDT")
            pid = await make_portfolio(db, actor, "peers")
            orders = {}
            async with db.session(actor) as s:
                for side in ("BUY", "SELL"):
                    row = await s.orders.place(
                        {
                            "portfolio_id": pid,
                            "instrument_id": iid,
                            "side": side,
                            "type": "LIMIT",
                            "quantity": BIG,
                            "price": Decimal(60000),
                            "client_order_id": f"peers-{side}",
                        }
                    )
                    orders[side] = row.id
            work = [f.for_dal(pid, iid, orders[f.side]) for f in fills]
            gc.collect()
            start = time.perf_counter()
            for fill in work:
                await db.scoped(actor).trades.ingest_fill(fill)
            seconds = time.perf_counter() - start
            await check_portfolios(db, {pid: len(fills)})  # raises CheckFailed
            async with db.session(Actor.system(), admin=True, readonly=True) as s:
                total, position = await s.run(_stored_realized, pid)
        finally:
            await db.dispose()
    if total != position:
        raise CheckFailed(f"the DAL's trades realize {total}, its position {position}")
    total = canonical_amount(total)
    return Run(len(fills) / seconds, total, str(total), {"seconds": round(seconds, 3)})


# --- freqtrade ------------------------------------------------------------------------------
@contextlib.asynccontextmanager
async def peer_database(engine: str, tmp: Path) -> AsyncIterator[str]:
    """An empty database for freqtrade (its ``init_db`` creates its tables): a file, or a new
    ``tbbench_*`` PostgreSQL database dropped afterwards. Its SQLAlchemy URL."""
    if engine == "sqlite":
        path = tmp / "freqtrade.sqlite"
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        yield f"sqlite:///{path}"
        return
    name = f"tbbench_peers_ft_{os.getpid()}"
    await _pg_admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    await _pg_admin(f"CREATE DATABASE {name}")
    try:
        yield (
            make_url(pg_base_url())
            .set(drivername="postgresql+psycopg2", database=name)
            .render_as_string(hide_password=False)
        )
    finally:
        await _pg_admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


async def freqtrade_run(
    engine: str, fills_json: Path, expected: list[PeerFill], peer_python: Path, tmp: Path, mode: str
) -> Run:
    async with peer_database(engine, tmp) as url:
        proc = await asyncio.create_subprocess_exec(
            str(peer_python),
            str(WORKER),
            str(fills_json),
            url,
            "--sqlite",
            mode,
            "--log",
            str(tmp / "freqtrade.log"),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate()
    if proc.returncode:
        raise CheckFailed(f"the freqtrade worker failed: {err.decode()[-2000:]}")
    result = json.loads(out.decode().strip().splitlines()[-1])
    positions = count_positions(expected)
    if (result["fills"], result["orders"], result["trades"]) != (
        len(expected),
        len(expected),
        positions,
    ):
        raise CheckFailed(
            f"freqtrade stored {result['orders']} orders in {result['trades']} trades for "
            f"{len(expected)} fills in {positions} positions"
        )
    realized = result["realized_profit"]
    return Run(result["fills_per_s"], Decimal(realized), realized, result)


def count_positions(fills: list[PeerFill]) -> int:
    """How many positions the fills open (freqtrade: one Trade each)."""
    held, count = Decimal(0), 0
    for f in fills:
        if not held:
            count += 1
        held += f.quantity if f.side == "BUY" else -f.quantity
    return count


def first_wrong_decimal(exact: Decimal, approx: Decimal) -> int | None:
    """The first fractional digit at which ``approx`` differs from ``exact``, both written out
    in full (0: the sign or the integer part differs; None: no digit differs)."""
    if (exact < 0) != (approx < 0):
        return 0
    e_int, _, e_frac = f"{abs(exact):f}".partition(".")
    a_int, _, a_frac = f"{abs(approx):f}".partition(".")
    if e_int != a_int:
        return 0
    width = max(len(e_frac), len(a_frac))
    for i, (x, y) in enumerate(
        zip(e_frac.ljust(width, "0"), a_frac.ljust(width, "0"), strict=True)
    ):
        if x != y:
            return i + 1
    return None


def drift(exact: Decimal, approx: Decimal) -> dict[str, Any]:
    diff = approx - exact
    return {
        "exact": str(exact),
        "freqtrade": str(approx),
        "abs_diff": f"{abs(diff):.2e}",
        "rel_diff": f"{abs(diff / exact):.2e}" if exact else None,
        "first_wrong_decimal": first_wrong_decimal(exact, approx),
    }


# --- the rounds -------------------------------------------------------------------------------
async def bench_engine(
    engine: str,
    fills: list[PeerFill],
    rounds: int,
    peer_python: Path,
    logs: ProductionLogging,
    tmp: Path,
) -> dict[str, Any]:
    fills_json = tmp / f"fills-{len(fills)}.json"
    fills_json.write_text(json.dumps([f.as_json() for f in fills]))
    impls = IMPLS[engine]
    rates: dict[str, list[float]] = {impl: [] for impl in impls}
    loads: list[float] = []
    drifts: list[str] = []
    info: dict[str, Any] = {}
    for r in range(rounds):
        load = os.getloadavg()[0]
        loads.append(round(load, 2))
        runs: dict[str, Run] = {}
        for impl in impls:
            if impl == "dal":
                run = await dal_run(engine, fills, logs)
            else:
                mode = "stock" if impl == "freqtrade-stock" else "wal"
                run = await freqtrade_run(engine, fills_json, fills, peer_python, tmp, mode)
                info = run.info
            runs[impl] = run
            rates[impl].append(run.fills_per_s)
            print(
                f"  {engine:10} {impl:16} round {r + 1}: {run.fills_per_s:7.0f} fills/s  "
                f"realized {run.text}  (load {load:.2f})"
            )
        exact = runs["dal"].realized
        for impl in impls[1:]:
            off = abs(runs[impl].realized - exact)
            if off > Decimal("0.000001"):  # not a float's drift: not the same fills
                raise CheckFailed(f"{engine} {impl} realized {runs[impl].text}, the DAL {exact}")
        drifts.append(f"{abs(runs['freqtrade'].realized - exact):.2e}")
    out: dict[str, Any] = {
        "engine": engine,
        "fills": len(fills),
        "positions": count_positions(fills),
        "loads": loads,
        "freqtrade_drift_per_round": drifts,
        "versions": {k: info.get(k) for k in ("freqtrade", "sqlalchemy", "sqlite")},
    }
    for impl in impls:
        out[impl] = {
            "fills_per_s": round(median(rates[impl])),
            "spread": _spread(rates[impl], 0),
            "runs": [round(x) for x in rates[impl]],
        }
        if impl != "dal":
            ratios = [a / b for a, b in zip(rates["dal"], rates[impl], strict=True)]
            ratio = median(ratios)
            out[impl] |= {
                "ratio": round(ratio, 2),
                "ratio_spread": _spread(ratios, 2),
                "ratio_runs": [round(x, 2) for x in ratios],
            }
            if impl == "freqtrade":
                out[impl]["target"] = f"≥ {TARGET}×"
                out[impl]["verdict"] = _ok(ratio >= TARGET)
    return out


async def measure_drift(
    n: int, peer_python: Path, logs: ProductionLogging, tmp: Path
) -> dict[str, Any]:
    """freqtrade's realized profit over ``n`` fills against the DAL's exact value (SQLite)."""
    fills = make_sequence(n)
    fills_json = tmp / f"fills-{n}.json"
    fills_json.write_text(json.dumps([f.as_json() for f in fills]))
    dal = await dal_run("sqlite", fills, logs)
    # The DAL's stored value is the position arithmetic's (verify_portfolio replayed it).
    with localcontext(DECIMAL_CONTEXT):
        replayed = replay([(f.side, f.quantity, f.price, f.exec_time) for f in fills])
    if replayed[-1].state.realized_pnl != dal.realized:
        raise CheckFailed(f"the DAL stored {dal.realized}, a replay gives {replayed[-1]}")
    ft = await freqtrade_run("sqlite", fills_json, fills, peer_python, tmp, "wal")
    exits = sum(1 for f in fills if f.side == "SELL")
    return {
        "fills": n,
        "positions": count_positions(fills),
        "exits": exits,
        **drift(dal.realized, ft.realized),
        "freqtrade_total_closed_profit": ft.info["total_closed_profit"],
        "dal_fills_per_s": round(dal.fills_per_s),
        "freqtrade_fills_per_s": round(ft.fills_per_s),
    }


PEER_NAMES = {
    "freqtrade": "freqtrade, WAL",
    "freqtrade-stock": "freqtrade, its stock SQLite",
}


def print_table(rows: list[dict[str, Any]], drift_row: dict[str, Any] | None) -> None:
    print(
        f"\n{'engine':11} {'peer':28} {'DAL fills/s':>11} {'peer fills/s':>12} {'ratio':>6} "
        f"{'spread':>10}  {'target':7} verdict"
    )
    for row in rows:
        for impl in IMPLS[row["engine"]][1:]:
            peer = row[impl]
            name = PEER_NAMES[impl] if row["engine"] == "sqlite" else "freqtrade"
            print(
                f"{row['engine']:11} {name:28} {row['dal']['fills_per_s']:>11,} "
                f"{peer['fills_per_s']:>12,} {peer['ratio']:>5.2f}× {peer['ratio_spread']:>10}  "
                f"{peer.get('target', '—'):7} {peer.get('verdict', '—')}"
            )
    print(
        "  ratio: DAL / freqtrade's pattern, the median of the rounds' ratios (each round's pair "
        "ran side by side); WAL: freqtrade on tradebook's SQLite settings (WAL, "
        "synchronous=NORMAL); stock: as freqtrade leaves SQLite (rollback journal, "
        "synchronous=FULL)"
    )
    if drift_row:
        print(
            f"drift of freqtrade's realized profit over {drift_row['fills']:,} fills "
            f"({drift_row['positions']:,} trades, {drift_row['exits']:,} exits): "
            f"{drift_row['freqtrade']} against the exact {drift_row['exact']}: "
            f"{drift_row['abs_diff']} off (relative {drift_row['rel_diff']}), first wrong "
            f"decimal: {drift_row['first_wrong_decimal']}"
        )


async def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.peers", description=__doc__)
    parser.add_argument("--engines", default="sqlite,postgresql")
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--fills", type=int, default=FILLS, help="fills per run")
    parser.add_argument("--drift-fills", type=int, default=DRIFT_FILLS)
    parser.add_argument("--peer-python", type=Path, default=PEER_PYTHON)
    parser.add_argument(
        "--quick", action="store_true", help="3 rounds of 500 fills, drift on 2,000"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.fills, args.drift_fills = 3, 500, 2000
    if not args.peer_python.exists():
        print(f"{args.peer_python} is missing: run `make bench-peers`", file=sys.stderr)
        return 2
    engines = [e for e in args.engines.split(",") if e]
    report: dict[str, Any] = {
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "args": {k: str(v) for k, v in vars(args).items()},
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_at_start": [round(x, 2) for x in os.getloadavg()],
        },
        "target": f"DAL / freqtrade's pattern ≥ {TARGET}× on each engine",
    }
    started = time.perf_counter()
    status = 0
    print(
        f"== 8. Peer: freqtrade's persistence pattern against the DAL ({args.rounds} rounds of "
        f"{args.fills:,} fills, interleaved; one fill per transaction on both sides) =="
    )
    with tempfile.TemporaryDirectory(prefix="tbbench-peers-") as tmp_name:
        tmp = Path(tmp_name)
        logs = ProductionLogging(tmp / "tradebook.log")
        rows: list[dict[str, Any]] = []
        drift_row: dict[str, Any] | None = None
        try:
            fills = make_sequence(args.fills)
            for engine in engines:
                rows.append(
                    await bench_engine(engine, fills, args.rounds, args.peer_python, logs, tmp)
                )
            drift_row = await measure_drift(args.drift_fills, args.peer_python, logs, tmp)
        except CheckFailed as exc:
            print(f"\nCHECK FAILED: {exc}", file=sys.stderr)
            report["check_failed"] = str(exc)
            status = 1
        finally:
            report["log_lines"] = {
                "tradebook": logs.lines(),
                "freqtrade": _lines(tmp / "freqtrade.log"),
            }
            logs.close()
    print_table(rows, drift_row)
    report["peers"] = rows
    report["drift"] = drift_row
    report["machine"]["load_at_end"] = [round(x, 2) for x in os.getloadavg()]
    report["seconds"] = round(time.perf_counter() - started, 1)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"peers-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=2, default=str))
    print(f"\n{report['seconds']} s; results in {path}")
    return status


def _lines(path: Path) -> int:
    if not path.exists():
        return 0
    with path.open(encoding="utf-8") as f:
        return sum(1 for _ in f)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
