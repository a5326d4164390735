"""The HTTP surface as an OAuth 2.1 resource server: 401s, RFC 9728 metadata, Origin, health."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from mcp_types import UNSUPPORTED_PROTOCOL_VERSION
from mcp_types.version import KNOWN_PROTOCOL_VERSIONS

from mcp_gateway.config import load_settings
from mcp_gateway.devkeys import DevKey
from mcp_gateway.errors import ConfigError
from tests.conftest import ISSUER, Deployment, ExampleApi, HttpGateway, make_deployment, serving_http
from tests.raw_mcp import jsonrpc_body, streamable_session

INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}},
}
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


def post(gateway: HttpGateway, path: str = "/mcp", **headers: str) -> httpx.Response:
    with httpx.Client(trust_env=False, timeout=10) as client:
        return client.post(f"{gateway.url}{path}", json=INITIALIZE, headers={**MCP_HEADERS, **headers})


def test_missing_token_gets_401_pointing_at_protected_resource_metadata(http_gateway: HttpGateway) -> None:
    response = post(http_gateway)
    assert response.status_code == 401
    challenge = response.headers["www-authenticate"]
    metadata_url = f"{http_gateway.url}/.well-known/oauth-protected-resource/mcp"
    assert challenge.startswith("Bearer ")
    assert f'resource_metadata="{metadata_url}"' in challenge

    metadata = httpx.get(metadata_url, trust_env=False).json()
    assert metadata["resource"] == http_gateway.deployment.audience
    assert metadata["authorization_servers"] == [ISSUER]  # verbatim: clients compare issuers exactly


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"ttl": -120}, id="expired"),
        pytest.param({"audience": "http://127.0.0.1:1/other"}, id="wrong-audience"),
        pytest.param({"issuer": "https://evil.example"}, id="wrong-issuer"),
        pytest.param({"ttl": 7 * 86_400}, id="lifetime-too-long"),
    ],
)
def test_bad_tokens_get_401(http_gateway: HttpGateway, overrides: dict[str, object]) -> None:
    token = http_gateway.deployment.mint("alice", ("support",), "internal", **overrides)
    assert post(http_gateway, Authorization=f"Bearer {token}").status_code == 401


@pytest.mark.parametrize(
    "token",
    [
        pytest.param("not-a-jwt", id="garbage"),
        pytest.param("eyJhbGciOiJub25lIn0.eyJzdWIiOiJhbGljZSJ9.", id="alg-none"),
        pytest.param("a" * 20_000, id="oversized"),
    ],
)
def test_malformed_tokens_get_401(http_gateway: HttpGateway, token: str) -> None:
    assert post(http_gateway, Authorization=f"Bearer {token}").status_code == 401


def test_token_without_catalog_claim_is_refused(http_gateway: HttpGateway) -> None:
    key = http_gateway.deployment.key
    now = int(time.time())
    token = key.mint(
        "alice",
        roles=("support",),
        catalog="internal",
        issuer=ISSUER,
        audience=http_gateway.deployment.audience,
        extra_claims={"catalog": None, "iat": now},
    )
    assert post(http_gateway, Authorization=f"Bearer {token}").status_code == 401


def test_sse_endpoints_require_a_token_too(http_gateway: HttpGateway) -> None:
    with httpx.Client(trust_env=False, timeout=10) as client:
        assert client.get(f"{http_gateway.url}/sse").status_code == 401
        assert client.post(f"{http_gateway.url}/messages/?session_id=x", json=INITIALIZE).status_code == 401


@pytest.mark.parametrize("path", ["/mcp", "/sse", "/healthz"])
def test_foreign_origin_is_refused_before_anything_else(http_gateway: HttpGateway, path: str) -> None:
    token = http_gateway.deployment.mint("alice", ("support",), "internal")
    with httpx.Client(trust_env=False, timeout=10) as client:
        response = client.request(
            "POST" if path != "/healthz" else "GET",
            f"{http_gateway.url}{path}",
            headers={**MCP_HEADERS, "Origin": "https://evil.example", "Authorization": f"Bearer {token}"},
            json=INITIALIZE if path != "/healthz" else None,
        )
    assert response.status_code == 403


def test_own_origin_is_allowed(http_gateway: HttpGateway) -> None:
    token = http_gateway.deployment.mint("alice", ("support",), "internal")
    response = post(http_gateway, Origin=http_gateway.url, Authorization=f"Bearer {token}")
    assert response.status_code == 200


def test_health_and_readiness(http_gateway: HttpGateway) -> None:
    assert httpx.get(f"{http_gateway.url}/healthz", trust_env=False).json() == {"status": "ok"}
    ready = httpx.get(f"{http_gateway.url}/readyz", trust_env=False)
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"


def test_foreign_host_header_is_refused_against_dns_rebinding(http_gateway: HttpGateway) -> None:
    token = http_gateway.deployment.mint("alice", ("support",), "internal")
    response = post(http_gateway, Host="evil.example:80", Authorization=f"Bearer {token}")
    assert response.status_code == 421


@pytest.mark.parametrize(
    ("folder", "file_name", "content"),
    [
        pytest.param("policies", "internal.csv", "p, role:support, internal, crm.*, call, maybe\n", id="bad-policy"),
        pytest.param("catalogs", "internal.yaml", "tools: [{name: '../x'}]\n", id="bad-catalog"),
    ],
)
def test_gateway_refuses_to_start_on_a_broken_policy_or_catalog(
    deployment: Deployment, folder: str, file_name: str, content: str
) -> None:
    (deployment.root / folder / file_name).write_text(content)
    result = subprocess.run(
        [sys.executable, "-m", "mcp_gateway", "serve", "--transport", "streamable-http"],
        env=deployment.env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert file_name in result.stderr
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{deployment.port}/healthz", trust_env=False, timeout=1)


def test_several_origin_headers_are_refused(http_gateway: HttpGateway) -> None:
    token = http_gateway.deployment.mint("alice", ("support",), "internal")
    with httpx.Client(trust_env=False, timeout=10) as client:
        response = client.post(
            f"{http_gateway.url}/mcp",
            json=INITIALIZE,
            headers=[
                *MCP_HEADERS.items(),
                ("Origin", "https://evil.example"),
                ("Origin", http_gateway.url),
                ("Authorization", f"Bearer {token}"),
            ],
        )
    assert response.status_code == 403


# --- RFC 6750 §3.1: no error code when no credentials were sent ----------------------------------------------


@pytest.mark.parametrize(
    ("headers", "error"),
    [
        pytest.param({}, None, id="no-credentials"),
        pytest.param({"Authorization": "Basic YWxpY2U6c2VjcmV0"}, None, id="another-scheme"),
        pytest.param({"Authorization": "Bearer not-a-jwt"}, "invalid_token", id="bad-token"),
    ],
)
def test_challenge_names_an_error_only_when_a_token_was_sent(
    http_gateway: HttpGateway, headers: dict[str, str], error: str | None
) -> None:
    for path in ("/mcp", "/sse"):
        with httpx.Client(trust_env=False, timeout=10) as client:
            method = "POST" if path == "/mcp" else "GET"
            response = client.request(
                method, f"{http_gateway.url}{path}", json=INITIALIZE, headers=MCP_HEADERS | headers
            )
        assert response.status_code == 401
        challenge = response.headers["www-authenticate"]
        assert challenge.startswith("Bearer ")
        assert 'resource_metadata="' in challenge
        if error is None:
            assert "error=" not in challenge, challenge
            assert "error" not in response.json()
        else:
            assert f'error="{error}"' in challenge


# --- CORS for configured browser origins (the MCP Inspector) -------------------------------------------------

INSPECTOR = "http://localhost:6274"
HTTPS_TOOL = "https://tools.example.test"  # on the default port, which browsers leave out of Origin


@pytest.fixture
def inspector_gateway(tmp_path: Path, example_api: ExampleApi, dev_key: DevKey) -> Iterator[HttpGateway]:
    deployment = make_deployment(
        tmp_path / "inspector", example_api, dev_key, http={"allowed_origins": [INSPECTOR, f"{HTTPS_TOOL}:443"]}
    )
    with serving_http(deployment) as served:
        yield served


def preflight(gateway: HttpGateway, path: str, origin: str, method: str, headers: str = "") -> httpx.Response:
    request = {"Origin": origin, "Access-Control-Request-Method": method}
    if headers:
        request["Access-Control-Request-Headers"] = headers
    with httpx.Client(trust_env=False, timeout=10) as client:
        return client.options(f"{gateway.url}{path}", headers=request)


METADATA = "/.well-known/oauth-protected-resource/mcp"


@pytest.mark.parametrize("origin", [INSPECTOR, HTTPS_TOOL])
def test_a_configured_browser_origin_can_read_the_metadata_and_call(
    inspector_gateway: HttpGateway, origin: str
) -> None:
    allowed = preflight(inspector_gateway, METADATA, origin, "GET", "mcp-protocol-version")
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == origin
    metadata = httpx.get(f"{inspector_gateway.url}{METADATA}", headers={"Origin": origin}, trust_env=False)
    assert metadata.status_code == 200
    assert metadata.headers["access-control-allow-origin"] == origin
    assert metadata.json()["resource"] == inspector_gateway.deployment.audience

    # And /mcp: the preflight is answered before authentication; the 401 lets the browser read its challenge.
    call = preflight(inspector_gateway, "/mcp", origin, "POST", "authorization, content-type, mcp-protocol-version")
    assert call.status_code == 200
    assert call.headers["access-control-allow-origin"] == origin
    refused = post(inspector_gateway, Origin=origin)
    assert refused.status_code == 401
    assert refused.headers["access-control-allow-origin"] == origin
    assert "www-authenticate" in refused.headers["access-control-expose-headers"].lower()
    token = inspector_gateway.deployment.mint("alice", ("support",), "internal")
    opened = post(inspector_gateway, Origin=origin, Authorization=f"Bearer {token}")
    assert opened.status_code == 200
    assert "mcp-session-id" in opened.headers["access-control-expose-headers"].lower()


@pytest.mark.parametrize("path", [METADATA, "/mcp"])
def test_a_browser_origin_not_configured_is_refused_with_cors_or_without(
    inspector_gateway: HttpGateway, http_gateway: HttpGateway, path: str
) -> None:
    # Another port of the same host on a configured gateway, and the Inspector on a gateway with none (the default).
    for gateway, origin in ((inspector_gateway, "http://localhost:6275"), (http_gateway, INSPECTOR)):
        assert preflight(gateway, path, origin, "GET").status_code == 403
        response = httpx.get(f"{gateway.url}{path}", headers={"Origin": origin}, trust_env=False)
        assert response.status_code == 403
        assert "access-control-allow-origin" not in response.headers


def test_allowed_origins_must_be_origins(tmp_path: Path, example_api: ExampleApi, dev_key: DevKey) -> None:
    deployment = make_deployment(
        tmp_path, example_api, dev_key, http={"allowed_origins": ["http://localhost:6274/app"]}
    )
    with pytest.raises(ConfigError, match="allowed_origins"):
        load_settings(deployment.config)


# --- MCP-Protocol-Version naming no version -------------------------------------------------------------------

UNKNOWN_VERSIONS = [
    pytest.param(["1999-01-01"], id="too-old"),
    pytest.param(["2025-13-01"], id="not-a-release"),
    pytest.param(["garbage"], id="garbage"),
    pytest.param([""], id="empty"),
    pytest.param(["x" * 500], id="overlong"),
    pytest.param(["2025-11-25", "1999-01-01"], id="two-that-differ"),
]


@pytest.mark.parametrize("versions", UNKNOWN_VERSIONS)
def test_an_unknown_protocol_version_is_named_with_the_supported_ones(
    http_gateway: HttpGateway, versions: list[str]
) -> None:
    token = http_gateway.deployment.mint("alice", ("support",), "internal")
    listing = {"jsonrpc": "2.0", "id": 3, "method": "tools/list"}
    with streamable_session(http_gateway, token) as (client, session):
        for headers in (session, {k: v for k, v in session.items() if k != "Mcp-Session-Id"}):  # in a session, or not
            base = [(name, value) for name, value in headers.items() if name != "MCP-Protocol-Version"]
            response = client.post(
                "/mcp", json=listing, headers=[*base, *(("MCP-Protocol-Version", version) for version in versions)]
            )
            assert response.status_code == 400
            error = response.json()["error"]
            assert error["code"] == UNSUPPORTED_PROTOCOL_VERSION
            assert error["message"].startswith("Unsupported MCP-Protocol-Version")
            assert f"supported: {', '.join(KNOWN_PROTOCOL_VERSIONS)}" in error["message"]
            assert error["data"]["supported"] == list(KNOWN_PROTOCOL_VERSIONS)
            assert len(error["message"]) < 300
        # The session is still good at the version it negotiated.
        assert "result" in jsonrpc_body(client.post("/mcp", json=listing, headers=session))
