"""Console mode as a user runs it: `tradebook run` as a subprocess, commands on stdin."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _env(cwd: Path, **extra: str) -> dict[str, str]:
    """A clean environment: no TRADEBOOK_* or token from the caller, a database under cwd."""
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
            **extra,
        }
    )
    return env


def _tradebook(args: list[str], cwd: Path, stdin: str = "") -> subprocess.CompletedProcess[str]:
    # Strategies off: deterministic output, no strategy trading in the background.
    return subprocess.run(
        [sys.executable, "-m", "tradebook.cli", *args],
        cwd=cwd,
        env=_env(cwd, TRADEBOOK_STRATEGIES="off"),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


class RunningConsole:
    """`tradebook run` as a live subprocess: type lines, wait for output, then EOF."""

    def __init__(self, cwd: Path, **env: str) -> None:
        import threading

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tradebook.cli", "run"],
            cwd=cwd,
            env=_env(cwd, **env),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        out = self.proc.stdout
        assert out is not None
        self._reader = threading.Thread(target=lambda: self.lines.extend(out), daemon=True)
        self._reader.start()

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def seen(self, fragment: str) -> bool:
        return any(fragment in line for line in self.lines)

    def wait_for(self, fragment: str, poke: str | None = None, timeout: float = 90) -> None:
        """Wait (generously: this checks behaviour, not speed) until ``fragment`` is printed,
        typing ``poke`` once a second meanwhile."""
        import time

        deadline = time.monotonic() + timeout
        while not self.seen(fragment):
            assert time.monotonic() < deadline, f"no {fragment!r} in:\n{''.join(self.lines)}"
            if poke:
                self.send(poke)
            time.sleep(1 if poke else 0.1)

    def finish(self) -> list[str]:
        """EOF, then the exit status must be 0; returns the non-blank output lines."""
        assert self.proc.stdin is not None and self.proc.stderr is not None
        try:
            self.proc.stdin.close()
            assert self.proc.wait(timeout=60) == 0, self.proc.stderr.read()
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
        self._reader.join(timeout=10)
        return [line.rstrip("\n") for line in self.lines if line.strip()]


def test_console_mode_runs_commands_from_stdin(tmp_path: Path) -> None:
    refused = _tradebook(["run"], tmp_path, "/help\n")
    assert refused.returncode == 1 and "tradebook db upgrade" in refused.stderr  # a refusal
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
    # The run beat while it ran: `tradebook health` reads that file (compose's healthcheck).
    assert (tmp_path / "var" / "heartbeat").read_text().startswith("20")
    assert _tradebook(["health"], tmp_path).stdout.strip() == "healthy"

    # A second run finds the same local admin (created once).
    again = _tradebook(["run"], tmp_path, "/portfolios\n")
    assert again.returncode == 0
    assert "Main — PAPER account Paper (current, default)" in again.stdout


async def test_with_a_token_it_long_polls(tmp_path: Path) -> None:
    """The Telegram path offline: getUpdates answered by the recording session."""
    import asyncio

    from pydantic import SecretStr

    from bot.recording import RecordingSession
    from dal import migrations
    from dal.database import Database
    from tradebook.app import run_telegram
    from tradebook.settings import Settings

    url = f"sqlite+aiosqlite:///{tmp_path / 'tb.db'}"
    await asyncio.to_thread(migrations.upgrade, url)
    settings = Settings(
        database_url=url, telegram_bot_token=SecretStr("123456:TEST-token"), admin_telegram_ids=[42]
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
    assert reply.chat_id == 42 and reply.text is not None and "Main" in reply.text


def test_make_run_console_trades_the_example_strategy_on_paper(tmp_path: Path) -> None:
    """Strategies on (the default): the SMA example trades on the paper gateway and the bot's
    commands show it; EOF still exits 0."""
    assert _tradebook(["db", "upgrade"], tmp_path).returncode == 0
    console = RunningConsole(tmp_path, TRADEBOOK_PAPER_SPEED="20")
    console.wait_for("FILLED 0.01/0.01", poke="/orders filled")
    # At 20 bars a second the long-only example may be flat again by the time /positions
    # arrives (a sell is a cross away), so ask until a position it holds is shown.
    console.wait_for("[sma_cross 1.0]", poke="/positions")
    console.send("/strategies")
    output = "\n".join(console.finish())
    assert "BUY 0.01 BTCUSDT MARKET" in output and "FILLED 0.01/0.01" in output
    assert "[sma_cross 1.0]" in output
    assert "sma_cross 1.0 — running on Main" in output


def test_console_scenario_deposit_buy_fill_positions_pnl_export(tmp_path: Path) -> None:
    """The issue's console scenario, checked line by line (strategies off: only our trades)."""
    assert _tradebook(["db", "upgrade"], tmp_path).returncode == 0
    console = RunningConsole(tmp_path, TRADEBOOK_STRATEGIES="off", TRADEBOOK_PAPER_SPEED="20")
    console.send("/deposit 500")
    console.wait_for("Deposited 500 USDT in Main; free 10500 USDT.")
    console.send("/buy BTCUSDT 0.01")
    console.wait_for("[#1] Confirm")
    console.send("#1")
    console.wait_for("Filled: BUY 0.01 BTCUSDT at ")
    for command in ("/positions", "/pnl", "/export trades"):
        console.send(command)
    out = console.finish()
    start = out.index("Deposited 500 USDT in Main; free 10500 USDT.")
    assert out[start + 1 : start + 5] == [
        "BUY 0.01 BTCUSDT MARKET in Main [PAPER]",
        "Risk check: allowed.",
        "  [#1] Confirm   [#2] Cancel",
        "Order #1 placed (NEW).",
    ]
    fill = next(line for line in out if line.startswith("Filled: BUY 0.01 BTCUSDT at "))
    price = fill.removeprefix("Filled: BUY 0.01 BTCUSDT at ").removesuffix(" (order #1) [PAPER]")
    tail = out[out.index("Positions — Main") :]
    assert tail[:5] == [
        "Positions — Main",
        "BTCUSDT [manual]",
        f"  qty 0.01  avg {price}",
        "  realized 0 USDT",
        "  close: /close BTCUSDT",
    ]
    assert tail[5:9] == ["PnL — Main, today", "Realized PnL", "  0 USDT", "Fees"]
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


async def test_telegram_mode_waits_for_telegram_at_start_up_instead_of_exiting(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import asyncio

    from pydantic import SecretStr

    from bot.recording import RecordingSession
    from dal import migrations
    from dal.database import Database
    from tradebook.app import run_telegram
    from tradebook.settings import Settings

    url = f"sqlite+aiosqlite:///{tmp_path / 'tb.db'}"
    await asyncio.to_thread(migrations.upgrade, url)
    settings = Settings(database_url=url, telegram_bot_token=SecretStr("123456:TEST-token"))
    db = Database.from_settings(settings)
    session = RecordingSession()
    for _ in range(3):  # Telegram (or the way to it) is down for three tries
        session.fail_next("GetMe", 502, "Bad Gateway")
    stop = asyncio.Event()
    task = asyncio.create_task(run_telegram(settings, db, session, stop, retry_pause_s=0.01))
    for _ in range(500):
        if session.sent("SetMyCommands"):
            break
        await asyncio.sleep(0.01)
    stop.set()
    assert await task == 0
    await db.dispose()
    assert session.sent("GetMe") and session.sent("SetMyCommands")  # it got through
    tries = [r for r in caplog.records if "Telegram is not reachable" in r.getMessage()]
    assert len(tries) == 3
