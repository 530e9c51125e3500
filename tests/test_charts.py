"""The charts (matplotlib): valid 800×400 PNGs, exact sums and exact amounts in every label, one
line a currency, a single day drawn as a visible point, the drawdown, and rendering off the
event loop.

The texts are read from the Figure the chart function builds (``_pnl_figure`` and its kind),
after it is saved as the public functions save it: tick labels only exist once drawn."""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
import io
import os
import signal
import subprocess
import sys
import time
from decimal import Decimal, localcontext
from pathlib import Path
from zoneinfo import ZoneInfo

import matplotlib.dates as mdates
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from matplotlib.collections import PolyCollection
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.text import Annotation, Text
from PIL import Image

from bot.charts import (
    _LAYOUTS,
    COLOURS,
    RED,
    _equity_figure,
    _per_trade_figure,
    _png,
    _pnl_figure,
    amount_label,
    cumulative_pnl_per_trade_png,
    cumulative_pnl_png,
    cumulative_series,
    equity_curve_png,
    max_drawdown,
    render_png,
    tick_label,
)
from dal.decimals import DECIMAL_CONTEXT

ROOT = Path(__file__).resolve().parent.parent
D0 = dt.date(2024, 3, 1)


def day(i: int) -> dt.date:
    return D0 + dt.timedelta(days=i)


def rgb(colour: str) -> tuple[int, int, int]:
    r, g, b = (round(c * 255) for c in to_rgb(colour))
    return r, g, b


def open_png(data: bytes) -> Image.Image:
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    Image.open(io.BytesIO(data)).verify()  # checks the chunks and their CRCs
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    assert image.size == (800, 400)
    return image.convert("RGB")


def pixels_of(image: Image.Image, colour: str) -> list[tuple[int, int]]:
    """Where ``colour`` is drawn exactly (the solid middle of lines and markers), as (x, y)."""
    ys, xs = np.nonzero((np.asarray(image) == rgb(colour)).all(axis=2))
    return [(int(x), int(y)) for x, y in zip(xs, ys, strict=True)]


def drawn(fig: Figure) -> tuple[Image.Image, list[str]]:
    """The figure saved as the chart functions save it, and every text then on it."""
    image = open_png(_png(fig))
    return image, [t.get_text() for t in fig.findobj(Text)]


def annotated(fig: Figure) -> list[str]:
    return [a.get_text() for a in fig.findobj(Annotation)]


def lines(fig: Figure) -> dict[str, Line2D]:
    """The data lines by legend label (the zero line and markers have no label)."""
    return {
        str(line.get_label()): line
        for line in fig.axes[0].get_lines()
        if not str(line.get_label()).startswith("_")
    }


def ydata(line: Line2D) -> list[float]:
    return [float(y) for y in np.asarray(line.get_ydata(), dtype=float)]


# --- series and labels --------------------------------------------------------------------------


def test_cumulative_series_is_exact_and_per_currency() -> None:
    daily = [
        (day(0), "USDT", Decimal("0.1")),
        (day(0), "EUR", Decimal("-5")),
        (day(1), "USDT", Decimal("0.2")),
        (day(2), "EUR", Decimal("2.50")),
        (day(2), "USDT", Decimal("-0.3")),
    ]
    assert cumulative_series(daily) == {
        "EUR": [(day(0), Decimal("-5")), (day(2), Decimal("-2.50"))],
        "USDT": [(day(0), Decimal("0.1")), (day(1), Decimal("0.3")), (day(2), Decimal("0.0"))],
    }
    assert list(cumulative_series(daily)) == ["EUR", "USDT"]  # legend and colour order


def test_cumulative_series_keeps_all_38_digits() -> None:
    # 38 significant digits: the default decimal context (28) would round this sum.
    big, tiny = Decimal("12345678901234567890"), Decimal("0.000000000000000001")
    points = cumulative_series([(day(0), "BTC", big), (day(1), "BTC", tiny)])["BTC"]
    assert points[-1][1] == Decimal("12345678901234567890.000000000000000001")


