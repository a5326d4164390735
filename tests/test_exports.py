"""The public surface: each module's __all__ names exist, and the package's version is exported."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import mcp_gateway

# Every module, subpackages included: a module moved into a package is still checked.
MODULES = sorted(
    info.name.removeprefix("mcp_gateway.")
    for info in pkgutil.walk_packages(mcp_gateway.__path__, prefix="mcp_gateway.")
    if not info.name.rsplit(".", 1)[-1].startswith("_")
)


def test_package_exports_its_version() -> None:
    assert mcp_gateway.__all__ == ["__version__"]
    assert mcp_gateway.__version__.count(".") == 2


@pytest.mark.parametrize("name", MODULES)
def test_every_name_in_all_exists(name: str) -> None:
    module = importlib.import_module(f"mcp_gateway.{name}")
    exported = getattr(module, "__all__", None)
    assert exported is not None, f"mcp_gateway.{name} has no __all__"
    assert sorted(exported) == sorted(set(exported))
    missing = [item for item in exported if not hasattr(module, item)]
    assert not missing, f"mcp_gateway.{name}.__all__ names missing objects: {missing}"
