"""Rewrite tests/vectors/exports.json from every module's ``__all__`` (run after a deliberate change of names)."""

from __future__ import annotations

import importlib
import json
import pkgutil
from pathlib import Path

import mcp_gateway

PIN = Path(__file__).resolve().parent.parent / "tests" / "vectors" / "exports.json"


def main() -> None:
    names = sorted(
        info.name.removeprefix("mcp_gateway.")
        for info in pkgutil.walk_packages(mcp_gateway.__path__, prefix="mcp_gateway.")
        if not info.name.rsplit(".", 1)[-1].startswith("_")
    )
    current = {name: sorted(importlib.import_module(f"mcp_gateway.{name}").__all__) for name in names}
    PIN.write_text(json.dumps(current, indent=1, sort_keys=True) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
