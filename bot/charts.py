"""The cumulative realized-PnL chart, drawn with Pillow (no display, no matplotlib).

An 800×400 PNG: one line per currency of its running sum of realized PnL day by day (never
summed across currencies), a grey zero line, the title, a legend, the exact min/max amounts on
the y axis and the first/last day on the x axis. Sums and labels are exact decimals; floats
are used only for pixel coordinates. The PNG is paletted (one byte a pixel, fixed palette) and
lightly compressed: encoding is most of a chart's cost.
"""

from __future__ import annotations

import datetime as dt
import functools
import io
from collections import defaultdict
from decimal import ROUND_HALF_EVEN, Decimal, localcontext

from PIL import Image, ImageDraw, ImageFont

from dal.decimals import DECIMAL_CONTEXT

WIDTH, HEIGHT = 800, 400
LABEL_PLACES = 8  # as in the text reply (bot.text.num): at most 8 decimals, no trailing zeros
MARKERS_UP_TO = 31  # days of a series drawn with a dot on each point (a month or less)
BACKGROUND = (255, 255, 255)
INK = (40, 40, 40)
FRAME = (200, 200, 200)
ZERO = (150, 150, 150)
# matplotlib's tab10 cycle without its grey (the zero line is grey).
COLOURS = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (188, 189, 34),
    (23, 190, 207),
)
EXACT = (BACKGROUND, INK, FRAME, ZERO, *COLOURS)  # every colour drawn, kept exact in the PNG
SHADES = 8  # per colour, blends with the background: the anti-aliased edges of the text


def _palette() -> Image.Image:
    """The PNG's fixed palette: the exact colours first, then their blends with the background.

    Pillow maps a pixel to the entry nearest to the low corner of its 4×4×4 colour cell (ties
    to the lower index), so a blend nearer to an exact colour's corner than the colour itself
    would take its pixels: such blends are left out (tests/test_charts.py checks the round trip).
    """
    corners = [(colour, tuple(c & ~3 for c in colour)) for colour in EXACT]

    def d2(a: tuple[int, ...], b: tuple[int, ...]) -> int:
        return sum((x - y) ** 2 for x, y in zip(a, b, strict=True))

    entries = list(EXACT)
    for colour in EXACT[1:]:
        for step in range(1, SHADES):
            pairs = zip(colour, BACKGROUND, strict=True)
            r, g, b = (round(bg + (c - bg) * step / SHADES) for c, bg in pairs)
            blend = (r, g, b)
            if all(d2(blend, corner) > d2(exact, corner) for exact, corner in corners):
                entries.append(blend)
    palette = Image.new("P", (1, 1))
    palette.putpalette([c for entry in entries for c in entry])
    return palette


PALETTE = _palette()

Series = dict[str, list[tuple[dt.date, Decimal]]]


def cumulative_series(daily: list[tuple[dt.date, str, Decimal]]) -> Series:
    """Per currency (in name order), its running total of realized PnL after each of its days,
    exact: ``daily`` is (day, currency, realized that day), sorted by day."""
    series: dict[str, list[tuple[dt.date, Decimal]]] = defaultdict(list)
    running: dict[str, Decimal] = defaultdict(Decimal)
    with localcontext(DECIMAL_CONTEXT):  # the database's precision: 38 digits never round
        for day, currency, realized in daily:
            running[currency] += realized
            series[currency].append((day, running[currency]))
    return {currency: series[currency] for currency in sorted(series)}


def amount_label(value: Decimal) -> str:
    """An exact amount for an axis label: rounded half-even to 8 decimals only if it has more,
    no trailing zeros, thousands separated (``-1,234.5``)."""
    if not value:
        return "0"
    if -value.as_tuple().exponent > LABEL_PLACES:  # type: ignore[operator]  # finite values only: the exponent is an int
        value = value.quantize(Decimal(1).scaleb(-LABEL_PLACES), rounding=ROUND_HALF_EVEN)
        if not value:  # rounds to zero: no "-0"
            return "0"
    return format(value.normalize(DECIMAL_CONTEXT), ",f")


Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


@functools.cache
def _font(size: int) -> Font:
    return ImageFont.load_default(size=size)


