"""The bot's charts, drawn with matplotlib into 800×400 PNGs (no display, no pyplot).

- ``cumulative_pnl_png``: realized PnL summed day by day, one line per currency (never summed
  across currencies), a grey zero line, grid, legend, title and a date axis.
- ``cumulative_pnl_per_trade_png``: the same, trade by trade (x = the trade's time), for short
  periods.
- ``equity_curve_png``: an equity line and, underneath on the same time axis, its drawdown from
  the running peak, with the largest drawdown labelled.

Sums, drawdowns and every amount written on a chart are exact decimals (``amount_label``);
floats are used only for positions. The y tick labels are the one exception: they label float
tick positions, formatted through ``amount_label`` too.

Charts are drawn on ``matplotlib.figure.Figure`` objects with an Agg canvas, never through
pyplot, whose figure manager would keep every figure. Each layout (one panel, or the equity
chart's two) has one figure per process, made on its first chart and wiped for each next one
(``_layout``): building the axes and their ticks again was a large part of a chart's time, and
no figure is left for the garbage collector. A wiped figure draws what a new one would, pixel
for pixel (a test draws both). matplotlib is imported on the first chart, not with the bot (it
costs time and memory; see docs/performance.md), and charts are drawn one at a time (matplotlib
is not thread-safe, and the figures are shared). ``render_png`` draws one in the chart process,
so the event loop is not blocked.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import multiprocessing
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from typing import TYPE_CHECKING, TypeVar, TypeVarTuple

from dal.decimals import DECIMAL_CONTEXT

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

WIDTH, HEIGHT, DPI = 800, 400, 100
PNG_LEVEL = 3  # zlib: the default 6 takes longer for a few per cent fewer bytes
LABEL_PLACES = 8  # as in the text reply (bot.text.num): at most 8 decimals, no trailing zeros
MARKERS_UP_TO = 31  # points of a line drawn with a dot on each (a month of days or less)
TITLE_CHARS = 90  # a longer title is cut with an ellipsis (about the figure's width)
INK = "#282828"
ZERO = "#969696"
RED = "#d62728"
# matplotlib's tab10 cycle without its grey (the zero line is grey).
COLOURS = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#bcbd22",
    "#17becf",
)

K = TypeVar("K", bound=dt.date)  # a day or a trade's time (datetime is a date)
Ts = TypeVarTuple("Ts")

Series = dict[str, list[tuple[dt.date, Decimal]]]

# One chart at a time: matplotlib keeps caches (fonts, text layout) shared by every figure.
_DRAWING = threading.Lock()


def _running(rows: Iterable[tuple[K, str, Decimal]]) -> dict[str, list[tuple[K, Decimal]]]:
    series: dict[str, list[tuple[K, Decimal]]] = defaultdict(list)
    running: dict[str, Decimal] = defaultdict(Decimal)
    with localcontext(DECIMAL_CONTEXT):  # the database's precision: 38 digits never round
        for at, currency, realized in rows:
            running[currency] += realized
            series[currency].append((at, running[currency]))
    return {currency: series[currency] for currency in sorted(series)}


def cumulative_series(daily: list[tuple[dt.date, str, Decimal]]) -> Series:
    """Per currency (in name order), its running total of realized PnL after each of its days,
    exact: ``daily`` is (day, currency, realized that day), sorted by day."""
    return _running(daily)


def amount_label(value: Decimal) -> str:
    """An exact amount for a label: rounded half-even to 8 decimals only if it has more, no
    trailing zeros, thousands separated (``-1,234.5``)."""
    if not value:
        return "0"
    if -value.as_tuple().exponent > LABEL_PLACES:  # type: ignore[operator]  # finite values only: the exponent is an int
        value = value.quantize(Decimal(1).scaleb(-LABEL_PLACES), rounding=ROUND_HALF_EVEN)
        if not value:  # rounds to zero: no "-0"
            return "0"
    return format(value.normalize(DECIMAL_CONTEXT), ",f")


def tick_label(position: float, _index: int | None = None) -> str:
    """A y tick's label: its float position to 12 significant digits (dropping the float noise
    of ``0.1 * 3``), then as ``amount_label`` writes amounts."""
    return amount_label(Decimal(format(position, ".12g")))


def _drawdowns(
    equity: list[tuple[dt.date, Decimal]],
) -> tuple[list[Decimal], Decimal, Decimal, int, int]:
    """Each point's fall from the running peak (≤ 0), then the largest fall: its amount, the
    fraction of its peak, and the indexes of that peak and trough (the earliest trough of the
    largest fall; 0 and 0 if nothing falls)."""
    falls: list[Decimal] = []
    worst, worst_peak, peak_at, trough_at = Decimal(0), Decimal(0), 0, 0
    peak, peak_index = Decimal(0), 0
    with localcontext(DECIMAL_CONTEXT):
        for i, (_, value) in enumerate(equity):
            if not i or value > peak:
                peak, peak_index = value, i
            fall = peak - value
            falls.append(-fall)
            if fall > worst:
                worst, worst_peak, peak_at, trough_at = fall, peak, peak_index, i
        fraction = worst / worst_peak if worst and worst_peak > 0 else Decimal(0)
    return falls, worst, fraction, peak_at, trough_at


def max_drawdown(equity: list[tuple[dt.date, Decimal]]) -> tuple[Decimal, Decimal]:
    """The largest fall from a running peak to a later (or the same) point, exact: (amount ≥ 0,
    the fraction of that peak it lost; 0 when the peak is ≤ 0). Of equal falls, the earliest
    trough's. ``equity`` is sorted by day; an empty or never-falling one gives (0, 0)."""
    _, amount, fraction, _, _ = _drawdowns(equity)
    return amount, fraction


