"""The documentation stays in step with the code and with itself.

The README's command list, /help and the menu registered with set_my_commands all list exactly
the commands of bot/commands.py (and every one of them has a handler); every relative link in
the README, docs/ and bench/README.md, and every mention of a docs page anywhere in the
repository, points at a file (and heading) that exists; nothing in the docs points outside the
repository.
"""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import pytest
from aiogram import Bot
from aiogram.filters import Command
from aiogram.types import BotCommand

from bot.app import announce_commands, build_dispatcher
from bot.commands import COMMANDS, bot_commands, help_text
from dal.database import Database

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
MARKDOWN = [README, *DOCS, ROOT / "bench" / "README.md"]
SKIP_DIRS = {".git", ".venv", "var", "build", "node_modules", "__pycache__", "results"}
SOURCE_SUFFIXES = {".py", ".yml", ".yaml", ".toml", ".ini", ".md"}
SOURCE_NAMES = {"Dockerfile", "Makefile", ".env.example", "run"}

USER_COMMANDS = {c.name for c in COMMANDS if not c.admin}
ADMIN_COMMANDS = {c.name for c in COMMANDS if c.admin}


# --- markdown helpers -------------------------------------------------------------------------
FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.M | re.S)
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1", re.S)
LINK = re.compile(r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$", re.M)


def without_code(text: str) -> str:
    """The text with fenced blocks and inline code spans blanked out."""
    text = FENCE.sub("", text)
    return INLINE_CODE.sub("", text)


def section(text: str, heading: str) -> str:
    """The lines under ``heading`` up to the next heading of the same or a higher level."""
    level = len(heading) - len(heading.lstrip("#"))
    lines = text.splitlines()
    start = lines.index(heading) + 1
    out = []
    for line in lines[start:]:
        match = re.match(r"^(#+)\s", line)
        if match and len(match.group(1)) <= level:
            break
        out.append(line)
    return "\n".join(out)


def first_cell_commands(table_text: str) -> list[str]:
    """The commands named in the first cell of every row of the tables in ``table_text``."""
    names = []
    for line in table_text.splitlines():
        if not line.startswith("|") or set(line) <= set("|-: "):
            continue
        cell = re.split(r"(?<!\\)\|", line)[1]
        names += re.findall(r"`/([a-z_]+)", cell)
    return names


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for _, title in HEADING.findall(FENCE.sub("", path.read_text(encoding="utf-8"))):
        base = slug(title)
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def repository_files() -> list[Path]:
    out = []
    for path in ROOT.rglob("*"):
        rel = path.relative_to(ROOT)
        if any(part in SKIP_DIRS or part.endswith(".egg-info") for part in rel.parts[:-1]):
            continue
        if any(part.startswith(".") and part not in (".ci",) for part in rel.parts[:-1]):
            continue
        if path.is_file() and (path.suffix in SOURCE_SUFFIXES or path.name in SOURCE_NAMES):
            out.append(path)
    return sorted(out)


# --- commands ---------------------------------------------------------------------------------
def test_readme_lists_exactly_the_commands() -> None:
    text = section(README.read_text(encoding="utf-8"), "## Bot commands")
    user_part, _, admin_part = text.partition("### Admin commands")
    user, admin = first_cell_commands(user_part), first_cell_commands(admin_part)
    assert set(user) == USER_COMMANDS, (
        f"missing {sorted(USER_COMMANDS - set(user))}, unknown {sorted(set(user) - USER_COMMANDS)}"
    )
    assert set(admin) == ADMIN_COMMANDS, (
        f"missing {sorted(ADMIN_COMMANDS - set(admin))}, "
        f"unknown {sorted(set(admin) - ADMIN_COMMANDS)}"
    )


def _help_names(is_admin: bool) -> list[str]:
    text = re.sub(r"<[^>]+>", "", help_text(is_admin))
    return [m.group(1) for m in re.finditer(r"^/([a-z_]+)", text, re.M)]


def test_help_lists_exactly_the_commands() -> None:
    user = _help_names(is_admin=False)
    assert sorted(user) == sorted(USER_COMMANDS)
    every = _help_names(is_admin=True)
    assert sorted(every) == sorted(USER_COMMANDS | ADMIN_COMMANDS)


async def test_set_my_commands_registers_exactly_the_user_commands() -> None:
    class FakeBot:
        def __init__(self) -> None:
            self.registered: list[BotCommand] = []

        async def set_my_commands(self, commands: list[BotCommand], **kwargs: Any) -> bool:
            self.registered = list(commands)
            return True

    bot = FakeBot()
    await announce_commands(cast(Bot, bot))
    names = [c.command for c in bot.registered]
    assert sorted(names) == sorted(USER_COMMANDS)
    assert [c.command for c in bot_commands()] == names


async def test_every_command_has_a_handler(tmp_path: Path) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'never-opened.db'}")
    try:
        dp = build_dispatcher(db)
        handled: set[str] = set()

        def walk(router: Any) -> None:
            for handler in router.message.handlers:
                for flt in handler.filters or []:
                    if isinstance(flt.callback, Command):
                        for cmd in flt.callback.commands:
                            if isinstance(cmd, str):
                                handled.add(cmd)
                            elif isinstance(cmd, BotCommand):
                                handled.add(cmd.command)
                            else:  # a pattern: no single name, so it shows up as a mismatch
                                handled.add(f"pattern {cmd.pattern}")
            for sub in router.sub_routers:
                walk(sub)

        walk(dp)
    finally:
        await db.dispose()
    assert handled == USER_COMMANDS | ADMIN_COMMANDS


