"""The trading words are defined once (dal/vocabulary.py) and everything else follows."""

from __future__ import annotations

from typing import get_args

from dal import schema
from dal import vocabulary as v


def test_each_literal_type_has_exactly_its_enums_words() -> None:
    assert get_args(v.SideName) == v.SIDES
    assert get_args(v.OrderTypeName) == v.ORDER_TYPES
    assert get_args(v.TimeInForceName) == v.TIME_IN_FORCE
    assert get_args(v.OrderStatusName) == v.ORDER_STATUSES


def test_open_and_final_statuses_split_every_status() -> None:
    assert set(v.OPEN_STATUSES) | set(v.FINAL_STATUSES) == set(v.ORDER_STATUSES)
    assert not set(v.OPEN_STATUSES) & set(v.FINAL_STATUSES)


def test_the_schema_checks_the_same_words() -> None:
    checks = {str(c.sqltext) for c in schema.orders.constraints if hasattr(c, "sqltext")}
    for column, words in (("side", v.SIDES), ("type", v.ORDER_TYPES), ("status", v.ORDER_STATUSES)):
        (check,) = [c for c in checks if c.startswith(f"{column} IN")]
        assert check == f"{column} IN ({', '.join(repr(w) for w in words)})"