def test_amount_label() -> None:
    assert amount_label(Decimal("1234.50")) == "1,234.5"
    assert amount_label(Decimal("-1234567.125")) == "-1,234,567.125"
    assert amount_label(Decimal("1E+2")) == "100"
    assert amount_label(Decimal("0.00")) == "0"
    assert amount_label(Decimal("0.123456785")) == "0.12345678"  # half-even to 8 places
    assert amount_label(Decimal("-0.000000001")) == "0"  # never "-0"


def test_tick_label_drops_float_noise() -> None:
    assert tick_label(0.1 * 3) == "0.3"  # 0.30000000000000004
    assert tick_label(1500.0000000000002) == "1,500"
    assert tick_label(123456789.1 * 3) == "370,370,367.3"  # 370370367.29999995
    assert tick_label(-2.5) == "-2.5"
    assert tick_label(-0.0) == "0"
    assert tick_label(1e20) == "100,000,000,000,000,000,000"
    assert tick_label(0.00000001) == "0.00000001"


# --- the daily chart ----------------------------------------------------------------------------


def test_png_800x400_with_exact_labels() -> None:
    daily = [(day(i), "USDT", Decimal("0.1") if i % 2 else Decimal("0.2")) for i in range(10)]
    fig = _pnl_figure(daily, "main: 7d")
    image, texts = drawn(fig)
    assert "main: 7d" in texts and "USDT" in texts
    # 5 × 0.2 + 5 × 0.1 summed exactly (as floats: 1.5000000000000002); the lowest is day 1.
    assert sorted(annotated(fig)) == ["0.2", "1.5"]
    assert "2024-03-01 – 2024-03-10" in texts
    assert "0" in texts  # the zero line's tick
    assert not [t for t in texts if "0000" in t or "e-" in t]  # no float noise anywhere
    assert ydata(lines(fig)["USDT"])[-1] == 1.5
    assert len(pixels_of(image, COLOURS[0])) > 200  # the line, in its colour
    # The public function draws the same chart.
    open_png(cumulative_pnl_png(daily, "main: 7d"))


def test_two_currencies_two_lines_never_summed_together() -> None:
    daily = sorted(
        [(day(i), "USDT", Decimal(i % 7 - 3)) for i in range(60)]
        + [(day(i), "EUR", Decimal("1.25")) for i in range(0, 60, 2)]
    )
    fig = _pnl_figure(daily, "two")
    image, _ = drawn(fig)
    by_currency = lines(fig)
    assert list(by_currency) == ["EUR", "USDT"]
    assert ydata(by_currency["EUR"]) == [1.25 * (i + 1) for i in range(30)]
    usdt = cumulative_series(daily)["USDT"]
    assert ydata(by_currency["USDT"]) == [float(v) for _, v in usdt]
    assert by_currency["EUR"].get_color() != by_currency["USDT"].get_color()
    assert "37.5" in annotated(fig)  # EUR's last, exact
    assert pixels_of(image, COLOURS[0]) and pixels_of(image, COLOURS[1])
    assert not pixels_of(image, COLOURS[2])


def test_single_day_is_a_visible_point_in_the_middle() -> None:
    fig = _pnl_figure([(D0, "USDT", Decimal("-10.5"))], "alice: today")
    image, texts = drawn(fig)
    line = lines(fig)["USDT"]
    assert line.get_marker() == "o" and float(line.get_markersize()) >= 5
    left, right = fig.axes[0].get_xlim()
    x = float(mdates.date2num(D0))
    assert (left, right) == pytest.approx((x - 1, x + 1))  # a day each side, no more
    assert "-10.5" in annotated(fig) and "2024-03-01" in texts
    dots = pixels_of(image, COLOURS[0])
    marker = [(px, py) for px, py in dots if py > 100]  # below the legend's sample line
    assert len(marker) >= 20
    middle = sum(px for px, _ in marker) / len(marker)
    axes_box = fig.axes[0].get_window_extent()
    assert abs(middle - (axes_box.x0 + axes_box.x1) / 2) < 10


