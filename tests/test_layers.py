"""Every import runs down the layers (DESIGN.md): `make lint` runs import-linter with
pyproject.toml's contract, which holds on this tree and fails on an upward import."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ground.config import PROJECT_DIR

LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
APP = [
    "ground",
    "eventlog",
    "extensions",
    "rooms",
    "handlers",
    "dev",
    "bench",
    "server.py",
    "workers.py",
    "pyproject.toml",
]


def lint_imports(where: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=where, capture_output=True, text=True, timeout=120
    )


def app_copy(tmp_path: Path) -> Path:
    ignore = shutil.ignore_patterns("__pycache__", "node_modules", "*.lua", "*.mjs", "*.json", "*.md")
    for name in APP:
        source = PROJECT_DIR / name
        if source.is_dir():
            shutil.copytree(source, tmp_path / name, ignore=ignore)
        else:
            shutil.copy(source, tmp_path / name)
    return tmp_path


def test_the_tree_keeps_the_layers() -> None:
    result = lint_imports(PROJECT_DIR)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "upward", "broken"),
    [
        ("ground/errors.py", "import handlers.support.origins", "ground is not allowed to import handlers"),
        (
            "rooms/livekit.py",
            "from handlers.support.base import Handler",
            "rooms is not allowed to import handlers",
        ),
        ("extensions/app.py", "import rooms.livekit", "extensions is not allowed to import rooms"),
        ("handlers/token.py", "import server", "handlers is not allowed to import server"),
        ("handlers/pages.py", "import workers", "handlers is not allowed to import workers"),
    ],
)
def test_an_upward_import_fails_the_lint(tmp_path: Path, module: str, upward: str, broken: str) -> None:
    copy = app_copy(tmp_path)
    assert lint_imports(copy).returncode == 0  # the copy as it is keeps them
    path = copy / module
    path.write_text(path.read_text() + f"\n{upward}  # an import that runs up\n")
    result = lint_imports(copy)
    assert result.returncode != 0
    assert broken in result.stdout
