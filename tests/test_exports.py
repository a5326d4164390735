"""The public surface: every module's ``__all__``, subpackages included, is pinned in tests/vectors/exports.json.

A change to what a module exports is deliberate: update the pin in the same commit (the failure message says
what changed). The walk covers subpackages, so a module moved into a package is still checked, and a guard
makes sure the walk found the package at all.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
from pathlib import Path

import pytest

import mcp_gateway

PIN = Path(__file__).parent / "vectors" / "exports.json"

# Every module, subpackages included (private modules and __main__ aside).
MODULES = sorted(
    info.name.removeprefix("mcp_gateway.")
    for info in pkgutil.walk_packages(mcp_gateway.__path__, prefix="mcp_gateway.")
    if not info.name.rsplit(".", 1)[-1].startswith("_")
)


def exported(name: str) -> list[str]:
    module = importlib.import_module(f"mcp_gateway.{name}")
    names = getattr(module, "__all__", None)
    assert names is not None, f"mcp_gateway.{name} has no __all__"
    return sorted(names)


def test_the_walk_reaches_subpackages() -> None:
    assert len(MODULES) >= 40
    assert {"gateway", "audit.log", "backends.http", "store.chain", "transports.http", "cli.app"} <= set(MODULES)


def test_package_exports_its_version() -> None:
    assert mcp_gateway.__all__ == ["__version__"]
    assert mcp_gateway.__version__.count(".") == 2


@pytest.mark.parametrize("name", MODULES)
def test_every_name_in_all_exists(name: str) -> None:
    names = exported(name)
    assert names == sorted(set(names)), f"mcp_gateway.{name}.__all__ repeats a name"
    module = importlib.import_module(f"mcp_gateway.{name}")
    missing = [item for item in names if not hasattr(module, item)]
    assert not missing, f"mcp_gateway.{name}.__all__ names missing objects: {missing}"


def test_public_surface_matches_the_pin() -> None:
    pinned = json.loads(PIN.read_text(encoding="utf-8"))
    current = {name: exported(name) for name in MODULES}
    changes = {
        name: {
            "added": sorted(set(current.get(name, [])) - set(pinned.get(name, []))),
            "removed": sorted(set(pinned.get(name, [])) - set(current.get(name, []))),
        }
        for name in sorted(set(pinned) | set(current))
        if current.get(name) != pinned.get(name)
    }
    assert not changes, f"the public surface changed; update {PIN.name} if this is deliberate: {changes}"
