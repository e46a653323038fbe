"""The installed package: one import namespace, `presence_ha`.

The repository keeps its top-level folders (`server/`, `client/`, `db/`, `migrations/`,
`loadtest/`), but an installed presence-ha must not put packages named `server` or
`db` into site-packages, where they would shadow another project's. The wheel is
built from this checkout with pip, installed into a directory of its own, and run
from outside the repository.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOP_LEVEL_FOLDERS = ("server", "client", "db", "migrations", "loadtest")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # Built from a copy: setuptools writes build/ and an egg-info into the source tree.
    source = tmp_path_factory.mktemp("source") / "presence-ha"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", "__pycache__",
                                                                "data", "reports", "tests"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(out), str(source)],
                   check=True, timeout=300, capture_output=True)
    (found,) = out.glob("presence_ha-*.whl")
    return found


def test_the_wheel_holds_one_top_level_package(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names} == {"presence_ha", wheel.name.split("-py")[0] + ".dist-info"}
    for folder in TOP_LEVEL_FOLDERS:
        assert f"presence_ha/{folder}/__init__.py" in names
    assert "presence_ha/migrations/alembic.ini" in names
    assert "presence_ha/migrations/versions/0001_initial.py" in names
    for asset in ("index.html", "admin.js", "admin.css"):  # the admin page's files (server.net.admin_page)
        assert f"presence_ha/server/net/admin_static/{asset}" in names


def test_every_package_folder_is_installed(wheel: Path) -> None:
    """A new sub-package that pyproject.toml does not list would be missing from the wheel."""
    names = set(zipfile.ZipFile(wheel).namelist())
    for folder in TOP_LEVEL_FOLDERS:
        for init in (ROOT / folder).rglob("__init__.py"):
            assert f"presence_ha/{init.relative_to(ROOT)}" in names, f"{init.parent} is not installed"


def test_installed_outside_the_repository(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--target", str(target), str(wheel)],
                   check=True, timeout=300, capture_output=True)
    # The dependencies come from this venv's site-packages, presence_ha from the target only
    # (-S: no .pth files, so the checkout's editable install is not on the path).
    deps = [p for p in sys.path if p.endswith("site-packages")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), *deps]), "PYTHONSAFEPATH": "1"}
    run = lambda code: subprocess.run([sys.executable, "-S", "-c", code], cwd=tmp_path, env=env,  # noqa: E731
                                      capture_output=True, text=True, timeout=60)
    for name in TOP_LEVEL_FOLDERS:
        assert "ModuleNotFoundError" in run(f"import {name}").stderr, f"`import {name}` works outside the repo"
    where = run("import presence_ha.server.node as n; print(n.__file__)")
    assert where.returncode == 0, where.stderr
    assert where.stdout.startswith(str(target))
    helped = run("from presence_ha.server.cli import main; main(['--help'])")
    assert "presence-ha" in helped.stdout, helped.stderr
    head = run("from presence_ha.db import schema; print(schema.head_revision())")
    assert head.returncode == 0 and head.stdout.strip(), head.stderr
