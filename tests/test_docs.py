"""The manual: the README stays a short front page, its links and the docs pages' links resolve in the
repository, and every page of docs/ is reachable from the site's toctree.

The Sphinx build itself (``make docs``: ``-W --keep-going -n``, so a warning or a broken cross-reference
fails) runs in ``.ci/run`` before the tests; these checks are the fast, dependency-free part of it that also
covers how the pages read on the repository host (GitHub-style heading anchors).
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"
MAX_README_LINES = 300

_FENCE = re.compile(r"^\s*(```|~~~|:::)")
_CODE_SPAN = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def pages() -> list[Path]:
    return sorted(DOCS.glob("*.md"))


def prose_lines(text: str) -> list[str]:
    """The lines of a Markdown file outside fenced blocks (code, directives)."""
    out, fenced = [], None
    for line in text.splitlines():
        m = _FENCE.match(line)
        if fenced is None and m:
            fenced = m.group(1)
        elif fenced is not None and line.strip().startswith(fenced):
            fenced = None
        elif fenced is None:
            out.append(line)
    return out


def links(path: Path) -> list[str]:
    targets = []
    for line in prose_lines(path.read_text(encoding="utf-8")):
        targets += _LINK.findall(_CODE_SPAN.sub("``", line))
    return targets


def github_slug(heading: str) -> str:
    """The anchor the repository host (and MyST's ``myst_heading_anchors``) gives a heading."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    text = text.replace("`", "").replace("*", "")
    return re.sub(r"[^\w\u4e00-\u9fff\- ]", "", text.lower().replace(" ", "-"))


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in prose_lines(path.read_text(encoding="utf-8")):
        m = _HEADING.match(line)
        if m:
            slug = github_slug(m.group(2))
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def broken_links(path: Path) -> list[str]:
    broken = []
    for target in links(path):
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target):  # https:, mailto:, ...: not a file
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            broken.append(f"{target}: no such file {dest.relative_to(ROOT) if ROOT in dest.parents else dest}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading with anchor #{anchor} in {dest.relative_to(ROOT)}")
    return broken


def test_readme_is_a_front_page_of_at_most_300_lines():
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n <= MAX_README_LINES, f"README.md has {n} lines; move detail into docs/ (limit {MAX_README_LINES})"


def test_readme_links_to_every_page_of_the_manual():
    linked = {(README.parent / t.partition("#")[0]).resolve() for t in links(README)}
    missing = [p.name for p in pages() if p.resolve() not in linked]
    assert not missing, f"README.md does not link to docs pages {missing}"


@pytest.mark.parametrize("path", [README, *pages()], ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(path: Path):
    assert links(path), f"{path.relative_to(ROOT)} has no links at all: is the link pattern still right?"
    assert broken_links(path) == []


def toctree_entries(path: Path) -> list[str]:
    """The entries of the ```{toctree} blocks of one page (options and comments left out)."""
    entries, inside = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        if re.match(r"^\s*```\{toctree\}", line):
            inside = True
        elif inside and line.strip().startswith("```"):
            inside = False
        elif inside and line.strip() and not line.strip().startswith((":", "%")):
            titled = re.match(r"^.*<([^>]+)>$", line.strip())  # "Title <page>"
            entries.append(titled.group(1) if titled else line.strip())
    return entries


def test_every_docs_page_is_in_a_toctree():
    listed = set()
    for page in pages():
        for entry in toctree_entries(page):
            target = (page.parent / entry).resolve()
            if "*" not in entry:
                assert target.with_suffix(".md").exists(), f"{page.name}: toctree entry {entry!r} is no page"
            listed.add(target.with_suffix(".md"))
    orphans = [p.name for p in pages() if p.name != "index.md" and p.resolve() not in listed]
    assert not orphans, f"docs pages in no toctree (add them to docs/index.md): {orphans}"


def test_the_link_checker_finds_a_broken_link_and_a_broken_anchor(tmp_path, monkeypatch):
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    (tmp_path / "a.md").write_text("# Top\n\n## A `code` heading\n\n[ok](#a-code-heading) [file](b.md)\n"
                                   "[gone](missing.md) [bad anchor](a.md#nope) `[in code](missing2.md)`\n"
                                   "```bash\n[in a fence](missing3.md)\n```\n")
    (tmp_path / "b.md").write_text("# B\n")
    broken = broken_links(tmp_path / "a.md")
    assert len(broken) == 2 and "missing.md" in broken[0] and "#nope" in broken[1], broken
