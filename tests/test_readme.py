"""The DAL example of docs/architecture.md ("DAL design") runs as written."""

from __future__ import annotations

import asyncio
import re
import textwrap
from decimal import Decimal
from pathlib import Path

import pytest

from dal import migrations

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_DOC = ROOT / "docs" / "architecture.md"


def test_readme_dal_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    doc = EXAMPLE_DOC.read_text(encoding="utf-8")
    section = doc.split("## DAL design", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)  # type: ignore[union-attr]
    monkeypatch.chdir(tmp_path)
    migrations.upgrade("sqlite+aiosqlite:///./var/tradebook.db")
    namespace: dict = {}
    exec("async def main():\n" + textwrap.indent(code, "    ") + "\n    return locals()", namespace)
    result = asyncio.run(namespace["main"]())
    assert result["result"].replayed is False
    (position,) = result["positions"]
    assert str(position.quantity) == "0.5"
    # 10,000 USDT − 0.5 × 60,000 + (0.5 − 0.0005) BTC × 61,000
    assert result["value"].equity == 10000 - 30000 + Decimal("0.4995") * 61000
