"""The ``servers:`` section of a catalog: validated strictly, with errors that name the key and why."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from mcp_gateway.catalog import SERVER_NAME, ServerSpec, load_catalogs
from mcp_gateway.config import EgressSettings
from mcp_gateway.errors import ConfigError

EGRESS = EgressSettings(allow=("http://127.0.0.1:9000",))
TOOL = {
    "name": "files.read",
    "description": "A local tool.",
    "input_schema": {"type": "object"},
    "backend": {"type": "http", "url": "http://127.0.0.1:9000/read"},
}


def load(tmp_path: Path, *servers: dict[str, Any], tools: list[dict[str, Any]] | None = None) -> Any:
    (tmp_path / "internal.yaml").write_text(yaml.safe_dump({"tools": tools or [], "servers": list(servers)}))
    return load_catalogs(tmp_path, EGRESS)


def stdio(**keys: Any) -> dict[str, Any]:
    return {"name": "files", "transport": "stdio", "command": ["python", "-m", "files_server"], **keys}


def http(**keys: Any) -> dict[str, Any]:
    return {"name": "tickets", "transport": "streamable-http", "url": "http://127.0.0.1:9000/mcp", **keys}


def refused(tmp_path: Path, *servers: dict[str, Any], **options: Any) -> str:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, *servers, **options)
    return str(caught.value)


def test_a_valid_section_loads_with_defaults(tmp_path: Path) -> None:
    catalogs = load(tmp_path, stdio(env={"DOCS_ROOT": "/srv/docs"}, tools=["read_*", "search"]), http())
    files = catalogs.servers["internal"]["files"]
    assert files.command == ("python", "-m", "files_server")
    assert (files.refresh, files.timeout, files.max_response_bytes) == (60.0, 30.0, 1_048_576)
    assert files.imports("read_file")
    assert files.imports("search")
    assert not files.imports("delete")
    assert catalogs.servers["internal"]["tickets"].imports("anything")  # no globs: every tool


@pytest.mark.parametrize("name", ["Files", "a" * 33, "", "files.x", "fi les", "ü"])
def test_bad_names_are_refused(tmp_path: Path, name: str) -> None:
    assert "servers.0.name" in refused(tmp_path, stdio(name=name))


def test_a_shell_string_is_not_a_command(tmp_path: Path) -> None:
    message = refused(tmp_path, stdio(command="python -m files_server && curl evil"))
    assert "servers.0.command" in message
    assert "never a shell string" in message
    assert "servers.0.command" in refused(tmp_path, stdio(command=[]))
    assert "servers.0.command" in refused(tmp_path, stdio(command=["python", ""]))


def test_a_url_off_the_egress_allowlist_is_refused(tmp_path: Path) -> None:
    message = refused(tmp_path, http(url="http://10.0.0.5:9000/mcp"))
    assert "servers.0.url" in message
    assert "egress.allow" in message


def test_both_credential_sources_are_refused(tmp_path: Path) -> None:
    message = refused(tmp_path, http(credential_env="TOKEN", credential_file="token.txt"))
    assert "at most one of credential_env and credential_file" in message


@pytest.mark.parametrize(
    ("server", "why"),
    [
        pytest.param(stdio(command=None), "needs command", id="stdio-without-command"),
        pytest.param(stdio(url="http://127.0.0.1:9000/mcp"), "not url", id="stdio-with-url"),
        pytest.param(stdio(credential_env="TOKEN"), "not url or credential", id="stdio-with-credential"),
        pytest.param(http(url=None), "needs url", id="http-without-url"),
        pytest.param(http(command=["python"]), "not command", id="http-with-command"),
        pytest.param(http(env={"A": "b"}), "not command, env", id="http-with-env"),
        pytest.param(http(url="http://user:pw@127.0.0.1:9000/mcp"), "credentials", id="url-with-credentials"),
        pytest.param(http(url="ftp://127.0.0.1/mcp"), "http(s) URL", id="not-http"),
        pytest.param(stdio(transport="websocket"), "transport", id="unknown-transport"),
        pytest.param(stdio(env={"BAD-NAME": "x"}), "environment variable name", id="bad-env-name"),
        pytest.param(stdio(refresh=0), "refresh", id="zero-refresh"),
        pytest.param(stdio(timeout=-1), "timeout", id="negative-timeout"),
        pytest.param(stdio(max_response_bytes=0), "max_response_bytes", id="zero-cap"),
        pytest.param(stdio(tools=[""]), "glob", id="empty-glob"),
        pytest.param(stdio(**{"shell": True}), "shell", id="unknown-key"),
    ],
)
def test_each_field_is_checked(tmp_path: Path, server: dict[str, Any], why: str) -> None:
    assert why in refused(tmp_path, {key: value for key, value in server.items() if value is not None})


def test_a_name_twice_and_a_name_shadowing_local_tools_are_refused(tmp_path: Path) -> None:
    assert "defined twice" in refused(tmp_path, stdio(), stdio())
    assert "would shadow the catalog's own tools ['files.read']" in refused(tmp_path, stdio(), tools=[TOOL])


def test_relative_paths_resolve_against_the_catalog_file(tmp_path: Path) -> None:
    catalogs = load(tmp_path, stdio(cwd="servers"), http(credential_file="secrets/token"))
    assert catalogs.servers["internal"]["files"].cwd == tmp_path / "servers"
    assert catalogs.servers["internal"]["tickets"].credential_file == tmp_path / "secrets" / "token"


@given(st.text(max_size=40))
def test_server_names_match_the_contract_exactly(name: str) -> None:
    valid = SERVER_NAME.fullmatch(name) is not None
    try:
        ServerSpec(name=name, transport="stdio", command=("python",))
    except ValueError:
        assert not valid
    else:
        assert valid
        assert all(char in "abcdefghijklmnopqrstuvwxyz0123456789_-" for char in name)
        assert 1 <= len(name) <= 32
