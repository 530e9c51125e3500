"""Console mode as a user runs it: `tradebook run` as a subprocess, commands on stdin."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _tradebook(args: list[str], cwd: Path, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("TRADEBOOK_") and k != "TELEGRAM_BOT_TOKEN"
    }
    env.update(
        {
            "TRADEBOOK_DATABASE_URL": f"sqlite+aiosqlite:///{cwd / 'var' / 'tb.db'}",
            "PYTHONPATH": str(ROOT),
            "TRADEBOOK_LOG_LEVEL": "WARNING",
            "TRADEBOOK_STRATEGIES": "off",  # deterministic: no strategy trading
        }
    )
    return subprocess.run(
        [sys.executable, "-m", "tradebook.cli", *args],
        cwd=cwd,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_console_mode_runs_commands_from_stdin(tmp_path: Path) -> None:
    refused = _tradebook(["run"], tmp_path, "/help\n")
    assert refused.returncode == 2 and "tradebook db upgrade" in refused.stderr
    assert _tradebook(["db", "upgrade"], tmp_path).returncode == 0

    script = "\n".join(
        [
            "/start",
            "/addinstrument BTCUSDT BINANCE CRYPTO USDT 0.01",
            "/portfolio",
            "#1",
            "#7",
            "/positions",
            "/pnl",
            "/orders nonsense words",
            "/tz Asia/Tokyo",
            "/risk",
            "/pending",
        ]
    )  # no trailing newline: EOF right after the last command
    result = _tradebook(["run"], tmp_path, script)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("tradebook console")
    expected = [
        "Welcome back, console. Send /help for the commands.",
        "Added BTCUSDT on BINANCE (CRYPTO, USDT, tick 0.01, lot -).",
        "Current portfolio: Main. Switch to:",
        "  [#1] • Main",
        "(Switched to Main)",
        "Current portfolio: Main",
        "(no button #7)",
        "Positions — Main",
        "No open positions.",
        "PnL — Main, today",
        "No trades in this period.",
        "⚠️ no portfolio named 'nonsense words'",
        "Time zone set to Asia/Tokyo.",
        "Risk — Main",
    ]
    body = [line for line in lines[1:] if line.strip()]
    for want in expected:
        assert want in body, f"missing {want!r} in:\n{result.stdout}"
    assert body.index(expected[0]) < body.index(expected[-1])
    assert body[-1] == "Nobody is waiting for approval."
    assert "Traceback" not in result.stderr

    # A second run finds the same local admin (created once).
    again = _tradebook(["run"], tmp_path, "/portfolios\n")
    assert again.returncode == 0
    assert "Main — PAPER account Paper (current, default)" in again.stdout


async def test_with_a_token_it_long_polls(tmp_path: Path) -> None:
    """The Telegram path offline: getUpdates answered by the recording session."""
    import asyncio

    from bot.main import run_telegram
    from bot.recording import RecordingSession
    from dal import migrations
    from dal.database import Database
    from tradebook.settings import Settings

    url = f"sqlite+aiosqlite:///{tmp_path / 'tb.db'}"
    await asyncio.to_thread(migrations.upgrade, url)
    settings = Settings(
        database_url=url, telegram_bot_token="123456:TEST-token", admin_telegram_ids="42"
    )
    db = Database.from_settings(settings)
    session = RecordingSession()
    session.queue_update(
        {
            "update_id": 1,
            "message": {
                "message_id": 5,
                "date": 1_700_000_000,
                "text": "/portfolios",
                "chat": {"id": 42, "type": "private"},
                "from": {"id": 42, "is_bot": False, "first_name": "Ada"},
            },
        }
    )
    stop = asyncio.Event()
    task = asyncio.create_task(run_telegram(settings, db, session, stop))
    for _ in range(500):
        if session.sent("SendMessage"):
            break
        await asyncio.sleep(0.01)
    stop.set()
    assert await task == 0
    await db.dispose()
    names = [c.name for c in session.calls]
    assert "DeleteWebhook" in names and "SetMyCommands" in names
    (reply,) = session.sent("SendMessage")
    assert reply.chat_id == 42 and "Main" in reply.text


def test_make_run_console_trades_the_example_strategy_on_paper(tmp_path: Path) -> None:
    """Strategies on (the default): the SMA example trades on the paper gateway and the bot's
    commands show it; EOF still exits 0."""
    import threading
    import time

    assert _tradebook(["db", "upgrade"], tmp_path).returncode == 0
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("TRADEBOOK_") and k != "TELEGRAM_BOT_TOKEN"
    }
    env.update(
        {
            "TRADEBOOK_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'var' / 'tb.db'}",
            "PYTHONPATH": str(ROOT),
            "TRADEBOOK_LOG_LEVEL": "WARNING",
            "TRADEBOOK_PAPER_SPEED": "20",
        }
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "tradebook.cli", "run"],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    deadline = time.monotonic() + 90  # generous: this checks behaviour, not speed
    try:
        while not any("FILLED 0.01/0.01" in line for line in lines):
            assert time.monotonic() < deadline, "".join(lines)
            proc.stdin.write("/orders filled\n")
            proc.stdin.flush()
            time.sleep(1)
        proc.stdin.write("/positions\n/strategies\n")
        proc.stdin.close()
        assert proc.wait(timeout=60) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(timeout=10)
    output = "".join(lines)
    assert "BUY 0.01 BTCUSDT MARKET" in output and "FILLED 0.01/0.01" in output
    assert "[sma_cross 1.0]" in output
    assert "sma_cross 1.0 — running on Main" in output


def test_console_scenario_deposit_buy_fill_positions_pnl_export(tmp_path: Path) -> None:
    """The issue's console scenario, checked line by line (strategies off: only our trades)."""
    import threading
    import time

    assert _tradebook(["db", "upgrade"], tmp_path).returncode == 0
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("TRADEBOOK_") and k != "TELEGRAM_BOT_TOKEN"
    }
    env.update(
        {
            "TRADEBOOK_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'var' / 'tb.db'}",
            "PYTHONPATH": str(ROOT),
            "TRADEBOOK_LOG_LEVEL": "WARNING",
            "TRADEBOOK_STRATEGIES": "off",
            "TRADEBOOK_PAPER_SPEED": "20",
        }
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "tradebook.cli", "run"],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()

    def wait_for(fragment: str) -> None:
        deadline = time.monotonic() + 60  # generous: behaviour, not speed
        while not any(fragment in line for line in lines):
            assert time.monotonic() < deadline, f"no {fragment!r} in:\n{''.join(lines)}"
            time.sleep(0.1)

    def send(line: str) -> None:
        proc.stdin.write(line + "\n")
        proc.stdin.flush()

    try:
        send("/deposit 500")
        wait_for("Deposited 500 USDT in Main; cash 10500 USDT.")
        send("/buy BTCUSDT 0.01")
        wait_for("[#1] Confirm")
        send("#1")
        wait_for("Filled: BUY 0.01 BTCUSDT at ")
        for command in ("/positions", "/pnl", "/export trades"):
            send(command)
        proc.stdin.close()
        assert proc.wait(timeout=60) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(timeout=10)
    out = [line.rstrip("\n") for line in lines if line.strip()]
    start = out.index("Deposited 500 USDT in Main; cash 10500 USDT.")
    assert out[start + 1 : start + 5] == [
        "BUY 0.01 BTCUSDT MARKET in Main",
        "Risk check: allowed.",
        "  [#1] Confirm   [#2] Cancel",
        "Order #1 placed (NEW).",
    ]
    fill = next(line for line in out if line.startswith("Filled: BUY 0.01 BTCUSDT at "))
    price = fill.removeprefix("Filled: BUY 0.01 BTCUSDT at ").removesuffix(" (order #1)")
    tail = out[out.index("Positions — Main") :]
    assert tail[:4] == [
        "Positions — Main",
        "BTCUSDT [manual]",
        f"  qty 0.01  avg {price}",
        "  realized 0 USDT",
    ]
    assert tail[4:8] == ["PnL — Main, today", "Realized PnL", "  0 USDT", "Fees"]
    document = next(line for line in tail if line.startswith("[document] "))
    rows = (tmp_path / document.removeprefix("[document] ")).read_text().splitlines()
    assert rows[0].startswith("trade_id,exec_time_utc,exec_time_local,timezone,portfolio")
    assert len(rows) == 2 and f",BUY,0.01,{price}," in rows[1]


