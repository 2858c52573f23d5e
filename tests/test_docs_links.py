"""Every relative link in README.md and docs/*.md leads to a file of the repository, and a
link to a heading (`page.md#anchor`) to a heading of that page, as GitHub names its anchors."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

from ground.config import PROJECT_DIR

PAGES = [PROJECT_DIR / "README.md", *sorted((PROJECT_DIR / "docs").glob("*.md"))]
FENCED = re.compile(r"^```.*?^```", re.DOTALL | re.MULTILINE)
LINK = re.compile(r"\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6} +(.+?) *#*$", re.MULTILINE)


def anchors(page: Path) -> set[str]:
    """GitHub's anchors: lower case, punctuation dropped (not `-` or `_`), spaces as `-`,
    and `-1`, `-2`... for a heading met again."""
    seen: dict[str, int] = {}
    found = set()
    for heading in HEADING.findall(FENCED.sub("", page.read_text())):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def relative_links(page: Path) -> list[str]:
    links = LINK.findall(FENCED.sub("", page.read_text()))
    return [link for link in links if not re.match(r"[a-z][a-z0-9+.-]*:", link)]


def test_the_anchor_rule_matches_githubs() -> None:
    page = PROJECT_DIR / "docs" / "api.md"
    assert "the-event-stream-ws-eventssincecursor" in anchors(page)
    assert "get-eventshistorysincecursorlimitn" in anchors(page)


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(PROJECT_DIR)))
def test_every_relative_link_resolves(page: Path) -> None:
    links = relative_links(page)
    assert [link for link in links if not resolves(page, link)] == []


def resolves(page: Path, link: str) -> bool:
    path, _, anchor = link.partition("#")
    target = (page.parent / unquote(path)).resolve() if path else page
    if not target.exists() or PROJECT_DIR.resolve() not in [target, *target.parents]:
        return False
    return not anchor or target.suffix != ".md" or anchor in anchors(target)


def test_the_readme_links_to_every_docs_page() -> None:
    links = {link.partition("#")[0] for link in relative_links(PROJECT_DIR / "README.md")}
    pages = {f"docs/{page.name}" for page in PAGES[1:]}
    assert pages - links == set()