# --- drawing ---------------------------------------------------------------------------------


def _fit(text: str) -> str:
    return text if len(text) <= TITLE_CHARS else text[: TITLE_CHARS - 1] + "…"


def _new_figure() -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # Fixed margins, wide enough for 8-decimal amount labels: the automatic layout engines
    # measure every label first and cost a third of a chart.
    fig = Figure(figsize=(WIDTH / DPI, HEIGHT / DPI), dpi=DPI)
    fig.subplots_adjust(left=0.15, right=0.98, top=0.9, bottom=0.1, hspace=0.08)
    FigureCanvasAgg(fig)
    return fig


# The figure of each layout and its axes, reused chart after chart (only under _DRAWING).
_LAYOUTS: dict[str, tuple[Figure, tuple[Axes, ...]]] = {}


def _layout(kind: str) -> tuple[Figure, tuple[Axes, ...]]:
    """The figure and axes of ``kind`` ("cumulative": one panel; "equity": two, sharing the
    time axis), styled, with nothing drawn on them."""
    made = _LAYOUTS.get(kind)
    if made is not None:
        for ax in made[1]:
            _wipe(ax)
        return made
    fig = _new_figure()
    if kind == "equity":
        grid = fig.subplots(2, 1, sharex=True, height_ratios=[2.2, 1], squeeze=False)
        axes: tuple[Axes, ...] = tuple(grid[:, 0])
    else:
        axes = (fig.add_subplot(),)
    for ax in axes:
        _style(ax)
    _LAYOUTS[kind] = (fig, axes)
    return fig, axes


def _wipe(ax: Axes) -> None:
    """Back to what ``_layout`` made: the last chart's lines, fills, texts and legend removed,
    titles and labels empty, the x axis's ticks, margin and both limits as a new Axes has
    them, nothing scaled yet. The styling and the tick objects stay (they are the saving)."""
    import matplotlib as mpl
    from matplotlib.ticker import AutoLocator, ScalarFormatter

    for artist in (*ax.lines, *ax.collections, *ax.texts):
        artist.remove()
    if ax.legend_ is not None:
        ax.legend_.remove()
    ax.set_title("", loc="left")
    ax.set_xlabel("")
    ax.set_ylabel("")
    ax.xaxis.set_major_locator(AutoLocator())
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.relim()
    ax.set_xmargin(mpl.rcParams["axes.xmargin"])
    ax.set_xlim(0, 1)  # after the margin, which would ask for autoscaling
    ax.set_ylim(0, 1)
    ax.set_autoscale_on(True)


