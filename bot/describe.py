"""Alerts, schedules and screeners in words, rendered from their stored config: a label kept
beside the config would go stale when the config is changed."""

from __future__ import annotations

from typing import Any


def alert_text(kind: str, config: dict[str, Any]) -> str:
    """'BTCUSDT above 70000', 'ETHUSDT unrealized_pnl below -50', 'risk leverage above 3',
    'BTCUSDT SMA 5/20 cross'."""
    c = config
    if kind == "PRICE":
        return f"{c.get('symbol')} {c.get('op')} {c.get('price')}"
    if kind == "POSITION":
        return f"{c.get('symbol')} {c.get('metric')} {c.get('op')} {c.get('value')}"
    if kind == "RISK":
        return f"risk {c.get('metric')} {c.get('op')} {c.get('value')}"
    if kind == "INDICATOR":
        return f"{c.get('symbol')} SMA {c.get('fast')}/{c.get('slow')} cross"
    return key_values_text(c)


def schedule_text(config: dict[str, Any]) -> str:
    """'report pnl today', 'report positions'."""
    period = config.get("period")
    return f"report {config.get('report')}" + (f" {period}" if period else "")


def key_values_text(config: dict[str, Any]) -> str:
    """'key=value, …' in key order (screeners, policies)."""
    return ", ".join(f"{k}={v}" for k, v in sorted(config.items()))
