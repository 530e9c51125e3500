"""tradebook's composition root with Binance: the price feed and the gateways come from the
settings, Binance's symbols are marked by the real feed, and /status says when it is stale."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.app import build_dispatcher
from dal.database import Database
from dal.scope import Actor
from strategies.examples import REGISTRY
from tests.botkit import BotHarness, approved_user, joined
from tests.factories import Notes, wait_until
from tests.fake_binance import FakeBinance
from tradebook.app import ExchangeSettings, build_feed, build_trading, paper_config
from tradebook.settings import Settings
from trading.binance_feed import BinanceFeed


@pytest.fixture
async def fake() -> AsyncIterator[FakeBinance]:
    exchange = FakeBinance()
    await exchange.start()
    yield exchange
    await exchange.stop()


async def test_binance_market_data_and_gateways_come_from_the_settings(
    db: Database, db_url: str, fake: FakeBinance, tmp_path: Path
) -> None:
    settings = Settings(
        database_url=db_url,
        market_data="binance",
        market_symbols="BTCUSDT",  # type: ignore[arg-type]  # env text: the validator splits it
        binance_base_url=fake.url,
    )
    async with db.session(Actor.system()) as s:
        binance_btc = await s.instruments.create(
            {"symbol": "BTCUSDT", "exchange": "BINANCE", "asset_type": "CRYPTO", "currency": "USDT"}
        )
    feed = await build_feed(settings, db)
    assert isinstance(feed, BinanceFeed)
    assert [i.symbol for i in feed.instruments] == ["BTCUSDT"]
    trading = build_trading(
        db,
        Notes(),
        feed,
        REGISTRY,
        paper_config(settings),
        exchanges=ExchangeSettings(tmp_path, fake.url),
    )
    assert set(trading.desk.factories) == {"PAPER", "BINANCE"}
    assert set(trading.desk.account_checks) == {"BINANCE"}
    await trading.start(feed=False)
    try:
        paper_btc = trading.market.instrument_ids["BTCUSDT"]
        assert trading.market.also_marks == {"BTCUSDT": [binance_btc.id]}
        trading.start_feed()
        await wait_until(lambda: paper_btc in trading.market.marks.marks, 10.0)
        warm = trading.market.marks.marks[paper_btc]
        assert trading.market.marks.marks[binance_btc.id] == warm  # Binance's own, same price

        # /status tells when the feed has gone quiet.
        h = BotHarness(db)
        h.dp = build_dispatcher(db, desk=trading.desk)
        await approved_user(db, 5151)
        assert "stale" not in joined(await h.send(5151, "/status"))
        since = dt.datetime(2026, 12, 6, 12, 0, tzinfo=dt.UTC)
        feed.stale_since = since
        assert "Prices are stale since 2026-12-06 12:00 UTC" in joined(
            await h.send(5151, "/status")
        )
    finally:
        await trading.stop()


def test_the_market_data_setting_is_checked_when_read(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="TRADEBOOK_MARKET_DATA must be"):
        Settings(market_data="bloomberg")
    with pytest.raises(ValueError, match="is not a CSV file"):
        Settings(market_data=f"csv:{tmp_path / 'missing.csv'}")
    assert Settings(market_data=" Binance ").market_data == "Binance"
    assert Settings(market_symbols="btcusdt, ethusdt").market_symbols == [  # type: ignore[arg-type]  # env text
        "BTCUSDT",
        "ETHUSDT",
    ]


def test_a_bot_without_binance_never_loads_ccxt() -> None:
    """ccxt costs about 70 MB resident: imported when a Binance account or feed is used."""
    import subprocess
    import sys

    code = "import sys, tradebook.app, tradebook.cli; print('ccxt' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
