"""The cumulative realized-PnL chart: a valid 800×400 PNG, exact sums and labels, one colour a
currency, and the edge cases (one day, all zero, negative, many days)."""

from __future__ import annotations

import datetime as dt
import io
from decimal import Decimal
from typing import Any

import pytest
from PIL import Image, ImageDraw

from bot.charts import (
    COLOURS,
    EXACT,
    PALETTE,
    ZERO,
    amount_label,
    cumulative_pnl_png,
    cumulative_series,
)

D0 = dt.date(2024, 3, 1)


def day(i: int) -> dt.date:
    return D0 + dt.timedelta(days=i)


def open_png(data: bytes) -> Image.Image:
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    Image.open(io.BytesIO(data)).verify()  # checks the chunks and their CRCs
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    assert image.size == (800, 400)
    return image.convert("RGB")


def colours(image: Image.Image) -> set[tuple[int, ...]]:
    counted = image.getcolors(maxcolors=800 * 400)
    assert counted is not None  # None only past maxcolors, the number of pixels
    found: set[tuple[int, ...]] = set()
    for _, colour in counted:
        assert isinstance(colour, tuple)  # an RGB image: (r, g, b)
        found.add(colour)
    return found


@pytest.fixture
def drawn_texts(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every text the chart draws (title, legend, axis labels), as passed to Pillow."""
    texts: list[str] = []
    original = ImageDraw.ImageDraw.text

    def recording(self: ImageDraw.ImageDraw, xy: Any, text: Any, *args: Any, **kw: Any) -> Any:
        texts.append(text)
        return original(self, xy, text, *args, **kw)

    monkeypatch.setattr(ImageDraw.ImageDraw, "text", recording)
    return texts


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


def test_png_800x400_with_exact_labels(drawn_texts: list[str]) -> None:
    daily = [(day(i), "USDT", Decimal("0.1") if i % 2 else Decimal("0.2")) for i in range(10)]
    image = open_png(cumulative_pnl_png(daily, "main: 7d"))
    assert "main: 7d" in drawn_texts and "USDT" in drawn_texts
    # 5 × 0.2 + 5 × 0.1 summed exactly (as floats it would be 1.5000000000000002).
    assert "1.5" in drawn_texts and "0" in drawn_texts  # max and min (zero) labels
    assert "2024-03-01" in drawn_texts and "2024-03-10" in drawn_texts
    assert {(255, 255, 255), COLOURS[0]} <= colours(image)


def test_two_currencies_two_colours() -> None:
    daily = sorted(
        [(day(i), "USDT", Decimal(i % 7 - 3)) for i in range(60)]
        + [(day(i), "EUR", Decimal("1.25")) for i in range(0, 60, 2)]
    )
    seen = colours(open_png(cumulative_pnl_png(daily, "two")))
    assert COLOURS[0] in seen and COLOURS[1] in seen and ZERO in seen
    assert COLOURS[2] not in seen


def test_single_day(drawn_texts: list[str]) -> None:
    image = open_png(cumulative_pnl_png([(D0, "USDT", Decimal("-10.5"))], "alice: today"))
    assert COLOURS[0] in colours(image)  # the one point is drawn
    assert "-10.5" in drawn_texts and "2024-03-01" in drawn_texts


def test_all_zero(drawn_texts: list[str]) -> None:
    daily = [(day(i), "USDT", Decimal("0.00")) for i in range(5)]
    image = open_png(cumulative_pnl_png(daily, "flat"))
    assert COLOURS[0] in colours(image)
    assert "0" in drawn_texts


def test_negative_and_many_days(drawn_texts: list[str]) -> None:
    daily = sorted(
        (day(i), currency, Decimal(i % 13) / 4 - Decimal(3))
        for i in range(1000)
        for currency in ("BTC", "EUR", "USDT")
    )
    image = open_png(cumulative_pnl_png(daily, "3 years"))
    assert set(COLOURS[:3]) <= colours(image)
    lowest = min(v for points in cumulative_series(daily).values() for _, v in points)
    assert lowest < 0 and amount_label(lowest) in drawn_texts
    assert "0" in drawn_texts  # the top of the axis: zero is always in view
    assert day(999).isoformat() in drawn_texts


def test_palette_keeps_every_drawn_colour_exact() -> None:
    strip = Image.new("RGB", (len(EXACT), 1))
    for x, colour in enumerate(EXACT):
        strip.putpixel((x, 0), colour)
    back = strip.quantize(palette=PALETTE, dither=Image.Dither.NONE).convert("RGB")
    assert [back.getpixel((x, 0)) for x in range(len(EXACT))] == list(EXACT)
