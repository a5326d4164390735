"""Every hostile token, end to end: refused by a running gateway over streamable HTTP and over stdio.

The verifier's own matrix (tests/test_identity.py) covers more variants in-process; this proves the
transports hand every request to it and refuse rather than fall back.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters
from mcp.shared.exceptions import MCPError

from mcp_gateway.config import load_settings
from mcp_gateway.devkeys import DevKey
from mcp_gateway.errors import UNAUTHENTICATED, UnauthenticatedError
from mcp_gateway.jose import REASONS as REASON_CLASSES
from mcp_gateway.server import build_verifier
from tests.conftest import ISSUER, Deployment, ExampleApi, make_deployment, serving_http
from tests.raw_mcp import raw_stdio

INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}},
}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(deployment: Deployment, **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "aud": deployment.audience,
        "sub": "alice",
        "roles": ["support"],
        "catalog": "internal",
        "iat": now,
        "exp": now + 300,
    }
    for name, value in changes.items():
        if value is _OMIT:
            claims.pop(name)
        else:
            claims[name] = value
    return claims


_OMIT = object()


def _sign(key: DevKey, claims: dict[str, Any], **headers: Any) -> str:
    return jwt.encode(claims, key.private_key, algorithm="EdDSA", headers={"kid": key.kid, **headers})


def _unsigned(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{_b64(signature)}"


def _hs256_with_public_key(key: DevKey, claims: dict[str, Any]) -> str:
    # Algorithm confusion: HMAC keyed with the public key's bytes, as an attacker who read the JWKS would.
    public = key.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = {"alg": "HS256", "typ": "JWT", "kid": key.kid}
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{_b64(hmac.new(public, signing_input.encode(), hashlib.sha256).digest())}"


def _tampered(key: DevKey, claims: dict[str, Any]) -> str:
    header, _, signature = _sign(key, claims).split(".")
    forged = _b64(json.dumps({**claims, "roles": ["hr"]}).encode())
    return f"{header}.{forged}.{signature}"


Forge = Callable[[Deployment], str]
CASES: dict[str, Forge] = {
    "expired": lambda d: _sign(d.key, _claims(d, iat=int(time.time()) - 600, exp=int(time.time()) - 120)),
    "not-yet-valid": lambda d: _sign(d.key, _claims(d, nbf=int(time.time()) + 600)),
    "issued-in-future": lambda d: _sign(d.key, _claims(d, iat=int(time.time()) + 600, exp=int(time.time()) + 900)),
    "lifetime-too-long": lambda d: _sign(d.key, _claims(d, exp=int(time.time()) + 7 * 86_400)),
    "wrong-issuer": lambda d: _sign(d.key, _claims(d, iss="https://evil.example")),
    "wrong-audience": lambda d: _sign(d.key, _claims(d, aud="https://other.example/mcp")),
    "missing-exp": lambda d: _sign(d.key, _claims(d, exp=_OMIT)),
    "missing-sub": lambda d: _sign(d.key, _claims(d, sub=_OMIT)),
    "empty-sub": lambda d: _sign(d.key, _claims(d, sub="")),
    "missing-catalog": lambda d: _sign(d.key, _claims(d, catalog=_OMIT)),
    "unknown-catalog": lambda d: _sign(d.key, _claims(d, catalog="admin")),
    "roles-not-a-list": lambda d: _sign(d.key, _claims(d, roles="hr")),
    "alg-none": lambda d: _unsigned({"alg": "none", "typ": "JWT", "kid": d.key.kid}, _claims(d)),
    "hs256-with-public-key": lambda d: _hs256_with_public_key(d.key, _claims(d)),
    "unknown-kid": lambda d: _sign(d.key, _claims(d), kid="someone-else"),
    "missing-kid": lambda d: jwt.encode(_claims(d), d.key.private_key, algorithm="EdDSA"),
    "jku-header": lambda d: _sign(d.key, _claims(d), jku="https://evil.example/jwks.json"),
    "embedded-jwk": lambda d: _sign(d.key, _claims(d), jwk=d.key.jwks()["keys"][0]),
    "signed-by-another-key": lambda d: jwt.encode(
        _claims(d), Ed25519PrivateKey.generate(), algorithm="EdDSA", headers={"kid": d.key.kid}
    ),
    "tampered-payload": lambda d: _tampered(d.key, _claims(d)),
    "oversized": lambda d: _sign(d.key, _claims(d, padding="x" * 20_000)),
    "not-a-jwt": lambda d: "not-a-jwt",
    "two-segments": lambda d: ".".join(_sign(d.key, _claims(d)).split(".")[:2]),
}


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory, example_api: ExampleApi, dev_key: DevKey) -> Iterator[Deployment]:
    deployment = make_deployment(tmp_path_factory.mktemp("matrix"), example_api, dev_key)
    with serving_http(deployment):
        yield deployment


def _post(deployment: Deployment, token: str) -> httpx.Response:
    with httpx.Client(trust_env=False, timeout=10) as client:
        return client.post(
            f"http://127.0.0.1:{deployment.port}/mcp",
            json=INITIALIZE,
            headers={
                "Accept": "application/json, text/event-stream",
                "Content-Type": "application/json",
                "Authorization": f"Bearer {token}",
            },
        )


def test_the_control_token_is_accepted(running: Deployment) -> None:
    assert _post(running, _sign(running.key, _claims(running))).status_code == 200


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_token_is_refused_over_http(running: Deployment, case: str) -> None:
    response = _post(running, CASES[case](running))
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer ")


async def test_every_hostile_token_is_refused_over_stdio_and_a_rotated_good_one_works(
    running: Deployment, tmp_path: Path
) -> None:
    # One stdio session: the token file is re-read on every request, so each case is written in turn.
    token_file = tmp_path / "token"
    token_file.write_text(_sign(running.key, _claims(running)))
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "mcp_gateway", "serve", "--transport", "stdio"],
        env={**running.env(), "MCP_GATEWAY_TOKEN_FILE": str(token_file)},
        cwd=str(running.root),
    )
    outcomes: dict[str, list[int | None]] = {}
    async with Client(params, mode="legacy", read_timeout_seconds=20) as client:
        assert (await client.list_tools()).tools
        for case in sorted(CASES):
            token_file.write_text(CASES[case](running))
            for attempt in (client.list_tools(), client.call_tool("crm.search", {"query": "ada"})):
                code: int | None = None
                try:
                    await attempt
                except MCPError as refused:
                    code = refused.code
                outcomes.setdefault(case, []).append(code)
        token_file.write_text(_sign(running.key, _claims(running)))
        assert (await client.call_tool("crm.search", {"query": "ada"})).is_error is not True
    assert outcomes == {case: [UNAUTHENTICATED, UNAUTHENTICATED] for case in CASES}


# Why each hostile token fails, as the operator is told (UnauthenticatedError.reason; never the caller).
REASONS: dict[str, str] = {
    "expired": "expired",
    "not-yet-valid": "not yet valid",
    "issued-in-future": "not yet valid",
    "lifetime-too-long": "lifetime too long",
    "wrong-issuer": "wrong issuer",
    "wrong-audience": "wrong audience",
    "missing-exp": "invalid claims",
    "missing-sub": "invalid claims",
    "empty-sub": "invalid claims",
    "missing-catalog": "invalid claims",
    "unknown-catalog": "invalid claims",
    "roles-not-a-list": "invalid claims",
    "alg-none": "unacceptable header",
    "hs256-with-public-key": "unacceptable header",
    "unknown-kid": "unknown key",
    "missing-kid": "unknown key",
    "jku-header": "unacceptable header",
    "embedded-jwk": "unacceptable header",
    "signed-by-another-key": "bad signature",
    "tampered-payload": "bad signature",
    "oversized": "malformed",
    "not-a-jwt": "malformed",
    "two-segments": "malformed",
}


def test_every_hostile_case_has_a_reason_class() -> None:
    assert set(REASONS) == set(CASES)
    assert set(REASONS.values()) <= REASON_CLASSES


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_refusal_names_its_reason_class(running: Deployment, case: str) -> None:
    verifier = build_verifier(load_settings(running.config))
    with pytest.raises(UnauthenticatedError) as refused:
        verifier.verify(CASES[case](running))
    assert refused.value.reason == REASONS[case]


def test_stdio_tells_the_operator_on_stderr_why_each_token_failed_without_printing_it(
    running: Deployment, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(_sign(running.key, _claims(running)))
    tokens: dict[str, str] = {}
    with raw_stdio(running, MCP_GATEWAY_TOKEN_FILE=str(token_file)) as session:
        session.initialize()
        for number, case in enumerate(sorted(CASES), start=1):
            tokens[case] = CASES[case](running)
            token_file.write_text(tokens[case])
            session.send({"jsonrpc": "2.0", "id": number, "method": "tools/list"})
            assert session.receive()["error"]["code"] == UNAUTHENTICATED
        stderr = session.close()
    refusals = [line for line in stderr.splitlines() if "request refused" in line]
    assert len(refusals) == len(CASES), "one line per refusal"
    for line, case in zip(refusals, sorted(CASES), strict=True):
        assert f"MCP_GATEWAY_TOKEN_FILE ({token_file}): {REASONS[case]}:" in line, line
    for case, token in tokens.items():
        # Neither the token nor its signature: the line names where the token was and why it failed, only.
        assert token not in stderr, case
        signature = token.rsplit(".", 1)[-1]
        assert len(signature) < 16 or signature not in stderr, case
