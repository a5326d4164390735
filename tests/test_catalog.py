"""Tool catalogs: the shipped files load; every hostile or broken catalog is refused naming file and key."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from mcp_gateway.catalog import CatalogSet, ToolSpec, load_catalogs
from mcp_gateway.config import EgressSettings
from mcp_gateway.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "catalogs"
API = "http://127.0.0.1:8081"
EGRESS = EgressSettings(allow=(API,))


def a_tool(**overrides: Any) -> dict[str, Any]:
    """A valid tool definition; ``overrides`` replace top-level keys."""
    tool: dict[str, Any] = {
        "name": "crm.lookup",
        "title": "Look up",
        "description": "Fetch one customer.",
        "input_schema": {
            "type": "object",
            "properties": {"customer_id": {"type": "string"}, "q": {"type": "string"}},
            "required": ["customer_id"],
            "additionalProperties": False,
        },
        "backend": {"type": "http", "url": f"{API}/customers/{{customer_id}}", "query": {"q": "q"}},
    }
    tool.update(overrides)
    return tool


def with_backend(**changes: Any) -> dict[str, Any]:
    tool = a_tool()
    tool["backend"] = {**tool["backend"], **changes}
    return tool


def write(folder: Path, text: str, name: str = "internal.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def write_tools(folder: Path, *tools: dict[str, Any], name: str = "internal.yaml") -> Path:
    return write(folder, yaml.safe_dump({"tools": list(tools)}, allow_unicode=True), name)


def spec(catalogs: CatalogSet, catalog: str, name: str) -> ToolSpec:
    found = catalogs.lookup(catalog, name)
    assert found is not None, f"{catalog}/{name} did not load"
    return found


def refused(folder: Path) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_catalogs(folder, EGRESS)
    assert info.value.code == "config_error"
    return info.value


# --- The shipped catalogs -------------------------------------------------------------------------------------


def test_shipped_catalogs_load_with_the_example_api_on_the_allowlist() -> None:
    catalogs = load_catalogs(SHIPPED, EGRESS)

    assert catalogs.names() == {
        "internal": ("crm.customer_lookup", "crm.search", "tickets.create", "hr.salary_lookup"),
        "partner": ("orders.status", "products.list", "orders.cancel"),
    }
    lookup = catalogs.lookup("internal", "crm.customer_lookup")
    assert lookup is not None
    assert lookup.catalog == "internal"
    assert lookup.definition.name == "crm.customer_lookup"
    assert lookup.backend.path_arguments == ("customer_id",)
    assert lookup.backend.timeout == 5
    assert len(lookup.digest) == 64
    assert catalogs.lookup("partner", "crm.customer_lookup") is None
    assert [tool.name for tool in catalogs.tools("partner")] == ["orders.status", "products.list", "orders.cancel"]


def test_shipped_catalog_validators_enforce_the_published_input_schema() -> None:
    lookup = load_catalogs(SHIPPED, EGRESS).lookup("internal", "crm.customer_lookup")
    assert lookup is not None

    assert lookup.validator.is_valid({"customer_id": "c-100"})
    assert not lookup.validator.is_valid({"customer_id": "../admin"})
    assert not lookup.validator.is_valid({"customer_id": "c-100", "extra": 1})


def test_shipped_catalogs_are_refused_when_the_api_is_not_on_the_allowlist() -> None:
    with pytest.raises(ConfigError) as info:
        load_catalogs(SHIPPED, EgressSettings(allow=("http://127.0.0.1:9999",)))

    assert info.value.code == "config_error"
    assert "tools.0.backend.url" in str(info.value)


def test_catalog_version_changes_when_any_file_changes(tmp_path: Path) -> None:
    folder = tmp_path / "catalogs"
    shutil.copytree(SHIPPED, folder)
    before = load_catalogs(folder, EGRESS)
    assert load_catalogs(folder, EGRESS).version == before.version

    partner = folder / "partner.yaml"
    partner.write_text(partner.read_text(encoding="utf-8") + "# a comment\n", encoding="utf-8")
    after = load_catalogs(folder, EGRESS)

    assert after.version != before.version
    # A comment changes no tool definition.
    assert spec(after, "partner", "orders.status").digest == spec(before, "partner", "orders.status").digest


def test_reserved_models_file_is_not_a_catalog(tmp_path: Path) -> None:
    folder = tmp_path / "catalogs"
    write_tools(folder, a_tool())
    write(folder, "models: []\n", name="models.yaml")

    assert list(load_catalogs(folder, EGRESS).names()) == ["internal"]


def test_broken_model_inventory_refuses_the_catalogs(tmp_path: Path) -> None:
    # models.yaml is the model inventory: a broken one is refused like a broken catalog, never skipped.
    folder = tmp_path / "catalogs"
    write_tools(folder, a_tool())
    write(folder, "not: [a catalog\n", name="models.yaml")

    with pytest.raises(ConfigError, match=r"models\.yaml: not valid YAML"):
        load_catalogs(folder, EGRESS)


# --- Hostile tool names ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        # line breaks and length
        pytest.param("ok\n", id="trailing-newline"),
        pytest.param("a" * 129, id="129-characters"),
        pytest.param("", id="empty"),
        # path-like
        pytest.param("../x", id="dot-dot-slash"),
        pytest.param("crm/lookup", id="slash"),
        # look-alikes and odd starts
        pytest.param("\u0441rm.lookup", id="cyrillic-es-confusable"),
        pytest.param("-rm", id="leading-dash"),
        pytest.param(".hidden", id="leading-dot"),
        pytest.param("crm lookup", id="space"),
    ],
)
def test_hostile_tool_name_is_refused_naming_file_and_key(tmp_path: Path, name: str) -> None:
    path = write_tools(tmp_path / "catalogs", a_tool(name=name))

    error = refused(tmp_path / "catalogs")

    assert str(path) in str(error)
    assert "tools.0.name" in str(error)


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("a" * 128, id="128-characters"),
        pytest.param("_private", id="leading-underscore"),
        pytest.param("9lives", id="leading-digit"),
        pytest.param("crm.customer-lookup_v2", id="dots-dashes-underscores"),
    ],
)
def test_tool_name_at_the_edges_of_the_grammar_loads(tmp_path: Path, name: str) -> None:
    write_tools(tmp_path / "catalogs", a_tool(name=name))

    assert load_catalogs(tmp_path / "catalogs", EGRESS).names() == {"internal": (name,)}


def test_duplicate_tool_name_is_refused_naming_the_second_definition(tmp_path: Path) -> None:
    path = write_tools(tmp_path / "catalogs", a_tool(), a_tool(description="Another."))

    error = refused(tmp_path / "catalogs")

    assert str(path) in str(error)
    assert "tools.1.name" in str(error)


def test_same_tool_name_in_two_catalogs_is_allowed(tmp_path: Path) -> None:
    write_tools(tmp_path / "catalogs", a_tool(), name="internal.yaml")
    write_tools(tmp_path / "catalogs", a_tool(), name="partner.yaml")

    catalogs = load_catalogs(tmp_path / "catalogs", EGRESS)

    assert catalogs.lookup("internal", "crm.lookup") is not None
    assert catalogs.lookup("partner", "crm.lookup") is not None


# --- Backends -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tool", "key"),
    [
        # egress
        pytest.param(
            with_backend(url="http://127.0.0.1:8082/customers/{customer_id}"), "tools.0.backend.url", id="other-port"
        ),
        pytest.param(
            with_backend(url="https://127.0.0.1:8081/customers/{customer_id}"), "tools.0.backend.url", id="other-scheme"
        ),
        pytest.param(
            with_backend(url="http://localhost:8081/customers/{customer_id}"),
            "tools.0.backend.url",
            id="other-host-name",
        ),
        # placeholders outside the path
        pytest.param(
            with_backend(url="http://{customer_id}:8081/customers"), "tools.0.backend.url", id="placeholder-in-host"
        ),
        pytest.param(
            with_backend(url="http://127.0.0.1:{customer_id}/x"), "tools.0.backend.url", id="placeholder-in-port"
        ),
        pytest.param(
            with_backend(url=f"{API}/customers?id={{customer_id}}"), "tools.0.backend.url", id="placeholder-in-query"
        ),
        pytest.param(with_backend(url=f"{API}/customers/{{customer_id}}#frag"), "tools.0.backend.url", id="fragment"),
        # not an http(s) URL
        pytest.param(with_backend(url="file:///etc/passwd"), "tools.0.backend.url", id="file-scheme"),
        pytest.param(with_backend(url="/customers/{customer_id}"), "tools.0.backend.url", id="relative"),
        # header injection
        pytest.param(
            with_backend(headers={"X-Team": "crm\r\nX-Admin: 1"}), "tools.0.backend.headers", id="crlf-in-header-value"
        ),
        pytest.param(
            with_backend(headers={"X-Team": "crm\nX-Admin: 1"}), "tools.0.backend.headers", id="lf-in-header-value"
        ),
        pytest.param(with_backend(headers={"X-Team\nX-Admin": "1"}), "tools.0.backend.headers", id="lf-in-header-name"),
        # credentials
        pytest.param(
            with_backend(credential_env="API_KEY", credential_file="/run/key"), "tools.0.backend", id="two-secrets"
        ),
        # unknown or out-of-range keys
        pytest.param(with_backend(follow_redirects=True), "tools.0.backend.follow_redirects", id="unknown-backend-key"),
        pytest.param(with_backend(method="TRACE"), "tools.0.backend.method", id="method-not-allowed"),
        pytest.param(with_backend(type="grpc"), "tools.0.backend.type", id="unknown-backend-type"),
        pytest.param(with_backend(timeout=0), "tools.0.backend.timeout", id="zero-timeout"),
        pytest.param(
            with_backend(max_response_bytes=65 * 1_048_576),
            "tools.0.backend.max_response_bytes",
            id="response-cap-too-big",
        ),
    ],
)
def test_bad_backend_is_refused_naming_file_and_key(tmp_path: Path, tool: dict[str, Any], key: str) -> None:
    path = write_tools(tmp_path / "catalogs", tool)

    error = refused(tmp_path / "catalogs")

    assert str(path) in str(error)
    assert key in str(error)


def test_url_off_the_allowlist_in_the_second_catalog_names_that_file(tmp_path: Path) -> None:
    write_tools(tmp_path / "catalogs", a_tool(), name="internal.yaml")
    bad = write_tools(
        tmp_path / "catalogs",
        a_tool(),
        {**with_backend(url="http://10.0.0.1/x"), "name": "crm.other"},
        name="partner.yaml",
    )

    error = refused(tmp_path / "catalogs")

    assert str(bad) in str(error)
    assert "tools.1.backend.url" in str(error)


# --- Input schemas and the arguments backends use -------------------------------------------------------------


def _schema(**changes: Any) -> dict[str, Any]:
    schema: dict[str, Any] = copy.deepcopy(a_tool()["input_schema"])
    schema.update(changes)
    return schema


@pytest.mark.parametrize(
    ("tool", "key", "named"),
    [
        # the path argument must be a required, declared property
        pytest.param(a_tool(input_schema=_schema(required=[])), "tools.0", "customer_id", id="path-arg-optional"),
        pytest.param(
            a_tool(input_schema=_schema(properties={"q": {"type": "string"}})),
            "tools.0",
            "customer_id",
            id="path-arg-not-in-schema",
        ),
        pytest.param(with_backend(query={"q": "query_text"}), "tools.0", "query_text", id="query-arg-not-in-schema"),
        pytest.param(with_backend(body={"note": "note_text"}), "tools.0", "note_text", id="body-arg-not-in-schema"),
        # the schema itself
        pytest.param(a_tool(input_schema={"type": "array"}), "tools.0.input_schema", None, id="root-array"),
        pytest.param(
            a_tool(input_schema={"properties": {"customer_id": {"type": "string"}}}),
            "tools.0.input_schema",
            None,
            id="root-without-type",
        ),
        pytest.param(
            a_tool(input_schema=_schema(properties={"customer_id": {"type": "strng"}})),
            "tools.0.input_schema",
            None,
            id="unknown-json-type",
        ),
        pytest.param(
            a_tool(input_schema=_schema(required="customer_id")), "tools.0.input_schema", None, id="required-not-list"
        ),
        # other tool keys
        pytest.param(a_tool(description=""), "tools.0.description", None, id="empty-description"),
        pytest.param(a_tool(hidden=True), "tools.0.hidden", None, id="unknown-tool-key"),
    ],
)
def test_bad_tool_definition_is_refused_naming_file_and_key(
    tmp_path: Path, tool: dict[str, Any], key: str, named: str | None
) -> None:
    path = write_tools(tmp_path / "catalogs", tool)

    error = refused(tmp_path / "catalogs")

    assert str(path) in str(error)
    assert key in str(error)
    if named is not None:
        assert named in str(error)


# --- Whole files ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key"),
    [
        pytest.param("- crm.lookup\n- crm.search\n", "(top level)", id="yaml-list"),
        pytest.param("just a string\n", "(top level)", id="yaml-scalar"),
        pytest.param("", "(top level)", id="empty-file"),
        pytest.param("tools: {}\n", "tools", id="tools-not-a-list"),
        pytest.param(yaml.safe_dump({"tools": [a_tool()], "version": 2}), "version", id="unknown-top-level-key"),
    ],
)
def test_catalog_file_of_the_wrong_shape_is_refused_naming_file_and_key(tmp_path: Path, text: str, key: str) -> None:
    path = write(tmp_path / "catalogs", text)

    error = refused(tmp_path / "catalogs")

    assert str(path) in str(error)
    assert key in str(error)


def test_invalid_yaml_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = write(tmp_path / "catalogs", "tools: [\n  - name: x\n    description: [\n")

    error = refused(tmp_path / "catalogs")

    assert str(path) in str(error)
    assert isinstance(error.__cause__, yaml.YAMLError)


def test_one_bad_catalog_refuses_the_whole_set(tmp_path: Path) -> None:
    write_tools(tmp_path / "catalogs", a_tool(), name="internal.yaml")
    bad = write(tmp_path / "catalogs", "tools: [\n", name="partner.yaml")

    error = refused(tmp_path / "catalogs")

    assert str(bad) in str(error)


def test_empty_catalogs_folder_is_refused_naming_catalogs_dir(tmp_path: Path) -> None:
    (tmp_path / "catalogs").mkdir()
    write(tmp_path / "catalogs", "not a catalog\n", name="README.md")

    error = refused(tmp_path / "catalogs")

    assert "catalogs_dir" in str(error)


def test_missing_catalogs_folder_is_refused_naming_catalogs_dir(tmp_path: Path) -> None:
    error = refused(tmp_path / "nowhere")

    assert "catalogs_dir" in str(error)


@pytest.mark.parametrize(
    "file_name",
    [
        pytest.param("Internal.yaml", id="uppercase"),
        pytest.param("in ternal.yaml", id="space"),
        pytest.param("1internal.yaml", id="leading-digit"),
    ],
)
def test_catalog_file_name_outside_the_grammar_is_refused_naming_the_file(tmp_path: Path, file_name: str) -> None:
    path = write_tools(tmp_path / "catalogs", a_tool(), name=file_name)

    error = refused(tmp_path / "catalogs")

    assert str(path) in str(error)


# --- Digests: a changed definition is visible -----------------------------------------------------------------


def digest_of(tmp_path: Path, tool: dict[str, Any], folder: str = "catalogs") -> str:
    write_tools(tmp_path / folder, tool)
    spec = load_catalogs(tmp_path / folder, EGRESS).lookup("internal", tool["name"])
    assert spec is not None
    return spec.digest


@pytest.mark.parametrize(
    "changed",
    [
        pytest.param(a_tool(description="Fetch one customer, and more."), id="description"),
        pytest.param(a_tool(title="Other title"), id="title"),
        pytest.param(a_tool(input_schema=_schema(additionalProperties=True)), id="input-schema"),
        pytest.param(a_tool(annotations={"read_only_hint": True}), id="annotations"),
        pytest.param(with_backend(url=f"{API}/v2/customers/{{customer_id}}"), id="backend-url"),
        pytest.param(with_backend(method="DELETE"), id="backend-method"),
        pytest.param(with_backend(credential_env="OTHER_KEY"), id="backend-credential"),
        pytest.param(with_backend(headers={"X-Team": "crm"}), id="backend-headers"),
        pytest.param(with_backend(timeout=3), id="backend-timeout"),
    ],
)
def test_tool_digest_changes_when_the_definition_or_backend_changes(tmp_path: Path, changed: dict[str, Any]) -> None:
    assert digest_of(tmp_path, changed, "changed") != digest_of(tmp_path, a_tool(), "original")


def test_tool_digest_is_stable_across_loads_formatting_and_other_tools(tmp_path: Path) -> None:
    original = digest_of(tmp_path, a_tool(), "original")
    folder = tmp_path / "reformatted"
    # The same tool in flow style, keys in another order, with comments and another tool beside it.
    tool = a_tool()
    write(
        folder,
        "# comment\ntools:\n  - "
        + yaml.safe_dump(dict(reversed(list(tool.items()))), default_flow_style=True, width=1000).strip()
        + "\n  - "
        + yaml.safe_dump(a_tool(name="crm.other"), default_flow_style=True, width=1000).strip()
        + "\n",
    )

    catalogs = load_catalogs(folder, EGRESS)
    assert spec(catalogs, "internal", "crm.lookup").digest == original
    assert spec(load_catalogs(tmp_path / "original", EGRESS), "internal", "crm.lookup").digest == original


# --- Headers, credentials and file names (found in review) ----------------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"headers": {"Host": "elsewhere.example"}}, id="host-header"),
        pytest.param({"headers": {"Transfer-Encoding": "chunked"}}, id="transfer-encoding"),
        pytest.param({"headers": {"Content-Length": "0"}}, id="content-length"),
        pytest.param({"headers": {"X-Ok": "a\x00b"}}, id="nul-in-value"),
        pytest.param({"headers": {"X Bad": "v"}}, id="space-in-name"),
        pytest.param({"credential_header": "X-Key\r\nEvil: 1", "credential_env": "K"}, id="credential-header-crlf"),
        pytest.param({"credential_header": "Host", "credential_env": "K"}, id="credential-header-host"),
        pytest.param({"credential_scheme": "Bearer x", "credential_env": "K"}, id="credential-scheme-space"),
    ],
)
def test_unsafe_headers_are_refused_at_load(tmp_path: Path, changes: dict[str, Any]) -> None:
    write_tools(tmp_path, with_backend(**changes))
    assert "backend" in str(refused(tmp_path))


def test_yml_files_are_refused_rather_than_silently_ignored(tmp_path: Path) -> None:
    write_tools(tmp_path, a_tool())
    write_tools(tmp_path, a_tool(), name="partner.yml")
    assert "partner.yml" in str(refused(tmp_path))


def test_relative_credential_file_is_resolved_against_the_catalog_folder(tmp_path: Path) -> None:
    write_tools(tmp_path / "catalogs", with_backend(credential_file="secrets/api-key"))
    loaded = spec(load_catalogs(tmp_path / "catalogs", EGRESS), "internal", "crm.lookup")
    assert loaded.backend.credential_file == tmp_path / "catalogs" / "secrets" / "api-key"


def test_backend_url_with_credentials_is_refused_without_echoing_them(tmp_path: Path) -> None:
    write_tools(tmp_path, with_backend(url="http://svc:hunter2@127.0.0.1:8081/customers/{customer_id}"))
    error = str(refused(tmp_path))
    assert "credential" in error
    assert "hunter2" not in error