def test_all_zero_keeps_zero_in_view() -> None:
    fig = _pnl_figure([(day(i), "USDT", Decimal("0.00")) for i in range(5)], "flat")
    _, texts = drawn(fig)
    low, high = fig.axes[0].get_ylim()
    assert low < 0 < high
    assert "0" in texts and annotated(fig) == ["0"]


def test_negative_and_many_days() -> None:
    daily = sorted(
        (day(i), currency, Decimal(i % 13) / 4 - Decimal(3))
        for i in range(1000)
        for currency in ("BTC", "EUR", "USDT")
    )
    fig = _pnl_figure(daily, "3 years")
    image, texts = drawn(fig)
    lowest = min(v for points in cumulative_series(daily).values() for _, v in points)
    assert lowest < 0 and amount_label(lowest) in annotated(fig)
    assert all(line.get_marker() in ("", "None", None) for line in lines(fig).values())
    assert fig.axes[0].get_ylim()[1] > 0  # zero is always in view
    assert f"{day(0)} – {day(999)}" in texts
    assert all(pixels_of(image, colour) for colour in COLOURS[:3])


def test_titles_are_plain_text_and_cut_when_long() -> None:
    # Names are data, not TeX: read as mathtext, these would fail to draw (unknown symbol).
    title, currency = r"alice $\nosuch$: 7d", r"$\nosuch$"
    fig = _pnl_figure([(D0, currency, Decimal(1))], title)
    _, texts = drawn(fig)
    assert title in texts and currency in texts
    _, texts = drawn(_equity_figure([(D0, Decimal(1))], currency, title))
    assert title in texts and rf"equity ({currency})" in texts
    long = "p" * 200
    _, texts = drawn(_pnl_figure([(D0, "USDT", Decimal(1))], long))
    (cut,) = [t for t in texts if t.startswith("ppp")]
    assert cut.endswith("…") and len(cut) < 100


def test_no_data_still_a_png() -> None:
    open_png(cumulative_pnl_png([], "empty"))
    open_png(cumulative_pnl_per_trade_png([], "empty"))
    open_png(equity_curve_png([], "USDT", "empty"))


def figures_alive() -> int:
    gc.collect()
    return sum(isinstance(o, Figure) for o in gc.get_objects())


def test_a_figure_per_layout_is_reused_and_none_accumulates() -> None:
    one = [(D0, "USDT", Decimal(1))]
    at = dt.datetime(2024, 3, 1, 12, 0, tzinfo=dt.UTC)
    assert _pnl_figure(one, "t") is _per_trade_figure([(at, "USDT", Decimal(1))], "t")
    assert _equity_figure(EQUITY, "USDT", "t") is _equity_figure([], "USDT", "t")
    alive = figures_alive()
    for _ in range(5):
        equity_curve_png(EQUITY, "USDT", "t")
        cumulative_pnl_png(one, "t")
    assert figures_alive() == alive


def test_a_reused_figure_draws_what_a_new_one_would() -> None:
    at = dt.datetime(2024, 3, 1, 8, 0, tzinfo=ZoneInfo("Europe/Berlin"))
    trades = [(at + dt.timedelta(minutes=7 * i), "USDT", Decimal(i % 5 - 2)) for i in range(30)]
    days = [(day(i), "USDT", Decimal(i % 7 - 3)) for i in range(60)]
    charts = [
        lambda: equity_curve_png(EQUITY, "USDT", "six days"),
        lambda: equity_curve_png([], "USDT", "no data"),
        lambda: equity_curve_png([(D0, Decimal("983.7"))], "EUR", "one day"),
        lambda: cumulative_pnl_png(days + [(day(i), "EUR", Decimal(1)) for i in range(3)], "2"),
        lambda: cumulative_pnl_png([(D0, "USDT", Decimal("-10.5"))], "one day"),
        lambda: cumulative_pnl_png([], "no data"),
        lambda: cumulative_pnl_per_trade_png(trades, "per trade"),
        lambda: cumulative_pnl_per_trade_png(trades[:1], "one trade"),
    ]
    new = []
    for draw in charts:
        _LAYOUTS.clear()  # the next chart makes its figure
        new.append(draw())
    for draw, png in [
        *zip(charts, new, strict=True),
        *reversed(list(zip(charts, new, strict=True))),
    ]:
        assert draw() == png  # the same bytes, drawn after any other chart