def test_readme_command_parser() -> None:
    table = "\n".join(
        [
            "| command | what |",
            "|---|---|",
            "| `/buy`, `/sell SYMBOL [tif=GTC\\|IOC]` | an order, see `/orders` |",
            "| `/alert add …` / `position …`; `on\\|off ID` | alerts |",
        ]
    )
    assert first_cell_commands(table) == ["buy", "sell", "alert"]


# --- links ------------------------------------------------------------------------------------
def _link_problems(path: Path) -> list[str]:
    problems = []
    for target in LINK.findall(without_code(path.read_text(encoding="utf-8"))):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):
            problems.append(f"{target}: points outside the repository")
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.is_relative_to(ROOT):
            problems.append(f"{target}: points outside the repository")
        elif not dest.exists():
            problems.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            problems.append(f"{target}: no heading #{anchor} in {dest.relative_to(ROOT)}")
    return problems


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_point_at_existing_files_and_headings(path: Path) -> None:
    assert path.exists()
    assert _link_problems(path) == []


def test_docs_folder_has_the_expected_pages() -> None:
    expected = {
        "architecture.md",
        "accounts.md",
        "position-rules.md",
        "risk-rules.md",
        "schema.md",
        "operations.md",
        "decisions.md",
        "performance.md",
    }
    assert expected <= {p.name for p in DOCS}


def test_every_docs_page_mentioned_anywhere_exists() -> None:
    mention = re.compile(r"(?<![\w./-])docs/[\w./-]+?\.md\b")
    missing = []
    for path in repository_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        for found in mention.findall(text):
            if not (ROOT / found).is_file():
                missing.append(f"{path.relative_to(ROOT)}: {found}")
    assert missing == []


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_docs_do_not_point_outside_the_repository(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    for outside in ("../shared", "shared/notes", "design.md", "the seed"):
        assert outside not in text, f"{path.relative_to(ROOT)} mentions {outside!r}"


def test_link_checker_finds_broken_links(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    (tmp_path / "a.md").write_text("# A\n\n## Part two\n", encoding="utf-8")
    doc = tmp_path / "b.md"
    doc.write_text(
        "[ok](a.md) [ok](a.md#part-two) [ok](#b) `[code](nope.md)`\n"
        "[gone](nope.md) [bad anchor](a.md#part-three) [web](https://example.org) [up](../x.md)\n"
        "```\n[fenced](nope.md)\n```\n# B\n",
        encoding="utf-8",
    )
    assert _link_problems(doc) == [
        "nope.md: no such file",
        "a.md#part-three: no heading #part-three in a.md",
        "https://example.org: points outside the repository",
        "../x.md: points outside the repository",
    ]


def test_slugs_follow_github() -> None:
    assert slug("A fill's path") == "a-fills-path"
    assert slug("A first session (console mode)") == "a-first-session-console-mode"
    assert slug("How a transaction executes, and why") == "how-a-transaction-executes-and-why"
    assert slug("1. Fill ingestion (`bench/ingest.py`)") == "1-fill-ingestion-benchingestpy"


# --- other documented facts -------------------------------------------------------------------
def test_every_setting_is_documented() -> None:
    example = (ROOT / ".env.example").read_text(encoding="utf-8")
    names = re.findall(r"^([A-Z][A-Z0-9_]+)=", example, re.M)
    documented = README.read_text(encoding="utf-8") + (ROOT / "docs" / "operations.md").read_text(
        encoding="utf-8"
    )
    assert names
    assert [n for n in names if f"`{n}`" not in documented] == []


def test_position_rules_example_is_what_the_code_does() -> None:
    from dal.position_math import replay

    text = section((ROOT / "docs" / "position-rules.md").read_text(encoding="utf-8"), "## Example")
    rows = [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in text.splitlines()
        if line.startswith("| ") and not line.startswith("| fill")
    ]
    assert rows
    fills: list[tuple[str, Decimal, Decimal, dt.datetime | None]] = []
    for row in rows:
        side, qty, _, price = row[0].split()
        fills.append((side, Decimal(qty), Decimal(price), None))
    for row, result in zip(rows, replay(fills), strict=True):
        quantity, cost_basis, avg_price, realized = row[1:]
        assert result.state.quantity == Decimal(quantity.replace("−", "-"))
        assert result.state.cost_basis == Decimal(cost_basis)
        assert result.state.avg_price == Decimal(avg_price)
        assert result.realized == Decimal(realized.split("=")[-1])
