"""Rewrite the generated references in docs/ (configuration, catalog, model inventory) from the models."""

from __future__ import annotations

from pathlib import Path

from mcp_gateway.reference import REFERENCES, render

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    for reference in REFERENCES:
        (ROOT / reference.document).write_text(render(reference), encoding="utf-8")


if __name__ == "__main__":
    main()