def test_import_is_lazy_and_pyplot_unused() -> None:
    code = "import sys, bot.charts; assert 'matplotlib' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)
    # Nor did the charts drawn in this process import pyplot, whose figure manager would keep
    # every figure alive.
    assert "matplotlib.figure" in sys.modules and "matplotlib.pyplot" not in sys.modules


# --- per trade ----------------------------------------------------------------------------------


def test_per_trade_exact_running_sums_in_time_order() -> None:
    t0 = dt.datetime(2024, 3, 1, 8, 0, tzinfo=dt.UTC)
    points = [
        (t0 + dt.timedelta(minutes=30), "USDT", Decimal("0.2")),
        (t0, "USDT", Decimal("0.1")),  # out of order: summed in time order
        (t0 + dt.timedelta(minutes=45), "BTC", Decimal("-0.00000001")),
        (t0 + dt.timedelta(hours=2), "USDT", Decimal("-0.05")),
    ]
    berlin = [(t.astimezone(ZoneInfo("Europe/Berlin")), c, v) for t, c, v in points]
    fig = _per_trade_figure(berlin, "today")
    image, texts = drawn(fig)
    usdt = lines(fig)["USDT"]
    assert ydata(usdt) == [0.1, 0.3, 0.25]  # the exact sums (floats: 0.1 + 0.2 != 0.3)...
    assert {"0.3", "0.25", "0.1", "-0.00000001"} <= set(annotated(fig))  # ...exact labels
    assert usdt.get_drawstyle() == "steps-post"
    assert "2024-03-01 09:00 – 2024-03-01 11:00" in texts  # shown in the points' zone
    assert pixels_of(image, COLOURS[0]) and pixels_of(image, COLOURS[1])


def test_per_trade_single_trade_is_padded() -> None:
    at = dt.datetime(2024, 3, 1, 12, 0, tzinfo=dt.UTC)
    fig = _per_trade_figure([(at, "USDT", Decimal("3.5"))], "one")
    drawn(fig)
    left, right = fig.axes[0].get_xlim()
    x = float(mdates.date2num(at))
    assert (left, right) == pytest.approx((x - 1 / 24, x + 1 / 24))  # an hour each side
    assert lines(fig)["USDT"].get_marker() == "o"


# --- drawdown and the equity curve --------------------------------------------------------------


def test_max_drawdown_examples() -> None:
    def dd(*values: str) -> tuple[Decimal, Decimal]:
        return max_drawdown([(day(i), Decimal(v)) for i, v in enumerate(values)])

    assert dd() == (0, 0)
    assert dd("5") == (0, 0)
    assert dd("1", "2", "3") == (0, 0)
    assert dd("100", "120", "90", "130", "65") == (Decimal(65), Decimal("0.5"))
    assert dd("-10", "-20") == (Decimal(10), 0)  # a peak ≤ 0 has no fraction
    assert dd("10", "5", "20", "15") == (Decimal(5), Decimal("0.5"))  # a tie: the earliest
    amount, fraction = dd("0.3", "0.1", "0.2")
    assert amount == Decimal("0.2")
    with localcontext(DECIMAL_CONTEXT):
        assert fraction == Decimal("0.2") / Decimal("0.3")


def brute_force_drawdown(values: list[Decimal]) -> tuple[Decimal, Decimal]:
    """Every pair (peak i, trough j ≥ i); of equal falls the earliest trough's."""
    amount, peak = Decimal(0), Decimal(0)
    with localcontext(DECIMAL_CONTEXT):
        for j in range(len(values)):
            for i in range(j + 1):
                if values[i] - values[j] > amount:
                    amount, peak = values[i] - values[j], values[i]
        return amount, (amount / peak if amount and peak > 0 else Decimal(0))


