"""`tradebook run` in Telegram mode, end to end: the real process (a subprocess, so SIGTERM is
real) against a fake Bot API server over HTTP (tests/fake_bot_api.py), on a fresh SQLite file
after `tradebook db upgrade`.

The paper feed replays a CSV at 20 bars a second: BTCUSDT swings on a sine (the example SMA
cross strategy trades it every second or two), ETHUSDT stays at 3000. Waits poll the fake's
recorded calls (or the database) with generous deadlines; nothing sleeps a fixed time.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import datetime as dt
import io
import math
import os
import re
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from dal.engine import create_engine
from dal.schema import portfolios, schedules, trades, users
from tests.fake_bot_api import TOKEN, ApiCall, FakeBotApi, user

ROOT = Path(__file__).resolve().parent.parent
ALICE_ID, BOB_ID = 111, 222  # Alice: an admin from the start; Bob registers with /start
ALICE, BOB = user(ALICE_ID, "Alice"), user(BOB_ID, "Bob")
STOP_WITHIN_S = 10.0  # SIGTERM to exit, generous for a slow shared machine (measured ~1 s)


def _feed(path: Path, steps: int = 6000) -> Path:
    """BTCUSDT on a sine of period 60 bars around 60000, ETHUSDT flat at 3000."""
    start = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["time", "symbol", "open", "high", "low", "close"])
    previous = "60000.00"
    for n in range(steps):
        at = (start + dt.timedelta(minutes=n)).isoformat()
        close = f"{60000 + 300 * math.sin(2 * math.pi * n / 60):.2f}"
        low, high = sorted((previous, close), key=float)
        writer.writerow([at, "BTCUSDT", previous, high, low, close])
        writer.writerow([at, "ETHUSDT", "3000", "3000", "3000", "3000"])
        previous = close
    path.write_text(out.getvalue())
    return path


def _env(cwd: Path, api_url: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("TRADEBOOK_") and k != "TELEGRAM_BOT_TOKEN"
    }
    env.update(
        {
            "PYTHONPATH": str(ROOT),
            "TELEGRAM_BOT_TOKEN": TOKEN,
            "TRADEBOOK_TELEGRAM_API_URL": api_url,
            "TRADEBOOK_DATABASE_URL": f"sqlite+aiosqlite:///{cwd / 'var' / 'tb.db'}",
            "TRADEBOOK_ADMIN_TELEGRAM_IDS": str(ALICE_ID),
            "TRADEBOOK_PAPER_FEED": str(_feed(cwd / "feed.csv")),
            "TRADEBOOK_PAPER_SPEED": "20",
            "TRADEBOOK_HEARTBEAT_FILE": str(cwd / "var" / "heartbeat"),
            "TRADEBOOK_BACKUP_DIR": str(cwd / "var" / "backups"),
            "TRADEBOOK_BACKUP_SCHEDULE": "",
            "TRADEBOOK_MAINTAIN_SCHEDULE": "",
            "TRADEBOOK_LOG_LEVEL": "INFO",
        }
    )
    return env


async def _upgrade(env: dict[str, str], cwd: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tradebook.cli", "db", "upgrade",
        cwd=cwd, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()


class Tradebook:
    """`python -m tradebook.cli run` as a child process, its log (stderr) collected."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.log: list[str] = []
        assert proc.stderr is not None
        self._reader = asyncio.create_task(self._read(proc.stderr))

    @classmethod
    async def start(cls, env: dict[str, str], cwd: Path) -> Tradebook:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tradebook.cli", "run",
            cwd=cwd, env=env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # its own process group, the chart process included
        )  # fmt: skip
        return cls(proc)

    async def _read(self, stream: asyncio.StreamReader) -> None:
        async for line in stream:
            self.log.append(line.decode(errors="replace").rstrip("\n"))

    @property
    def text(self) -> str:
        return "\n".join(self.log)

    async def wait_for_log(self, fragment: str, timeout: float = 60) -> None:
        await _until(f"{fragment!r} in the log", lambda: _true(fragment in self.text), timeout)

    async def terminate(self) -> tuple[int, float]:
        """SIGTERM; the exit code and how long the exit took."""
        assert self.proc.returncode is None, f"it had already exited:\n{self.text}"
        began = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(self.proc.wait(), 60)
        finally:
            await self.kill()
        return code, time.monotonic() - began

    async def kill(self) -> None:
        """Kill what is left of it: the process and any child (the chart process)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        await asyncio.wait_for(self.proc.wait(), 30)  # until its stderr is closed too
        await asyncio.wait_for(self._reader, 10)


async def _true(value: bool) -> bool:
    return value


async def _until(what: str, check: Callable[[], Awaitable[bool]], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        await asyncio.sleep(0.1)


def _sent_to(chat: int, fragment: str = "", method: str = "sendmessage") -> Callable[..., bool]:
    """Accepts a delivered ``method`` call to ``chat`` whose visible text has ``fragment``."""

    def accept(call: ApiCall) -> bool:
        return call.ok and call.name == method and call.chat_id == chat and fragment in call.text

    return accept


async def _command(api: FakeBotApi, who: dict[str, Any], text: str, reply: str) -> ApiCall:
    """``who`` sends ``text``; the bot's reply containing ``reply`` (waited for)."""
    start = len(api.calls)
    api.send(who, text)
    return await api.wait_for(f"a reply {reply!r} to {text!r}", _sent_to(who["id"], reply), start)