def _png(fig: Figure) -> bytes:
    """The figure drawn by Agg, written by Pillow as an RGB PNG (the figure is opaque: the
    alpha channel says nothing) at a fast zlib level. What ``savefig`` would write, pixel for
    pixel, in less time and fewer bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from PIL import Image

    canvas = fig.canvas
    assert isinstance(canvas, FigureCanvasAgg)  # _new_figure's
    canvas.draw()  # type: ignore[no-untyped-call]  # backend_agg has no type stub
    size = canvas.get_width_height(physical=True)
    pixels = canvas.buffer_rgba()  # type: ignore[no-untyped-call]  # likewise
    rgba = Image.frombuffer("RGBA", size, pixels, "raw", "RGBA", 0, 1)
    buffer = io.BytesIO()
    rgba.convert("RGB").save(buffer, format="png", compress_level=PNG_LEVEL)
    return buffer.getvalue()


def _drawn(build: Callable[[], Figure]) -> bytes:
    """The PNG of the figure ``build`` draws, one chart at a time."""
    with _DRAWING:
        return _png(build())


def _style(ax: Axes) -> None:
    from matplotlib.ticker import FuncFormatter

    ax.grid(True, color="#e0e0e0", linewidth=0.8)
    ax.set_axisbelow(True)
    ax.tick_params(labelsize=8, colors=INK)
    ax.yaxis.set_major_formatter(FuncFormatter(tick_label))


def _date_axis(ax: Axes, first: dt.date, last: dt.date, tz: dt.tzinfo | None) -> None:
    """Readable date ticks; a single instant is padded a day (an hour for times) each side so it
    is a visible point in the middle of the axis, not squeezed between two labels."""
    import matplotlib.dates as mdates

    timed = isinstance(first, dt.datetime)
    locator: mdates.DateLocator
    if timed or (last - first).days > 10:
        locator = mdates.AutoDateLocator(tz=tz, minticks=3, maxticks=8)
    else:  # a week or so: one tick a day, never hours
        locator = mdates.DayLocator(tz=tz)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz=tz, show_offset=False))
    if first == last:
        pad = dt.timedelta(hours=1) if timed else dt.timedelta(days=1)
        ax.set_xlim(mdates.date2num(first - pad), mdates.date2num(last + pad))
    else:
        ax.margins(x=0.03)
    if isinstance(first, dt.datetime) and isinstance(last, dt.datetime):
        shown = (first.astimezone(tz), last.astimezone(tz)) if tz else (first, last)
        span = [f"{t:%Y-%m-%d %H:%M}" for t in shown]
    else:
        span = [first.isoformat(), last.isoformat()]
    ax.set_xlabel(span[0] if span[0] == span[1] else f"{span[0]} – {span[1]}", fontsize=8)


def _x(points: list[tuple[K, Decimal]]) -> list[float]:
    import matplotlib.dates as mdates

    return [float(x) for x in mdates.date2num([at for at, _ in points])]


def _annotate_extremes(ax: Axes, points: list[tuple[K, Decimal]], colour: str) -> None:
    """The exact highest, lowest and last amounts of a line, written at their points."""
    values = [value for _, value in points]
    high = values.index(max(values))
    low = values.index(min(values))
    last = len(values) - 1
    xs = _x(points)
    span = xs[-1] - xs[0]
    for i in dict.fromkeys((last, high, low)):  # each point once, the last first
        if i != last and values[i] == values[last]:
            continue  # the same amount is written once
        below = i == low and i != high
        where = (xs[i] - xs[0]) / span if span else 0.5  # 0 at the first point, 1 at the last
        align = "left" if where < 0.3 else "right" if where > 0.7 else "center"
        ax.annotate(
            amount_label(values[i]),
            xy=(xs[i], float(values[i])),
            xytext=(0, -6 if below else 6),
            textcoords="offset points",
            ha=align,
            va="top" if below else "bottom",
            fontsize=8,
            color=colour,
            parse_math=False,
        )


def _amount_limits(ax: Axes, values: list[Decimal], zero: bool) -> None:
    """y limits around the values (and zero, if ``zero``), with room for the labels."""
    low, high = min(values), max(values)
    if zero:
        low, high = min(low, Decimal(0)), max(high, Decimal(0))
    span = float(high - low)
    pad = span * 0.15 if span else max(abs(float(high)) * 0.1, 1.0)
    ax.set_ylim(float(low) - pad, float(high) + pad)


def _legend(ax: Axes) -> None:
    legend = ax.legend(loc="upper left", fontsize=8, frameon=False)
    for text in legend.get_texts():
        text.set_parse_math(False)  # currency names are data, not TeX


def _cumulative_figure(
    series: dict[str, list[tuple[K, Decimal]]], title: str, tz: dt.tzinfo | None = None
) -> Figure:
    fig, (ax,) = _layout("cumulative")
    ax.set_title(_fit(title), fontsize=12, color=INK, loc="left", y=1.0, parse_math=False)
    ax.axhline(0, color=ZERO, linewidth=1, zorder=1)
    ax.set_ylabel("cumulative realized PnL", fontsize=8)
    if not series:
        ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", fontsize=10)
        return fig
    timed = isinstance(next(iter(series.values()))[0][0], dt.datetime)
    for i, (currency, points) in enumerate(series.items()):
        colour = COLOURS[i % len(COLOURS)]
        ax.plot(
            _x(points),
            [float(value) for _, value in points],
            color=colour,
            linewidth=1.8,
            drawstyle="steps-post" if timed else "default",  # a trade changes it at once
            marker="o" if len(points) <= MARKERS_UP_TO else "",
            markersize=4 if len(points) > 1 else 7,
            label=currency,
            zorder=3,
        )
        _annotate_extremes(ax, points, colour)
    _amount_limits(ax, [v for points in series.values() for _, v in points], zero=True)
    at = [a for points in series.values() for a, _ in points]
    _date_axis(ax, min(at), max(at), tz)
    _legend(ax)
    return fig


def _pnl_figure(daily: list[tuple[dt.date, str, Decimal]], title: str) -> Figure:
    return _cumulative_figure(cumulative_series(daily), title)


def _per_trade_figure(points: list[tuple[dt.datetime, str, Decimal]], title: str) -> Figure:
    ordered = sorted(points, key=lambda point: point[0])  # stable: same-time trades keep order
    tz = ordered[0][0].tzinfo if ordered else None
    return _cumulative_figure(_running(ordered), title, tz)


def _equity_figure(series: list[tuple[dt.date, Decimal]], currency: str, title: str) -> Figure:
    fig, (top, bottom) = _layout("equity")
    top.set_title(_fit(title), fontsize=12, color=INK, loc="left", y=1.0, parse_math=False)
    if not series:
        top.text(0.5, 0.5, "no data", transform=top.transAxes, ha="center", fontsize=10)
        return fig
    falls, worst, fraction, peak_at, trough_at = _drawdowns(series)
    xs = _x(series)
    markers = len(series) <= MARKERS_UP_TO
    top.plot(
        xs,
        [float(value) for _, value in series],
        color=COLOURS[0],
        linewidth=1.8,
        marker="o" if markers else "",
        markersize=4 if len(series) > 1 else 7,
        label=f"equity ({currency})",
        zorder=3,
    )
    _annotate_extremes(top, series, COLOURS[0])
    _amount_limits(top, [value for _, value in series], zero=False)
    _legend(top)

    floats = [float(fall) for fall in falls]
    bottom.fill_between(xs, floats, 0.0, color=RED, alpha=0.3, linewidth=0)
    bottom.plot(xs, floats, color=RED, linewidth=1.2, marker="o" if markers else "", markersize=3)
    bottom.axhline(0, color=ZERO, linewidth=1, zorder=1)
    bottom.set_ylabel("drawdown", fontsize=8)
    _amount_limits(bottom, falls, zero=True)
    label = f"max drawdown {amount_label(-worst)} {currency}"
    if worst:
        with localcontext(DECIMAL_CONTEXT):  # up to 41 digits (a fall of 1e20 from 1e-18)
            percent = (fraction * 100).quantize(Decimal("0.01"), rounding=ROUND_HALF_EVEN)
        label += f" ({percent:,f}%)" if fraction else ""
        ends = (peak_at, trough_at)  # the peak and the trough of the largest fall
        top.plot(
            [xs[i] for i in ends],
            [float(series[i][1]) for i in ends],
            linestyle="",
            marker="o",
            markersize=6,
            color=RED,
            zorder=4,
        )
        bottom.plot([xs[trough_at]], [floats[trough_at]], "o", markersize=5, color=RED)
    # Written on the side away from the trough, at the bottom of the panel.
    right = trough_at < len(series) / 2
    bottom.text(
        0.99 if right else 0.01,
        0.08,
        label,
        transform=bottom.transAxes,
        ha="right" if right else "left",
        va="bottom",
        fontsize=8,
        color=RED,
        bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1},
        parse_math=False,
    )
    _date_axis(bottom, series[0][0], series[-1][0], None)
    return fig


# --- the PNGs ---------------------------------------------------------------------------------


def cumulative_pnl_png(daily: list[tuple[dt.date, str, Decimal]], title: str) -> bytes:
    """One line per currency: realized PnL summed day by day (never across currencies).
    ``daily`` is (day, currency, realized that day), sorted by day."""
    return _drawn(lambda: _pnl_figure(daily, title))


def cumulative_pnl_per_trade_png(
    points: list[tuple[dt.datetime, str, Decimal]], title: str
) -> bytes:
    """One line per currency: realized PnL summed trade by trade, at each trade's time (shown
    in the time zone of the first point's time). For short periods."""
    return _drawn(lambda: _per_trade_figure(points, title))


def equity_curve_png(series: list[tuple[dt.date, Decimal]], currency: str, title: str) -> bytes:
    """The equity line of one currency and, underneath, its drawdown from the running peak with
    the largest drawdown labelled exactly. ``series`` is (day, equity), sorted by day."""
    return _drawn(lambda: _equity_figure(series, currency, title))


_POOL: ProcessPoolExecutor | None = None


def _chart_process() -> ProcessPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
    return _POOL


async def render_png(fn: Callable[[*Ts], bytes], *args: *Ts) -> bytes:
    """``fn(*args)`` (one of the chart functions above) in the chart process, started on the
    first chart. A chart takes a tenth of a second and more; in a thread of the bot's own
    process it would hold the interpreter lock in long stretches (the event loop stalled up
    to 100 ms) and matplotlib would add its 50 MB to the bot. A chart process that died is
    started again."""
    global _POOL
    loop = asyncio.get_running_loop()
    try:
        return await loop.run_in_executor(_chart_process(), fn, *args)
    except BrokenProcessPool:
        _POOL = None
        return await loop.run_in_executor(_chart_process(), fn, *args)
