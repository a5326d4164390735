"""`make demo` end to end: the README's first command does what the README says it shows."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def test_the_demo_runs_end_to_end_and_shows_each_part() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "demo.py")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "COLUMNS": "160"},
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    for part in (
        "internal: alice (role support)",
        "partner: acme-bot (role partner)",
        "Unknown tool (unknown_tool)",
        "a configuration change, made from the CLI",
        "tabletop: the whole story of one call",
        "OK: every hash and link verifies",
        "all processes stopped",
    ):
        assert part in output, part
    if importlib.util.find_spec("llama_cpp") is None:
        assert "no model engine" in output
    else:
        # The inference plane: a streamed answer, a plain one with usage on record, and the engine down.
        assert "progress notifications, joined" in output
        assert " in + " in output
        assert "with the engine down: unavailable" in output