async def _trades_of(engine: AsyncEngine, telegram_id: int) -> int:
    query = (
        sa.select(sa.func.count())
        .select_from(trades.join(portfolios, trades.c.portfolio_id == portfolios.c.id))
        .join(users, portfolios.c.user_id == users.c.id)
        .where(users.c.telegram_user_id == str(telegram_id))
    )
    async with engine.connect() as conn:
        return int((await conn.execute(query)).scalar_one())


async def _unreachable_at(engine: AsyncEngine, telegram_id: int) -> dt.datetime | None:
    query = sa.select(users.c.unreachable_at).where(users.c.telegram_user_id == str(telegram_id))
    async with engine.connect() as conn:
        value: dt.datetime | None = (await conn.execute(query)).scalar_one()
        return value


async def test_tradebook_run_in_telegram_mode_end_to_end(tmp_path: Path) -> None:
    api = FakeBotApi()
    env = _env(tmp_path, api.url)
    await _upgrade(env, tmp_path)
    engine = create_engine(env["TRADEBOOK_DATABASE_URL"])
    bot: Tradebook | None = None
    try:
        # --- start-up while Telegram is down: refused, then a proxy's HTML 502, then up ----
        bot = await Tradebook.start(env, tmp_path)
        await bot.wait_for_log("Telegram is not reachable")  # connection refused
        api.fail("getMe", 502, "Bad Gateway", html=True)
        await api.listen()
        got_in = await api.wait_for("getMe answered", lambda c: c.name == "getme" and c.ok)
        (bad_gateway,) = [c for c in api.calls if c.name == "getme" and c.status == 502]
        assert got_in.at - bad_gateway.at >= 1.8  # the pause doubled (1 s, then 2 s)
        assert re.findall(r"trying again in (\d+) s", bot.text)[:2] == ["1", "2"]
        await api.wait_for("long polling", lambda c: c.name == "getupdates" and c.ok)
        assert {"deletewebhook", "setmycommands"} <= {c.name for c in api.calls if c.ok}

        # --- long polling: /start from the admin; Bob registers and she approves him ----
        await _command(api, ALICE, "/start", "Welcome back, Alice.")
        mark = len(api.calls)
        api.send(BOB, "/start")
        await api.wait_for("Bob told to wait", _sent_to(BOB_ID, "waiting for approval"), mark)
        ask = await api.wait_for("the approval request", _sent_to(ALICE_ID, "(id 222)"), mark)
        api.press(ALICE, ask, "Approve")
        await api.wait_for("Bob told", _sent_to(BOB_ID, "You are approved."), mark)

        # --- the strategy runtime: the example strategy trades and its fills are told ----
        await _command(api, ALICE, "/strategy start sma_cross", "Started sma_cross 1.0.")
        await api.wait_for("a strategy fill", _sent_to(ALICE_ID, "0.01 BTCUSDT at"), timeout=60)
        await _command(api, BOB, '/schedule add "* * * * *" report positions', "Schedule #")
        await _command(api, BOB, "/strategy start sma_cross", "Started sma_cross 1.0.")
        # Bob blocks the bot: the next fill notification to him gets 403.
        api.block(BOB_ID, when=lambda c: c.text.startswith("Filled: "))

        # --- a manual order, confirmed by button; its fill notice survives a 429 --------
        preview = await _command(api, ALICE, "/buy ETHUSDT 0.1", "BUY 0.1 ETHUSDT MARKET")
        eth_fill = "Filled: BUY 0.1 ETHUSDT at 3001.5 (order #"  # 3000 + 5 bps slippage
        api.fail(
            "sendMessage", 429, "Too Many Requests: retry after 1", retry_after=1,
            match=lambda c: c.text.startswith(eth_fill),
        )  # fmt: skip
        mark = len(api.calls)
        api.press(ALICE, preview, "Confirm")
        await api.wait_for("the button answered", lambda c: c.name == "answercallbackquery", mark)
        await api.wait_for(
            "the preview edited",
            lambda c: c.ok and c.name == "editmessagetext" and "placed" in c.text,
            mark,
        )
        delivered = await api.wait_for("the ETH fill notice", _sent_to(ALICE_ID, eth_fill), mark)
        (limited,) = [c for c in api.calls[mark:] if c.status == 429]
        assert limited.text == delivered.text and limited.chat_id == ALICE_ID
        assert delivered.at - limited.at >= 0.9  # sent again after the wait, not lost

        # --- a reply hit by a 429 arrives too; /pnl sends its chart as a photo ----------
        api.fail(
            "sendMessage", 429, "Too Many Requests: retry after 1", retry_after=1,
            match=lambda c: "PnL — Main" in c.text,
        )  # fmt: skip
        mark = len(api.calls)
        pnl = await _command(api, ALICE, "/pnl", "PnL — Main, today")
        photo = await api.wait_for("the PnL chart", _sent_to(ALICE_ID, "PnL", "sendphoto"), mark)
        (limited,) = [c for c in api.calls[mark:] if c.status == 429]
        assert limited.text == pnl.text and pnl.at - limited.at >= 0.9
        (name, png) = photo.files["photo"]
        assert name == "pnl.png" and png.startswith(b"\x89PNG\r\n")
        assert not [c for c in api.calls[mark:] if "Something went wrong" in c.text]

        # --- /export sends a CSV document (multipart) -----------------------------------
        mark = len(api.calls)
        api.send(ALICE, "/export trades")
        document = await api.wait_for(
            "the export", _sent_to(ALICE_ID, "Trades of Main", "senddocument"), mark
        )
        (name, data) = document.files["document"]
        assert name == "trades-Main-all_time.csv"
        rows = list(csv.DictReader(io.StringIO(data.decode())))
        assert [
            (r["side"], r["quantity"], r["price"]) for r in rows if r["symbol"] == "ETHUSDT"
        ] == [("BUY", "0.1", "3001.5")]
        assert any(r["symbol"] == "BTCUSDT" and r["strategy_id"] for r in rows)

        await _command(api, ALICE, '/schedule add "* * * * *" report pnl all', "Schedule #")

        # --- Bob's chat: one 403, then nothing more is tried -----------------------------
        blocked = await api.wait_for(
            "the 403 for Bob", lambda c: c.chat_id == BOB_ID and c.status == 403, timeout=60
        )
        assert blocked.text.startswith("Filled: ")
        await _until("Bob marked unreachable", lambda: _is_set(_unreachable_at(engine, BOB_ID)))
        after_block = await _trades_of(engine, BOB_ID)
        await _until(  # his strategy keeps trading: fills he would be told of
            "two more fills of Bob's",
            lambda: _at_least(_trades_of(engine, BOB_ID), after_block + 2),
        )
        index = api.calls.index(blocked)
        assert [c for c in api.calls[index + 1 :] if c.chat_id == BOB_ID] == []

        # --- SIGTERM while polling: a clean exit -----------------------------------------
        code, took = await bot.terminate()
        assert code == 0 and took < STOP_WITHIN_S, bot.text
        assert "Traceback" not in bot.text and " ERROR " not in bot.text, bot.text
        eth_notices = [c for c in api.calls if c.ok and c.text.startswith(eth_fill)]
        assert len(eth_notices) == 1  # retried, never sent twice

        # --- a restart: reports that came due while it was down run at start-up; a ------
        # blocked user still gets neither reports nor notices (cron fires on whole minutes:
        # moving next_run_at back stands for the downtime, instead of waiting for a minute)
        down_since = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
        async with engine.begin() as conn:
            await conn.execute(schedules.update().values(next_run_at=down_since))
        mark = len(api.calls)
        restarted = dt.datetime.now(dt.UTC)
        bot = await Tradebook.start(env, tmp_path)
        await api.wait_for(
            "Alice's scheduled report", _sent_to(ALICE_ID, "PnL — Main, all time"), mark, 60
        )
        await api.wait_for("its chart", _sent_to(ALICE_ID, "PnL", "sendphoto"), mark)
        await _until("both schedules run", lambda: _schedules_ran_since(engine, restarted))
        bob_now = await _trades_of(engine, BOB_ID)
        await _until(
            "another fill of Bob's", lambda: _at_least(_trades_of(engine, BOB_ID), bob_now + 1)
        )
        assert [c for c in api.calls[mark:] if c.chat_id == BOB_ID] == []  # no report, no fill

        code, took = await bot.terminate()
        assert code == 0 and took < STOP_WITHIN_S, bot.text
        assert "Traceback" not in bot.text and " ERROR " not in bot.text, bot.text
        assert api.unknown == []
        assert not [c for c in api.calls if c.status == 400], "Telegram would refuse these"
    finally:
        if bot is not None:
            await bot.kill()
            print(f"--- the last tradebook's log ---\n{bot.text}")  # shown when a test fails
        await engine.dispose()
        await api.close()


