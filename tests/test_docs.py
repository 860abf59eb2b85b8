"""The README and docs/ point only at files of the repository, and at headings that exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    found = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        m = re.match(r"^#{1,6}\s+(.*)$", line)
        if m:
            text = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower())
            found.add(text.replace(" ", "-"))
    return found


def relative_links(path: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)  # not in code blocks
    return [t for t in LINK.findall(text) if not re.match(r"^[a-z]+:", t)]  # http:, https:, mailto:


def test_there_are_docs_and_links():
    assert len(DOCS) >= 3 and (REPO / "docs" / "formats.md") in DOCS
    assert sum(len(relative_links(p)) for p in DOCS) >= 5


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_relative_link_resolves_in_the_repository(doc):
    for target in relative_links(doc):
        file, _, anchor = target.partition("#")
        resolved = (doc.parent / file).resolve() if file else doc
        assert resolved.is_file(), f"{doc.name}: {target} -> {resolved} is not a file of the repository"
        assert resolved.is_relative_to(REPO), f"{doc.name}: {target} points outside the repository"
        if anchor and resolved.suffix == ".md":
            assert anchor in anchors(resolved), f"{doc.name}: {target}: no heading #{anchor} in {resolved.name}"


def test_no_doc_points_at_a_file_the_repository_lacks():
    """CLI.md is the project's design contract, not a file of the repository: docs/formats.md holds the shapes."""
    for doc in DOCS:
        assert "CLI.md" not in doc.read_text(encoding="utf-8"), doc.name


def test_the_readme_lists_exactly_the_registered_architectures():
    """The README's bullet list of supported model types is the registry's (mhacli.config.ARCHITECTURES)."""
    from mhacli.config import SUPPORTED_MODEL_TYPES

    text = (REPO / "README.md").read_text(encoding="utf-8")
    marker = "Supported architectures (`model_type`)"
    assert marker in text
    after = text.split(marker, 1)[1]
    first = after.index("\n- `")
    block = after[first + 1 :].split("\n\n", 1)[0]  # the bullets, up to the next paragraph
    listed = re.findall(r"^- `([A-Za-z0-9_]+)`:", block, flags=re.M)
    assert len(listed) == len(set(listed)), f"an architecture is listed twice: {listed}"
    assert sorted(listed) == sorted(SUPPORTED_MODEL_TYPES)