def _fit(draw: ImageDraw.ImageDraw, text: str, font: Font, room: float) -> str:
    """``text``, cut with an ellipsis if wider than ``room`` pixels."""
    if draw.textlength(text, font=font) <= room:
        return text
    while text and draw.textlength(text + "…", font=font) > room:
        text = text[:-1]
    return text + "…"


def cumulative_pnl_png(daily: list[tuple[dt.date, str, Decimal]], title: str) -> bytes:
    """One line per currency: realized PnL summed day by day (never across currencies)."""
    series = cumulative_series(daily)
    image = Image.new("RGB", (WIDTH, HEIGHT), BACKGROUND)
    draw = ImageDraw.Draw(image)
    small, big = _font(12), _font(15)

    values = [v for points in series.values() for _, v in points]
    low = min([Decimal(0), *values])  # the zero line is always in view
    high = max([Decimal(0), *values])
    days = [day for points in series.values() for day, _ in points]
    first, last = (min(days), max(days)) if days else (dt.date.today(), dt.date.today())

    y_labels = [amount_label(high)] if high == low else [amount_label(high), amount_label(low)]
    label_width = max(draw.textlength(text, font=small) for text in y_labels)
    left = int(12 + label_width + 8)
    right, top, bottom = WIDTH - 16, 40, HEIGHT - 30
    pad = 6  # keeps the extremes off the frame

    # Legend (top right, each currency in its line colour), then the title in the room left.
    legend_x = right
    legend: list[tuple[int, str, tuple[int, int, int]]] = []
    for i, currency in reversed(list(enumerate(series))):
        legend_x -= int(draw.textlength(currency, font=small)) + 32
        legend.append((legend_x, currency, COLOURS[i % len(COLOURS)]))
    for x, text, colour in legend:
        draw.line([(x, 19), (x + 14, 19)], fill=colour, width=3)
        draw.text((x + 18, 19), text, fill=colour, font=small, anchor="lm")
    title_room = max(legend_x - left - 2, 40)
    draw.text((left, 19), _fit(draw, title, big, title_room), fill=INK, font=big, anchor="lm")

    draw.rectangle([left, top, right, bottom], outline=FRAME)
    span_days = (last - first).days
    span_value = high - low

    def to_x(day: dt.date) -> float:
        if not span_days:
            return (left + right) / 2
        return left + pad + (day - first).days / span_days * (right - left - 2 * pad)

    y_scale = (bottom - top - 2 * pad) / float(span_value) if span_value else 0.0

    def to_y(value: Decimal) -> float:
        if not span_value:
            return (top + bottom) / 2
        return bottom - pad - float(value - low) * y_scale

    zero_y = to_y(Decimal(0))
    draw.line([(left + 1, zero_y), (right - 1, zero_y)], fill=ZERO, width=1)

    if high == low:
        draw.text((left - 8, zero_y), y_labels[0], fill=INK, font=small, anchor="rm")
    else:
        high_y, low_y = to_y(high), to_y(low)
        draw.text((left - 8, high_y), y_labels[0], fill=INK, font=small, anchor="rm")
        draw.text((left - 8, low_y), y_labels[1], fill=INK, font=small, anchor="rm")
        if high_y + 16 < zero_y < low_y - 16:  # zero between the extremes, clear of their labels
            draw.text((left - 8, zero_y), "0", fill=INK, font=small, anchor="rm")
    if days:
        anchor = "lt" if last != first else "mt"  # one day: under its (centred) point
        draw.text((to_x(first), bottom + 8), first.isoformat(), fill=INK, font=small, anchor=anchor)
        if last != first:
            draw.text((to_x(last), bottom + 8), last.isoformat(), fill=INK, font=small, anchor="rt")

    for i, points in enumerate(series.values()):
        colour = COLOURS[i % len(COLOURS)]
        xy = [(to_x(day), to_y(value)) for day, value in points]
        if len(xy) > 1:
            draw.line(xy, fill=colour, width=2, joint="curve")
        if len(xy) <= MARKERS_UP_TO:
            for px, py in xy:
                draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=colour)

    # Encoding dominates the cost: paletted (exact for every colour drawn, blends for the text
    # edges) and lightly compressed, several times cheaper than RGB at the same level.
    paletted = image.quantize(palette=PALETTE, dither=Image.Dither.NONE)
    buffer = io.BytesIO()
    paletted.save(buffer, format="PNG", optimize=False, compress_level=1)
    return buffer.getvalue()