async def _is_set(value: Awaitable[object]) -> bool:
    return await value is not None


async def _at_least(count: Awaitable[int], least: int) -> bool:
    return await count >= least


async def _schedules_ran_since(engine: AsyncEngine, since: dt.datetime) -> bool:
    async with engine.connect() as conn:
        runs = (await conn.execute(sa.select(schedules.c.last_run_at))).scalars().all()
    return len(runs) == 2 and all(run is not None and run >= since for run in runs)


async def test_sigterm_while_waiting_for_telegram_exits_cleanly(tmp_path: Path) -> None:
    """Telegram answers 502 to every getMe: `run` is in its start-up wait. SIGTERM ends it
    with exit code 0 (before, the default action killed it: -15)."""
    api = FakeBotApi()
    api.fail("getMe", 502, "Bad Gateway", times=None)
    await api.listen()
    env = _env(tmp_path, api.url)
    bot: Tradebook | None = None
    try:
        await _upgrade(env, tmp_path)
        bot = await Tradebook.start(env, tmp_path)
        await api.wait_for("a getMe", lambda c: c.name == "getme", timeout=60)
        await bot.wait_for_log("Telegram is not reachable")
        code, took = await bot.terminate()
        assert code == 0 and took < STOP_WITHIN_S, bot.text
        assert "Traceback" not in bot.text and "Unclosed" not in bot.text, bot.text
        assert {c.name for c in api.calls} == {"getme"}  # it never got further
    finally:
        if bot is not None:
            await bot.kill()
            print(f"--- the last tradebook's log ---\n{bot.text}")  # shown when a test fails
        await api.close()
