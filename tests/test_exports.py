"""The public surface: each module's __all__ names exist, and the package's version is exported."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import mcp_gateway

MODULES = sorted(info.name for info in pkgutil.iter_modules(mcp_gateway.__path__) if not info.name.startswith("_"))


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
