"""Every ``# type: ignore`` in the application says which error it silences and why."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("dal", "bot", "strategies", "trading", "tradebook")
IGNORE = re.compile(r"#\s*type:\s*ignore(?P<code>\[[a-z0-9,-]+\])?(?P<rest>.*)$")


def test_each_type_ignore_carries_its_code_and_a_reason() -> None:
    bare = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for number, line in enumerate(path.read_text().splitlines(), 1):
                match = IGNORE.search(line)
                if match and not (match["code"] and match["rest"].strip().startswith("#")):
                    bare.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not bare, "\n".join(bare)
