"""Scheduled reports with a driven clock: no real sleeping."""

from __future__ import annotations

import datetime as dt

import pytest

from bot.scheduler import Scheduler
from dal.database import Database
from dal.scope import Actor
from tests.botkit import BotHarness, approved_user, joined
from tests.factories import fill, make_instrument

ALICE, BOB = 2001, 3001


async def _schedule(db: Database, actor: Actor, **config: str) -> int:
    async with db.session(actor) as s:
        row = await s.schedules.create(
            {
                "name": f"r{len(config)}-{config.get('report')}",
                "cron": "0 18 * * *",
                "config": config,
            }
        )
        return row.id


async def test_due_report_is_sent_once_and_missed_runs_collapse(db: Database) -> None:
    h = BotHarness(db)
    alice = await approved_user(db, ALICE)
    btc = await make_instrument(db, "BTCUSDT")
    schedule_id = await _schedule(db, alice, report="pnl", period="all")
    async with db.session(alice) as s:
        pid = (await s.portfolios.default()).id
        await s.trades.ingest_fill(fill(pid, btc, "BUY", "1", "100", trade_id="a"))
        await s.trades.ingest_fill(
            fill(
                pid,
                btc,
                "SELL",
                "1",
                "130",
                trade_id="b",
                at=dt.datetime(2024, 5, 2, tzinfo=dt.UTC),
            )
        )
        first_run = (await s.schedules.get(schedule_id)).next_run_at

    scheduler = Scheduler(db, h.bot)
    assert await scheduler.tick(first_run - dt.timedelta(seconds=1)) == 0
    assert h.session.calls == []
    # The bot was down for three days: one run, not three.
    late = first_run + dt.timedelta(days=3, minutes=5)
    assert await scheduler.tick(late) == 1
    text = joined(h.session.calls)
    assert "PnL — Main, all time" in text and "+30 USDT" in text
    assert all(c.chat_id == ALICE for c in h.session.calls)
    assert await scheduler.tick(late + dt.timedelta(minutes=1)) == 0
    async with db.session(alice) as s:
        row = await s.schedules.get(schedule_id)
    assert row.last_run_at == late
    assert row.next_run_at == (late + dt.timedelta(days=1)).replace(
        hour=18, minute=0, second=0, microsecond=0
    )


async def test_a_failing_run_is_logged_and_the_others_still_run(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    h = BotHarness(db)
    alice = await approved_user(db, ALICE)
    bob = await approved_user(db, BOB)
    await _schedule(db, alice, report="positions")
    await _schedule(db, bob, report="risk")
    async with db.session(Actor.system()) as s:
        (due_a, due_b) = await s.schedules.due(dt.datetime(2100, 1, 1, tzinfo=dt.UTC))
    h.session.fail_next("SendMessage", 400, "Bad Request: chat not found")
    now = max(due_a.next_run_at, due_b.next_run_at) + dt.timedelta(minutes=1)
    assert await Scheduler(db, h.bot).tick(now) == 2
    assert "chat not found" in caplog.text
    sent = h.session.sent("SendMessage")
    assert [c.chat_id for c in sent] == [BOB]
    assert "Risk — Main" in joined(sent)
    async with db.session(Actor.system()) as s:
        assert await s.schedules.due(now) == []  # both marked as run, the failed one too


async def test_an_owner_who_blocked_the_bot_is_marked_and_not_tried_again(db: Database) -> None:
    """A 403 on a report marks the chat unreachable, like a notification's does; the reports
    of an unreachable owner are not sent (their runs still count) until /start."""
    h = BotHarness(db)
    alice = await approved_user(db, ALICE)
    await _schedule(db, alice, report="positions")
    async with db.session(Actor.system()) as s:
        (due,) = await s.schedules.due(dt.datetime(2100, 1, 1, tzinfo=dt.UTC))
    h.session.fail_next("SendMessage", 403, "Forbidden: bot was blocked by the user")
    scheduler = Scheduler(db, h.bot)
    first = due.next_run_at + dt.timedelta(minutes=1)
    assert await scheduler.tick(first) == 1
    async with db.session(Actor.system()) as s:
        row = await s.users.lookup(ALICE)
        assert row is not None and row.unreachable_at is not None
    later = first + dt.timedelta(days=1)
    assert await scheduler.tick(later) == 1  # due again, and counted as run ...
    assert h.session.calls == []  # ... but not tried: the 403 was not recorded either
    async with db.session(Actor.system()) as s:
        assert await s.schedules.due(later) == []
    await h.send(ALICE, "/start")  # back: reports reach the chat again
    h.session.clear()
    assert await scheduler.tick(later + dt.timedelta(days=1)) == 1
    assert "Positions — Main" in joined(h.session.calls)


@pytest.mark.parametrize(
    ("report", "period", "heading"),
    [
        ("balance", None, "Balance — Main"),
        ("status", None, "Status — Main"),
        ("profit", "ytd", "Profit — Main, year to date"),
        ("performance", "30d", "Performance — Main, last 30 days"),
        ("daily", None, "Day PnL — Main"),
        ("weekly", None, "Week PnL — Main"),
        ("monthly", None, "Month PnL — Main"),
    ],
)
async def test_the_account_reports_can_be_scheduled(
    db: Database, report: str, period: str | None, heading: str
) -> None:
    h = BotHarness(db)
    alice = await approved_user(db, ALICE)
    config = {"report": report, **({"period": period} if period else {})}
    await _schedule(db, alice, **config)
    async with db.session(Actor.system()) as s:
        (due,) = await s.schedules.due(dt.datetime(2100, 1, 1, tzinfo=dt.UTC))
    assert await Scheduler(db, h.bot).tick(due.next_run_at + dt.timedelta(minutes=1)) == 1
    assert heading in joined(h.session.calls)


async def test_a_bad_period_or_a_cron_that_never_fires_is_refused_when_stored(
    db: Database,
) -> None:
    from dal.errors import InvalidInput

    alice = await approved_user(db, ALICE)
    async with db.session(alice) as s:
        with pytest.raises(InvalidInput, match="unknown period 'yesterday'"):
            await s.schedules.create(
                {
                    "name": "x",
                    "cron": "0 18 * * *",
                    "config": {"report": "pnl", "period": "yesterday"},
                }
            )
        with pytest.raises(InvalidInput, match="never fires"):
            await s.schedules.create(
                {"name": "y", "cron": "0 0 31 2 *", "config": {"report": "pnl"}}
            )
        assert await s.schedules.list() == []


async def test_a_restart_does_not_make_a_configured_admin_who_blocked_the_bot_reachable(
    db: Database,
) -> None:
    """Admins listed in the settings are bootstrapped at every start-up; that is no message
    from them, so a chat they blocked stays unreachable until they /start again."""
    async with db.session(Actor.system()) as s:
        (admin,) = await s.users.bootstrap_admins([8801])
        await s.users.set_reachable(admin.id, False)
        await s.users.bootstrap_admins([8801])  # the next start-up
        assert (await s.users.find_by_id(admin.id)).unreachable_at is not None
        await s.users.register(8801, "boss", chat_id=8801)  # they sent /start
        assert (await s.users.find_by_id(admin.id)).unreachable_at is None
