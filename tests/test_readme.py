"""The DAL example of docs/architecture.md ("DAL design") runs as written."""

from __future__ import annotations

import asyncio
import re
import textwrap
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
    assert result["equity"].by_currency["USDT"] == 10000 + 500
