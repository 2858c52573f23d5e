"""The supported Python range is stated once and agrees everywhere it is written."""

from __future__ import annotations

import re
import tomllib

from ground.config import PROJECT_DIR


def supported() -> list[tuple[int, int]]:
    project = tomllib.loads((PROJECT_DIR / "pyproject.toml").read_text())["project"]
    versions = [
        tuple(map(int, match.groups()))
        for classifier in project["classifiers"]
        if (match := re.fullmatch(r"Programming Language :: Python :: (\d+)\.(\d+)", classifier))
    ]
    return sorted(versions)  # type: ignore[arg-type]


def test_requires_python_and_classifiers_agree() -> None:
    versions = supported()
    assert versions == [(3, minor) for minor in range(versions[0][1], versions[-1][1] + 1)], "no gaps"
    project = tomllib.loads((PROJECT_DIR / "pyproject.toml").read_text())["project"]
    assert project["requires-python"] == f">={versions[0][0]}.{versions[0][1]}"


def test_the_readme_states_the_range() -> None:
    names = [f"{major}.{minor}" for major, minor in supported()]
    stated = ", ".join(names[:-1]) + f" or {names[-1]}"
    assert f"needs Python {stated}" in (PROJECT_DIR / "README.md").read_text().replace("\n", " ")
