"""Every link and image of README.md and docs/ resolves to a file of the repository (and a heading, for #anchors)."""

import glob
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = glob.glob(os.path.join(ROOT, "docs", "**", "*.md"), recursive=True)
PAGES = sorted(["README.md", *(os.path.relpath(p, ROOT) for p in DOCS)])
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")  # [text](target) and ![alt](target)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped (letters, digits, '-', '_' and spaces kept),
    spaces -> '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: str) -> set:
    text = re.sub(r"```.*?```", "", open(path, encoding="utf-8").read(), flags=re.S)  # no headings inside code blocks
    return {slug(m) for m in re.findall(r"^#+\s+(.*)$", text, flags=re.M)}


def test_slug_follows_github():
    assert slug("Choosing β (`--sparse-scale`)") == "choosing-β---sparse-scale"
    assert slug("Bugs of the original, fixed by default") == "bugs-of-the-original-fixed-by-default"


@pytest.mark.parametrize("page", PAGES)
def test_links_resolve(page):
    text = re.sub(r"```.*?```", "", open(os.path.join(ROOT, page), encoding="utf-8").read(), flags=re.S)
    bad = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+://", target):  # external pages are not checked
            continue
        path, _, anchor = target.partition("#")
        file = os.path.normpath(os.path.join(ROOT, os.path.dirname(page), path)) if path else os.path.join(ROOT, page)
        if not os.path.exists(file) or not file.startswith(ROOT):
            bad.append(f"{target}: no such file")
        elif anchor and file.endswith(".md") and anchor not in anchors(file):
            bad.append(f"{target}: no such heading")
    assert not bad, f"{page}: {bad}"
