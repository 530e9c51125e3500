"""Alerts and screeners that run: evaluated against the feed's marks in the bot's loop.

* PRICE and INDICATOR alerts are checked on every bar; POSITION and RISK alerts after every fill
  and at most every ``slow_every`` seconds of bars (they read positions and the cash ledger).
* An alert fires once per crossing: when its condition becomes true it sends its owner a
  message, then stays quiet while the condition holds, and re-arms when it clears. An
  INDICATOR (SMA cross) alert fires when the fast average crosses the slow one either way.
  The armed/fired state is kept in memory: after a restart an alert whose condition still
  holds fires once more. An alert that fired stays quiet for ``cooldown_s`` (the setting
  ``TRADEBOOK_ALERT_COOLDOWN_SECONDS``) whatever the feed does: an SMA cross on a noisy feed
  would otherwise fire every few seconds.
* Each alert is evaluated with its owner's data only (the owner's user-scoped DAL).
* Screeners with a ``cron`` in their config run on it (UTC) over the instruments table with the
  latest marks and report the matches to their owner.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from decimal import Decimal, localcontext
from typing import Any

from dal.configs import alert_text, next_run_after
from dal.database import Database, ScopedDal
from dal.decimals import DECIMAL_CONTEXT
from dal.scope import Actor
from dal.vocabulary import NotificationKind
from trading.desk import Notify as Notifier
from trading.desk import OrderDesk
from trading.events import FillEvent
from trading.market import Bar, MarkBook, Market

log = logging.getLogger("tradebook.alerts")


def _compare(op: str, value: Decimal, threshold: Decimal) -> bool:
    return value > threshold if op == "above" else value < threshold


class AlertEngine:
    def __init__(
        self,
        db: Database,
        market: Market,
        desk: OrderDesk,
        notify: Notifier,
        refresh_every: float = 5.0,
        slow_every: float = 5.0,
        cooldown_s: float = 300.0,
    ) -> None:
        self.db = db
        self.market = market
        self.desk = desk
        self.notify = notify
        self.refresh_every = refresh_every
        self.slow_every = slow_every
        self.cooldown_s = cooldown_s
        self.fired_at: dict[int, float] = {}  # alert id → when it last fired (monotonic)
        self.alerts: list[Any] = []
        self.screeners: list[Any] = []
        self.state: dict[int, bool] = {}  # alert id → condition at the last check
        self.next_screen: dict[int, dt.datetime] = {}
        self._loaded_at = -1e9
        self._slow_at = -1e9

    def attach(self) -> None:
        self.market.subscribe("alerts", self.on_bar)
        self.desk.fill_listeners.append(self.on_fill)

    async def refresh(self, force: bool = False) -> None:
        if not force and time.monotonic() - self._loaded_at < self.refresh_every:
            return
        async with self.db.session(Actor.system(), readonly=True) as s:
            allowed = {
                u.id for u in await s.users.list_all() if u.is_active and u.approved_at is not None
            }
            # Revoked or deactivated users' alerts and screeners are not evaluated.
            self.alerts = [
                a for a in await s.alerts.list(include_inactive=False) if a.user_id in allowed
            ]
            self.screeners = [
                x for x in await s.screeners.list(include_inactive=False) if x.user_id in allowed
            ]
        self._loaded_at = time.monotonic()

    async def on_bar(self, bar: Bar) -> None:
        await self.refresh()
        slow = time.monotonic() - self._slow_at >= self.slow_every
        if slow:
            self._slow_at = time.monotonic()
        for alert in self.alerts:
            if (
                alert.type in ("PRICE", "INDICATOR")
                and alert.config_json.get("symbol") == (bar.symbol)
            ) or (alert.type in ("POSITION", "RISK") and slow):
                await self.check(alert)
        await self.run_screeners(bar.time)

    async def on_fill(self, user_id: int, portfolio_id: int, event: FillEvent) -> None:
        await self.refresh()
        for alert in self.alerts:
            if alert.user_id == user_id and alert.type in ("POSITION", "RISK"):
                await self.check(alert)

    async def check(self, alert: Any) -> None:
        try:
            condition, text = await self.evaluate(alert)
        except Exception:  # one broken alert must not stop the others
            log.exception("alert #%s could not be evaluated", alert.id)
            return
        if condition is None:
            return
        before = self.state.get(alert.id)
        self.state[alert.id] = condition
        fire = (
            condition and not before
            if alert.type != "INDICATOR"
            else (before is not None and condition != before)
        )
        now = time.monotonic()
        if fire and now - self.fired_at.get(alert.id, -1e18) >= self.cooldown_s:
            self.fired_at[alert.id] = now
            what = alert_text(alert.type, alert.config_json)
            await self.notify(
                alert.user_id, f"Alert #{alert.id} {what}: {text}", NotificationKind.ALERTS
            )

    async def evaluate(self, alert: Any) -> tuple[bool | None, str]:
        """(condition, description) of one alert now; None when it cannot be judged yet."""
        with localcontext(DECIMAL_CONTEXT):
            return await self._evaluate(alert)

    async def _evaluate(self, alert: Any) -> tuple[bool | None, str]:
        config = alert.config_json
        marks = self.market.marks
        if alert.type == "PRICE":
            price = marks.by_symbol.get(config["symbol"])
            if price is None:
                return None, ""
            return (
                _compare(config["op"], price, Decimal(config["price"])),
                f"{config['symbol']} is {price} ({config['op']} {config['price']})",
            )
        if alert.type == "INDICATOR":
            closes = marks.closes(config["symbol"], config["slow"])
            if len(closes) < config["slow"]:
                return None, ""
            fast = sum(closes[-config["fast"] :], Decimal(0)) / config["fast"]
            slow = sum(closes, Decimal(0)) / config["slow"]
            direction = "above" if fast > slow else "below"
            return fast > slow, (
                f"SMA{config['fast']} crossed {direction} SMA{config['slow']} on {config['symbol']}"
            )
        dal = self.db.scoped(Actor.user(alert.user_id))
        portfolio = (
            await dal.portfolios.get(alert.portfolio_id)
            if alert.portfolio_id
            else await dal.portfolios.default()
        )
        if alert.type == "POSITION":
            rows = [
                p
                for p in await dal.positions.snapshot(portfolio.id, include_flat=True)
                if p.symbol == config["symbol"]
            ]
            quantity = sum((p.quantity for p in rows), Decimal(0))
            if config["metric"] == "quantity":
                value = quantity
            else:
                from dal.position_math import PositionState, unrealized_pnl

                mark = marks.by_symbol.get(config["symbol"])
                if mark is None:
                    return None, ""
                value = sum(
                    (unrealized_pnl(PositionState(p.quantity, p.cost_basis), mark) for p in rows),
                    Decimal(0),
                )
            return (
                _compare(config["op"], value, Decimal(config["value"])),
                f"{config['symbol']} {config['metric']} is {value}",
            )
        if alert.type == "RISK":
            currency = (await dal.accounts.get(portfolio.account_id)).base_currency
            snap = await dal.risk.snapshot(portfolio.id, dict(marks.marks), currency)
            if snap.equity <= 0 or snap.day_start_equity <= 0:
                return None, ""
            if config["metric"] == "daily_loss":
                value = max(Decimal(0), -snap.realized_today) / snap.day_start_equity
            else:
                exposures = [
                    abs(q) * marks.marks.get(i, Decimal(0)) for i, q in snap.positions.items()
                ]
                total = (
                    sum(exposures, Decimal(0))
                    if config["metric"] == "leverage"
                    else max(exposures, default=Decimal(0))
                )
                value = total / snap.equity
            shown = value.quantize(Decimal("0.0001"))
            return (
                _compare(config["op"], value, Decimal(config["value"])),
                f"{config['metric']} is {shown} ({config['op']} {config['value']})",
            )
        return None, ""  # SCHEDULE alerts are timed, not price-driven

    async def run_screeners(self, now: dt.datetime) -> None:
        for screener in self.screeners:
            cron = screener.config_json.get("cron")
            if not cron:
                continue
            due = self.next_screen.get(screener.id)
            if due is None:
                self.next_screen[screener.id] = next_run_after(cron, now)
                continue
            if now < due:
                continue
            self.next_screen[screener.id] = next_run_after(cron, now)
            try:
                matches = await self.screen(screener)
            except Exception:
                log.exception("screener #%s failed", screener.id)
                continue
            listing = ", ".join(f"{s} {p}" for s, p in matches) or "no matches"
            await self.notify(
                screener.user_id, f"Screener {screener.name}: {listing}", NotificationKind.ALERTS
            )

    async def screen(self, screener: Any) -> list[tuple[str, Decimal]]:
        """Instruments passing the screener's filters at the latest marks."""
        dal = self.db.scoped(Actor.user(screener.user_id))
        return await screen(dal, screener.config_json, self.market.marks)


async def screen(
    dal: ScopedDal, config: dict[str, Any], marks: MarkBook
) -> list[tuple[str, Decimal]]:
    """(symbol, price) of the instruments passing a screener's filters at ``marks``: what its
    cron run reports and what /screener run shows."""
    matches = []
    with localcontext(DECIMAL_CONTEXT):
        for inst in await dal.instruments.list(config.get("asset_type")):
            if config.get("exchange") and inst.exchange != config["exchange"].upper():
                continue
            if config.get("symbols") and inst.symbol not in config["symbols"]:
                continue
            price = marks.marks.get(inst.id)
            if price is None:
                continue
            if config.get("min_price") and price < Decimal(config["min_price"]):
                continue
            if config.get("max_price") and price > Decimal(config["max_price"]):
                continue
            if config.get("min_change_pct") is not None:
                closes = marks.closes(inst.symbol, 60)
                if len(closes) < 2 or closes[0] == 0:
                    continue
                change = (closes[-1] - closes[0]) / closes[0] * 100
                if change < Decimal(config["min_change_pct"]):
                    continue
            matches.append((inst.symbol, price))
    return matches
