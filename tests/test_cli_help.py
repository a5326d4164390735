"""``mcp-gateway --help`` documents everything: every command group, command, option and argument has help text,
and ``python -m mcp_gateway`` is the same command as the installed one."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

from mcp_gateway.cli.app import app

ROOT = typer.main.get_command(app)


def _walk(command: Any, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], Any]]:
    yield path, command
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        yield from _walk(sub, (*path, name))


COMMANDS = [pytest.param(path, command, id=" ".join(path) or "mcp-gateway") for path, command in _walk(ROOT, ())]


@pytest.mark.parametrize(("path", "command"), COMMANDS)
def test_every_command_and_group_has_help(path: tuple[str, ...], command: Any) -> None:
    assert (command.help or "").strip(), f"mcp-gateway {' '.join(path)} has no help"


@pytest.mark.parametrize(("path", "command"), COMMANDS)
def test_every_option_and_argument_has_help(path: tuple[str, ...], command: Any) -> None:
    missing = [param.name for param in command.params if not (getattr(param, "help", None) or "").strip()]
    assert missing == [], f"mcp-gateway {' '.join(path)}: no help for {missing}"


@pytest.mark.parametrize(("path", "command"), COMMANDS)
def test_help_renders(path: tuple[str, ...], command: Any) -> None:
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def test_the_walk_sees_every_group_and_command() -> None:
    names = {" ".join(path) for path, _ in _walk(ROOT, ())}
    assert {"serve", "config check", "token issue", "policy test", "audit trace", "models import"} <= names
    assert {"breakglass request", "approval deny"} <= names


def test_python_dash_m_runs_the_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mcp_gateway", "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "A governed MCP gateway." in result.stdout
