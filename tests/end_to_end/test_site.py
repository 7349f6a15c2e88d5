"""The documentation site's table of contents lists every page.

``mkdocs build --strict`` (in CI, with the ``docs`` extra) fails on a page under ``docs/`` that
``mkdocs.yml``'s ``nav`` leaves out, or on a nav entry whose file is missing; this test says the
same without MkDocs installed, so a new page is added to the nav when it is written.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _nav_files() -> list[str]:
    text = (REPO / "mkdocs.yml").read_text(encoding="utf-8")
    nav = text.split("\nnav:\n", 1)[1]
    nav = nav.split("\n\n", 1)[0] if "\n\n" in nav else nav
    entries = re.findall(r"^\s+- [^:\n]+:\s*(\S+\.md)\s*$", nav, re.M)
    return entries


def test_every_page_is_in_the_nav_and_every_nav_entry_exists():
    pages = sorted(p.name for p in (REPO / "docs").glob("*.md"))
    listed = _nav_files()
    assert len(listed) == len(set(listed)), f"a page listed twice: {listed}"
    missing = sorted(set(pages) - set(listed))
    assert not missing, f"add to mkdocs.yml's nav: {missing}"
    absent = sorted(set(listed) - set(pages))
    assert not absent, f"mkdocs.yml's nav lists pages that do not exist: {absent}"
    assert listed[0] == "index.md"