amounts = st.decimals(
    min_value=-(10**9), max_value=10**9, places=6, allow_nan=False, allow_infinity=False
)


@settings(max_examples=200, deadline=None)
@given(st.lists(amounts | st.integers(-3, 3).map(Decimal), max_size=40))  # small ones tie
def test_max_drawdown_matches_brute_force(values: list[Decimal]) -> None:
    got = max_drawdown([(day(i), v) for i, v in enumerate(values)])
    assert got == brute_force_drawdown(values)
    assert got[0] >= 0


EQUITY = [(day(i), Decimal(v)) for i, v in enumerate(["1000", "1200.10", "1100.05", "1300.2"])]
EQUITY += [(day(4), Decimal("1000.1")), (day(5), Decimal("1250"))]


def test_equity_curve_two_panels_and_the_exact_drawdown() -> None:
    fig = _equity_figure(EQUITY, "USDT", "alice: 6d")
    image, texts = drawn(fig)
    top, bottom = fig.axes
    assert top.get_shared_x_axes().joined(top, bottom)
    assert top.get_position().y0 > bottom.get_position().y1  # equity above, drawdown below
    assert "max drawdown -300.1 USDT (23.08%)" in texts  # 300.1 / 1300.2
    with localcontext(DECIMAL_CONTEXT):
        assert max_drawdown(EQUITY) == (Decimal("300.1"), Decimal("300.1") / Decimal("1300.2"))
    (falls,) = [line for line in bottom.get_lines() if len(ydata(line)) == 6]
    assert ydata(falls) == [0.0, 0.0, -100.05, 0.0, -300.1, -50.2]
    (area,) = [c for c in bottom.collections if isinstance(c, PolyCollection)]
    assert tuple(np.asarray(area.get_facecolor())[0, :3]) == pytest.approx(to_rgb(RED))
    assert {"1,300.2", "1,000", "1,250"} <= set(annotated(fig))
    assert "alice: 6d" in texts and "equity (USDT)" in texts
    assert len(pixels_of(image, RED)) > 50  # the drawdown line and the peak/trough marks


def test_equity_single_day_and_no_drawdown() -> None:
    fig = _equity_figure([(D0, Decimal("983.7"))], "EUR", "one day")
    _, texts = drawn(fig)
    assert "max drawdown 0 EUR" in texts and "983.7" in annotated(fig)
    left, right = fig.axes[0].get_xlim()
    x = float(mdates.date2num(D0))
    assert (left, right) == pytest.approx((x - 1, x + 1))
    assert fig.axes[0].get_lines()[0].get_marker() == "o"


# --- off the event loop -------------------------------------------------------------------------


def _pid_after(delay: float) -> bytes:
    time.sleep(delay)
    return str(os.getpid()).encode()


async def test_render_png_draws_in_the_chart_process_and_the_loop_runs_on() -> None:
    ticks = 0

    async def heartbeat() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.005)
            ticks += 1

    await render_png(_pid_after, 0)  # the chart process starts on the first chart
    beat = asyncio.create_task(heartbeat())
    try:
        worker = int(await render_png(_pid_after, 0.1))
    finally:
        beat.cancel()
    assert worker != os.getpid()
    assert ticks >= 5  # the loop kept running while the chart process worked
    os.kill(worker, signal.SIGKILL)  # a chart process that dies is started again
    assert int(await render_png(_pid_after, 0)) not in (worker, os.getpid())

    at = dt.datetime(2024, 3, 1, 12, tzinfo=dt.UTC)
    equity, trades = await asyncio.gather(  # two at once: drawn one after the other
        render_png(equity_curve_png, EQUITY, "USDT", "t"),
        render_png(cumulative_pnl_per_trade_png, [(at, "USDT", Decimal(1))], "t"),
    )
    open_png(equity)
    open_png(trades)