def test_tradebook_export_cli(tmp_path: Path) -> None:
    import asyncio

    from dal.database import Database
    from dal.scope import Actor
    from tests.factories import fill

    assert _tradebook(["db", "upgrade"], tmp_path).returncode == 0
    url = f"sqlite+aiosqlite:///{tmp_path / 'var' / 'tb.db'}"

    async def seed() -> None:
        db = Database(url)
        async with db.session(Actor.system()) as s:
            await s.users.register(555, "ann", chat_id=555)
            user = await s.users.approve(555)
            inst = await s.instruments.create(
                {"symbol": "BTCUSDT", "asset_type": "CRYPTO", "currency": "USDT"}
            )
        async with db.session(Actor.user(user.id)) as s:
            pid = (await s.portfolios.default()).id
            await s.trades.ingest_fill(fill(pid, inst.id, "BUY", "0.000000000000000001", "3"))
        await db.dispose()

    asyncio.run(seed())
    result = _tradebook(["export", "trades", "--user", "@ann"], tmp_path)
    assert result.returncode == 0, result.stderr
    header, row = result.stdout.splitlines()
    assert header.startswith("trade_id,exec_time_utc")
    assert ",BUY,0.000000000000000001,3," in row
    out = tmp_path / "orders.csv"
    assert (
        _tradebook(["export", "orders", "--user", "555", "--out", str(out)], tmp_path).returncode
        == 0
    )
    assert out.read_text().startswith("order_id,")
    missing = _tradebook(["export", "pnl", "--user", "@nobody"], tmp_path)
    assert missing.returncode == 1 and "no user @nobody" in missing.stderr
