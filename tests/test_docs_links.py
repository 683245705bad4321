"""Every relative link and image in README.md and docs/*.md points at a file in the repository.

The README is a front page that sends readers into docs/ and the committed reports; a moved or renamed file
must fail here, not on a reader's click.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# [text](target) and ![alt](target); the target ends at whitespace or ")" (titles are not used here)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)


def relative_links(text: str) -> list[str]:
    """The link targets of a markdown page that name a local file (no scheme, no bare #anchor)."""
    code_free = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
    targets = [m.group(1) for m in LINK.finditer(code_free)]
    return [t for t in targets if not EXTERNAL.match(t) and not t.startswith("#")]


def test_link_parser_finds_links_and_images_but_not_urls_or_code() -> None:
    text = "see [a](docs/a.md#x) and ![fig](f.png) and [w](https://x.org)\n```\n[c](in_code.md)\n```\n[b](#top)"
    assert relative_links(text) == ["docs/a.md#x", "f.png"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    broken = []
    for target in relative_links(page.read_text()):
        path = (page.parent / target.split("#", 1)[0]).resolve()
        if not path.exists():
            broken.append(target)
    assert not broken, f"{page.relative_to(ROOT)}: broken links {broken}"


def test_readme_is_a_front_page() -> None:
    """The README stays short and keeps its two set-up commands; the long sections live in docs/."""
    text = (ROOT / "README.md").read_text()
    assert len(text.encode()) <= 12_500
    assert "make demo" in text and "make test" in text
    for doc in (
        "findings",
        "usage",
        "probe",
        "measures",
        "robustness_scores",
        "reproducibility",
        "ray",
        "testing",
        "design",
        "references",
    ):
        assert f"docs/{doc}.md" in text, doc
