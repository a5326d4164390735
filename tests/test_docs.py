"""The README stays a first screen, and every relative link in it and in docs/ leads to a file that exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import ROOT

DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: path.name)
def test_relative_links_resolve(document: Path) -> None:
    targets = [target for target in _LINK.findall(document.read_text(encoding="utf-8")) if "://" not in target]
    missing = [target for target in targets if not (document.parent / target).exists()]
    assert not missing, f"{document.name} links to missing files: {missing}"


def test_the_readme_is_a_map_not_a_manual() -> None:
    # The reference material lives in docs/; the README says what it is, the two commands, how to connect a
    # client, and where to read on. Past about two screens, that is slipping again.
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme) < 8_000
    for heading in ("make demo", "Connecting a client", "Documentation"):
        assert heading in readme
