"""docker-compose.yml and the Dockerfile agree with the real CLI and settings.

Images cannot be pulled here, so the files are parsed and checked: the bot's command runs real
`tradebook` subcommands, its environment names real settings, its database URL points at the
postgres service with that service's user, password and database, and the postgres service has
a healthcheck and a named volume. PyYAML is not a dependency; the compose file sticks to a
small YAML subset that the parser below reads strictly (every line must be understood).
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

from pydantic import AliasChoices
from sqlalchemy.engine import make_url

from tradebook.cli import _parser
from tradebook.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def _scalar(text: str) -> Any:
    text = text.strip()
    if text.startswith("["):
        return json.loads(text)
    if text.startswith('"'):
        return json.loads(text)
    if text.startswith("'"):
        return text[1:-1]
    return text


def parse_yaml_subset(text: str) -> Any:
    """Block mappings, block sequences (of scalars or mappings), JSON-style flow lists,
    quoted and plain scalars, full-line comments. Anything else fails the test."""
    lines: list[tuple[int, str]] = []
    for raw in text.splitlines():
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        assert "\t" not in raw, "tabs in YAML"
        lines.append((len(raw) - len(raw.lstrip(" ")), raw.strip()))
    pos = 0

    def block(indent: int) -> Any:
        nonlocal pos
        if lines[pos][1].startswith("- "):
            items = []
            while pos < len(lines) and lines[pos][0] == indent and lines[pos][1].startswith("- "):
                rest = lines[pos][1][2:]
                if re.match(r"^[\w.-]+:( |$)", rest):
                    lines[pos] = (indent + 2, rest)
                    items.append(block(indent + 2))
                else:
                    items.append(_scalar(rest))
                    pos += 1
            return items
        mapping: dict[str, Any] = {}
        while pos < len(lines) and lines[pos][0] == indent:
            key, sep, value = lines[pos][1].partition(":")
            assert sep and re.fullmatch(r"[\w.-]+", key), f"not understood: {lines[pos][1]}"
            pos += 1
            if value.strip():
                mapping[key] = _scalar(value)
            elif pos < len(lines) and lines[pos][0] > indent:
                mapping[key] = block(lines[pos][0])
            else:
                mapping[key] = None
        return mapping

    doc = block(0)
    assert pos == len(lines), f"line not understood: {lines[pos][1] if pos < len(lines) else ''}"
    return doc


SET_IN_ENV = {"POSTGRES_PASSWORD": "s3cret-from-env"}  # what the operator's .env sets


def _interpolate(value: str) -> str:
    """Compose's ${VAR:-default} with nothing set: the default; ${VAR:?error}: the value
    .env must set (compose refuses to start without it)."""
    value = re.sub(r"\$\{(\w+):\?[^}]*\}", lambda m: SET_IN_ENV[m.group(1)], value)
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value)


def _env_names() -> set[str]:
    names: set[str] = set()
    for name, info in Settings.model_fields.items():
        alias = info.validation_alias
        if alias is None:
            names.add(f"TRADEBOOK_{name.upper()}")
        else:
            assert isinstance(alias, AliasChoices), alias
            first = alias.choices[0]
            assert isinstance(first, str), first
            names.add(first)
    return names


def _tradebook_commands(command: list[str]) -> list[list[str]]:
    assert command[:2] == ["sh", "-c"], command
    steps = [shlex.split(part) for part in command[2].split("&&")]
    out = []
    for step in steps:
        if step[0] == "exec":
            step = step[1:]
        assert step[0] == "tradebook", step
        out.append(step[1:])
    return out


def test_compose_matches_the_cli_and_settings() -> None:
    compose = parse_yaml_subset((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"postgres", "bot"}

    pg = services["postgres"]
    assert pg["image"].startswith("postgres:")
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])
    volume = pg["volumes"][0].split(":")[0]
    assert volume in compose["volumes"], "postgres data must be on a named volume"
    pg_env = {k: _interpolate(v) for k, v in pg["environment"].items()}

    bot = services["bot"]
    assert bot["build"] == "."
    assert bot["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert bot["env_file"] == ".env"  # the token comes from .env, never from here
    # No weak default password: compose refuses to start until .env sets one.
    assert "${POSTGRES_PASSWORD:?" in pg["environment"]["POSTGRES_PASSWORD"]
    assert bot["healthcheck"]["test"] == ["CMD", "tradebook", "health"]
    _parser().parse_args(["health"])
    env = bot["environment"]
    assert set(env) <= _env_names(), set(env) - _env_names()
    assert "TELEGRAM_BOT_TOKEN" not in env
    url = make_url(_interpolate(env["TRADEBOOK_DATABASE_URL"]))
    assert url.drivername == "postgresql+asyncpg" and url.host == "postgres"
    assert (url.username, url.password, url.database) == (
        pg_env["POSTGRES_USER"], pg_env["POSTGRES_PASSWORD"], pg_env["POSTGRES_DB"]
    )  # fmt: skip
    values = {k.removeprefix("TRADEBOOK_").lower(): _interpolate(v) for k, v in env.items()}
    settings = Settings(**values)  # type: ignore[arg-type]  # env strings: pydantic coerces them
    assert settings.sqlite_path() is None  # really PostgreSQL

    commands = _tradebook_commands(bot["command"])
    assert commands == [["db", "upgrade"], ["run"]]  # migrate on start, then run
    for args in commands:
        _parser().parse_args(args)  # real subcommands (argparse exits on unknown ones)


def test_dockerfile_matches_the_project() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.1[1-9]", text, re.M)
    assert re.search(r"pip install -c requirements.lock \.( |$)", text, re.M)  # not editable
    for needed in ("tradebook", "dal", "bot", "strategies", "trading"):
        assert re.search(rf"^COPY .*\b{re.escape(needed)}\b", text, re.M), needed
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", text, re.M).group(1))  # type: ignore[union-attr]
    compose = parse_yaml_subset((ROOT / "docker-compose.yml").read_text())
    assert cmd == compose["services"]["bot"]["command"]
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'tradebook = "tradebook.cli:main"' in pyproject  # the `tradebook` the image runs
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".env" in ignored and ".venv" in ignored and "secrets" in ignored
