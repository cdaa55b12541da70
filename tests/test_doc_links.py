"""The README and docs/ link to files that exist (issue 21): every relative markdown link
``[text](path)`` or ``![alt](path)`` in README.md and docs/**/*.md points to a file or folder
that exists relative to the linking file; the README stays a short guide; every picture under
docs/results is linked from some markdown file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README_MAX_LINES = 260

# [text](target) and ![alt](target); the target ends at whitespace or ')' (an optional
# "title" after a space is ignored). Code spans and fenced blocks are removed first.
LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^[ \t]*(```|~~~).*?^[ \t]*\1[^\n]*$", re.S | re.M)
CODE_SPAN = re.compile(r"`[^`\n]*`")
EXTERNAL = re.compile(r"^(?:[a-zA-Z][a-zA-Z0-9+.-]*:|//)")  # http:, https:, mailto:, s3:, //host


def markdown_files(root: Path) -> list[Path]:
    files = [root / "README.md"] if (root / "README.md").is_file() else []
    docs = root / "docs"
    if docs.is_dir():
        files += sorted(docs.rglob("*.md"))
    return files


def links(text: str) -> list[str]:
    text = FENCE.sub("", text)
    text = CODE_SPAN.sub("", text)
    return LINK.findall(text)


def broken_links(root: Path) -> list[str]:
    """'file: target' for every relative link whose target does not exist."""
    bad = []
    for md in markdown_files(root):
        for target in links(md.read_text(encoding="utf-8")):
            if EXTERNAL.match(target) or target.startswith("#"):
                continue
            path = target.split("#", 1)[0].split("?", 1)[0]
            if not path:
                continue
            if not (md.parent / path).exists():
                bad.append(f"{md.relative_to(root)}: {target}")
    return bad


def unlinked_pictures(root: Path) -> list[str]:
    results = root / "docs" / "results"
    pictures = sorted(results.rglob("*.png")) if results.is_dir() else []
    linked = set()
    for md in markdown_files(root):
        for target in links(md.read_text(encoding="utf-8")):
            if EXTERNAL.match(target) or target.startswith("#"):
                continue
            linked.add((md.parent / target.split("#", 1)[0]).resolve())
    return [str(p.relative_to(root)) for p in pictures if p.resolve() not in linked]


def test_links_parse():
    text = (
        'see [a](docs/a.md), ![fig](results/x.png "title"), [web](https://x.org), '
        "[mail](mailto:a@b), [here](#anchor), [frag](b.md#sec) and `[code](nope.md)`\n"
        "```\n[fenced](nope2.md)\n```\n"
    )
    assert links(text) == ["docs/a.md", "results/x.png", "https://x.org", "mailto:a@b", "#anchor", "b.md#sec"]


def test_relative_links_point_to_existing_files():
    bad = broken_links(ROOT)
    assert not bad, "broken relative links:\n" + "\n".join(bad)


def test_readme_is_a_short_guide():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines (at most {README_MAX_LINES})"


def test_every_results_picture_is_linked():
    unlinked = unlinked_pictures(ROOT)
    assert not unlinked, "PNGs under docs/results linked from no markdown file: " + ", ".join(unlinked)


def _copy_docs(tmp_path: Path) -> Path:
    """README.md and docs/ copied, every other top-level entry linked (k8s/, configs/, …)."""
    copy = tmp_path / "repo"
    copy.mkdir()
    for entry in ROOT.iterdir():
        if entry.name not in ("README.md", "docs"):
            (copy / entry.name).symlink_to(entry)
    (copy / "README.md").write_bytes((ROOT / "README.md").read_bytes())
    for f in (ROOT / "docs").rglob("*"):
        if f.is_file():
            dest = copy / f.relative_to(ROOT)
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(f.read_bytes())
    return copy


@pytest.mark.parametrize("breakage", ["missing file", "unlinked picture"])
def test_the_checks_can_fail(tmp_path, breakage):
    copy = _copy_docs(tmp_path)
    if breakage == "missing file":
        before = broken_links(copy)
        md = copy / "docs" / "results" / "README.md"
        md.write_text(md.read_text(encoding="utf-8") + "\nSee [gone](no-such-study.md#x).\n", encoding="utf-8")
        assert set(broken_links(copy)) - set(before) == {"docs/results/README.md: no-such-study.md#x"}
    else:
        before = unlinked_pictures(copy)
        (copy / "docs" / "results" / "orphan.png").write_bytes(b"\x89PNG\r\n\x1a\n")
        assert set(unlinked_pictures(copy)) - set(before) == {"docs/results/orphan.png"}
