"""The file-format references in docs/ are generated from the models that validate the files: never stale."""

from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from mcp_gateway.cli.app import app
from mcp_gateway.reference import REFERENCES, Reference, keys, render
from tests.conftest import ROOT

FIX = "regenerate it: python scripts/references.py (or mcp-gateway config reference {name} > {document})"


@pytest.mark.parametrize("reference", REFERENCES, ids=lambda reference: reference.name)
def test_the_document_in_docs_is_what_the_models_say_now(reference: Reference) -> None:
    kept = (ROOT / reference.document).read_text(encoding="utf-8")
    assert kept == render(reference), FIX.format(name=reference.name, document=reference.document)


@pytest.mark.parametrize("reference", REFERENCES, ids=lambda reference: reference.name)
def test_every_key_is_described(reference: Reference) -> None:
    undescribed = [key.path for key in keys(reference.model()) if not key.description]
    assert not undescribed, f"add a Field(description=...) (or a docstring for a section) to: {undescribed}"


@pytest.mark.parametrize("reference", REFERENCES, ids=lambda reference: reference.name)
def test_the_command_prints_the_document(reference: Reference) -> None:
    printed = CliRunner().invoke(app, ["config", "reference", reference.name], catch_exceptions=False)
    assert printed.exit_code == 0
    assert printed.stdout == render(reference)


def _paths(data: object, prefix: str = "") -> set[str]:
    found: set[str] = set()
    if isinstance(data, dict):
        for name, value in data.items():
            found |= {f"{prefix}{name}", *_paths(value, f"{prefix}{name}.")}
    elif isinstance(data, list):
        for item in data:
            found |= _paths(item, prefix.removesuffix(".") + "[].")
    return found


def _documented(reference: Reference) -> tuple[set[str], set[str]]:
    """The reference's key paths (one path per backend kind's key), and those whose value is a free-form mapping."""
    paths = {
        key.path.replace(" (type: http)", "").replace(" (type: model)", ""): key.type for key in keys(reference.model())
    }
    return set(paths), {path for path, kind in paths.items() if kind.startswith(("mapping", "object:"))}


def _undocumented(used: set[str], reference: Reference) -> set[str]:
    documented, free_form = _documented(reference)
    inside_free_form = {path for path in used if any(path.startswith(f"{parent}.") for parent in free_form)}
    return used - inside_free_form - documented


def test_every_key_the_shipped_files_use_is_in_a_reference() -> None:
    # The references cover what people actually write: each key of the example files is listed.
    config, catalog, inventory = REFERENCES
    assert not _undocumented(_paths(yaml.safe_load((ROOT / "mcp-gateway.yaml").read_text())), config)
    for name in ("internal.yaml", "partner.yaml"):
        used = _paths(yaml.safe_load((ROOT / "catalogs" / name).read_text()))
        assert not _undocumented(used, catalog), name
    assert not _undocumented(_paths(yaml.safe_load((ROOT / "catalogs" / "models.yaml").read_text())), inventory)
