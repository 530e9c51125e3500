"""A plain (non-editable) install carries everything tradebook needs: the migrations travel
inside the ``dal`` package, so `tradebook db upgrade` works from an installed wheel anywhere."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

UPGRADE = """
import sys
import dal
from dal import migrations
assert dal.__file__.startswith(sys.argv[1]), dal.__file__
migrations.upgrade(sys.argv[2])
print(migrations.current(sys.argv[2]))
"""


def test_an_installed_wheel_carries_and_runs_the_migrations(tmp_path: Path) -> None:
    # Built from a copy of what git tracks: a build writes build/ next to its sources.
    source = tmp_path / "source"
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.split("\0")
    for name in filter(None, tracked):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(source)],
        check=True,
        timeout=600,
        capture_output=True,
    )
    (wheel,) = dist.glob("tradebook-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    revisions = sorted(p.name for p in (ROOT / "dal/migrations/versions").glob("0*.py"))
    assert revisions and all(f"dal/migrations/versions/{name}" in names for name in revisions)
    assert {"dal/migrations/env.py", "dal/migrations/script.py.mako"} <= names
    assert {"trading/desk.py", "tradebook/app.py", "strategies/runtime.py"} <= names

    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    elsewhere = tmp_path / "elsewhere"  # no alembic.ini, no repository around
    elsewhere.mkdir()
    url = f"sqlite+aiosqlite:///{elsewhere / 'tradebook.db'}"
    env = {**os.environ, "PYTHONPATH": str(site)}
    result = subprocess.run(
        [sys.executable, "-c", UPGRADE, str(site), url],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == revisions[-1].split("_")[0]
