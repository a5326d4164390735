"""``mcp-gateway init DIR``: the scaffold passes ``config check``, serves a real client, and never overwrites."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters
from typer.testing import CliRunner, Result

from mcp_gateway.cli.app import app
from mcp_gateway.scaffold import template_files
from tests.conftest import API_KEY, ROOT, ExampleApi


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(app, [str(arg) for arg in args], catch_exceptions=False)


def test_the_scaffold_passes_config_check_and_prints_the_next_steps(tmp_path: Path) -> None:
    made = run("init", tmp_path / "gw")

    assert made.exit_code == 0, made.output
    root = tmp_path / "gw"
    expected = {
        "mcp-gateway.yaml",
        "catalogs/internal.yaml",
        "catalogs/partner.yaml",
        "catalogs/models.yaml",
        "policies/model.conf",
        "policies/internal.csv",
        "policies/partner.csv",
    }
    assert {
        str(path.relative_to(root)) for path in root.rglob("*") if path.is_file() and "state" not in path.parts
    } == (expected)
    assert (root / "state" / "dev-signing-key.pem").stat().st_mode & 0o077 == 0
    for step in ("config check", "jwks_file", "token issue", "serve"):
        assert step in made.output
    checked = run("config", "check", "--config", root / "mcp-gateway.yaml")
    assert checked.exit_code == 0, checked.output
    assert "catalog internal: 1 tools" in checked.output
    assert "catalog partner: 1 tools" in checked.output


def test_the_shipped_policy_model_is_the_gateways_own() -> None:
    # The engine refuses an edited model.conf; a scaffold with a stale copy would not start.
    assert template_files()["policies/model.conf"] == (ROOT / "policies" / "model.conf").read_bytes()


@pytest.mark.parametrize("present", ["mcp-gateway.yaml", "catalogs/internal.yaml", "state"])
def test_init_refuses_to_overwrite_and_then_writes_nothing(tmp_path: Path, present: str) -> None:
    root = tmp_path / "gw"
    target = root / present
    target.parent.mkdir(parents=True)
    if present == "state":
        target.mkdir()
    else:
        target.write_text("# mine\n")

    refused = run("init", root)

    assert refused.exit_code == 2
    assert "not overwriting" in refused.output
    left = sorted(str(path.relative_to(root)) for path in root.rglob("*"))
    assert left == sorted({present, *([str(Path(present).parent)] if "/" in present else [])})
    if present != "state":
        assert target.read_text() == "# mine\n"


async def test_a_real_client_calls_the_scaffolded_tool_over_stdio(tmp_path: Path, example_api: ExampleApi) -> None:
    root = tmp_path / "gw"
    assert run("init", root).exit_code == 0
    # The one edit a newcomer makes: point the example tool at where the example API runs in this test.
    for name in ("mcp-gateway.yaml", "catalogs/internal.yaml", "catalogs/partner.yaml"):
        path = root / name
        path.write_text(path.read_text().replace("http://127.0.0.1:8081", example_api.url))
    config = root / "mcp-gateway.yaml"
    issued = run("token", "issue", "--config", config, "-s", "alice", "-r", "support", "--catalog", "internal")
    assert issued.exit_code == 0, issued.output
    token = issued.stdout.strip().splitlines()[-1]
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "mcp_gateway", "serve", "--transport", "stdio", "--config", str(config)],
        env={"MCP_GATEWAY_TOKEN": token, "INVENTORY_API_KEY": API_KEY, "PATH": "/usr/bin:/bin"},
        cwd=str(tmp_path),
    )
    async with Client(params, read_timeout_seconds=30) as client:
        listed = await client.list_tools()
        result = await client.call_tool("crm.customer_lookup", {"customer_id": "c-100"})

    assert [tool.name for tool in listed.tools] == ["crm.customer_lookup"]
    assert not result.is_error, result.content
    assert "Ada Lovelace" in "".join(getattr(block, "text", "") for block in result.content)
