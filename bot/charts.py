"""The cumulative realized-PnL chart (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import datetime as dt
import io
from collections import defaultdict
from decimal import Decimal


def cumulative_pnl_png(daily: list[tuple[dt.date, str, Decimal]], title: str) -> bytes:
    """One line per currency: realized PnL summed day by day (never across currencies)."""
    import matplotlib  # imported on first use: it costs a second at start-up

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, tuple[list[dt.date], list[float]]] = defaultdict(lambda: ([], []))
    running: dict[str, Decimal] = defaultdict(Decimal)
    for day, currency, realized in daily:
        running[currency] += realized
        days, values = series[currency]
        days.append(day)
        values.append(float(running[currency]))  # plotting only: the numbers shown are exact
    fig, ax = plt.subplots(figsize=(8, 4), dpi=100)
    try:
        for currency, (days, values) in sorted(series.items()):
            ax.plot(days, values, marker="o", markersize=3, label=currency)
        ax.axhline(0, color="grey", linewidth=0.8)
        ax.set_title(title)
        ax.set_ylabel("cumulative realized PnL")
        ax.legend()
        fig.autofmt_xdate()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        return buffer.getvalue()
    finally:
        plt.close(fig)
