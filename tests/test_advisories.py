"""One named test per fixed vulnerability, as PyJWT's ``test_advisory.py`` keeps them: each failed before its fix.

Issue #15 (hostile run): timing that tells hidden tools from unknown ones, duplicate JSON keys in arguments, a
challenge that names an error when no credentials were sent, allowlisted addresses the egress guard would refuse
anyway, tokens minted longer than the gateway accepts and a lifetime measured from the wrong start.
"""

from __future__ import annotations

import json
import queue
import secrets
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS, INVALID_REQUEST, PARSE_ERROR

from mcp_gateway.config import EgressSettings, load_settings
from mcp_gateway.egress.addresses import AddressPinner, AddressRefusedError, literal_refusal
from mcp_gateway.errors import UnauthenticatedError
from mcp_gateway.gateway import Gateway
from mcp_gateway.identity import Principal
from mcp_gateway.server import build_gateway, build_verifier
from mcp_gateway.transports.wire import refusal
from tests.conftest import API_KEY, ISSUER, Deployment, ExampleApi, HttpGateway, serving_http
from tests.raw_mcp import INITIALIZE, INITIALIZED, call_line, jsonrpc_body, raw_stdio, streamable_session

ALICE = Principal("alice", ("support",), "internal", (), None, "test", 2**40)


@pytest.fixture
async def gateway(deployment: Deployment, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Gateway]:
    monkeypatch.setenv("INVENTORY_API_KEY", API_KEY)
    gateway = build_gateway(load_settings(deployment.config))
    yield gateway
    await gateway.aclose()
    gateway.audit.close()


# --- Hidden tools enumerable by timing -------------------------------------------------------------------------

TIMING_CALLS = 2000  # per name; ~0.3 ms each in-process, so the test takes about two seconds
# Before the fix the hidden path did one more database query than the unknown path: +0.28 ms on a 0.06 ms call
# here (+480 %), ~3 ms on the hostile run's database. Interleaved medians of the same path differ by ~1 %; 15 %
# leaves room for a loaded CI host and is still far below the cost of any extra query (~60 % of the call).
TIMING_BOUND = 0.15


async def _median_ms(gateway: Gateway, names: list[str], rounds: int = TIMING_CALLS) -> dict[str, float]:
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(rounds):
        # Interleaved, in rotated order, so drift in the host's load falls on every name alike.
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            started = time.perf_counter()
            with pytest.raises(MCPError):
                await gateway.call_tool(ALICE, name, {"employee_id": "e-7"}, "req-timing")
            samples[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) * 1000 for name, values in samples.items()}


@pytest.mark.slow
async def test_hidden_tool_cannot_be_told_from_an_unknown_name_by_timing(gateway: Gateway) -> None:
    hidden, unknown, glob = "hr.salary_lookup", "hr.nothing", "crm.nothing"  # glob: a policy allow matches it
    await _median_ms(
        gateway, [hidden, unknown, glob], rounds=200
    )  # warm-up: caches, connection pool, branch predictors
    medians = await _median_ms(gateway, [hidden, unknown, glob])
    print(f"timing medians (ms): {medians}")
    for other in (unknown, glob):
        assert abs(medians[hidden] - medians[other]) < TIMING_BOUND * medians[other], medians


# --- Duplicate keys: a parser differential ---------------------------------------------------------------------


def fresh_customer() -> tuple[str, str]:
    """Two customer ids no other test uses, so the backend's record of requests shows whether either was asked for."""
    first = 10_000_000 + secrets.randbelow(89_999_998)
    return f"c-{first}", f"c-{first + 1}"


def asked_for(api: ExampleApi, *ids: str) -> bool:
    paths = {f"/customers/{customer}" for customer in ids} | {f"/echo/{customer}" for customer in ids}
    return any(request["path"] in paths for request in api.seen())


@dataclass(frozen=True)
class Duplicate:
    """A message naming a member twice, built around two fresh customer ids; and how it must be refused."""

    id: str
    build: Callable[[str, str], str]
    code: int
    names_id: bool  # whether the refusal can name the request's id (not when `id` itself is the duplicate)


DUPLICATES = [
    # inside arguments
    Duplicate("argument", lambda a, b: call_line(f'{{"customer_id":"{a}","customer_id":"{b}"}}'), INVALID_PARAMS, True),
    Duplicate(
        "argument-escaped-spelling",
        lambda a, b: call_line(f'{{"customer_id":"{a}","\\u0063ustomer_id":"{b}"}}'),
        INVALID_PARAMS,
        True,
    ),
    Duplicate(
        "nested-in-array",
        lambda a, b: call_line(f'{{"customer_id":"{a}","x":[{{"k":1}},{{"d":{{"k":1,"k":2}}}}]}}'),
        INVALID_PARAMS,
        True,
    ),
    # elsewhere in params
    Duplicate(
        "tool-name",
        lambda a, b: call_line(f'{{"customer_id":"{a}"}},"name":"crm.search"'),
        INVALID_PARAMS,
        True,
    ),
    Duplicate(
        "meta",
        lambda a, b: call_line(f'{{"customer_id":"{a}"}},"_meta":{{"progressToken":1,"progressToken":2}}'),
        INVALID_PARAMS,
        True,
    ),
    # members of the message itself
    Duplicate(
        "request-id", lambda a, b: call_line(f'{{"customer_id":"{a}"}}')[:-1] + ',"id":8}', INVALID_REQUEST, False
    ),
    Duplicate(
        "method",
        lambda a, b: call_line(f'{{"customer_id":"{a}"}}')[:-1] + ',"method":"tools/list"}',
        INVALID_REQUEST,
        False,
    ),
]


PARSE_ERROR_BODY = {
    "code": PARSE_ERROR,
    "message": "Parse error: the message is not JSON",
    "data": {"code": "parse_error"},
}


def check_refused(body: dict[str, Any], case: Duplicate) -> None:
    assert (body["error"]["code"], body["error"]["data"]["code"]) == (case.code, "duplicate_key"), case.id
    assert "duplicate key" in body["error"]["message"], case.id
    assert body["id"] == (7 if case.names_id else None), case.id


@pytest.mark.parametrize("case", [pytest.param(case, id=case.id) for case in DUPLICATES])
def test_duplicate_keys_in_a_message_are_refused_before_the_sdk_parses_it(case: Duplicate) -> None:
    first, second = fresh_customer()
    error = refusal(case.build(first, second))
    assert error is not None
    check_refused(error.model_dump(mode="json", exclude_unset=True), case)
    assert refusal(call_line(f'{{"customer_id":"{first}"}}')) is None


def test_duplicate_keys_are_refused_over_stdio(deployment: Deployment, example_api: ExampleApi) -> None:
    token = deployment.mint("alice", ("support",), "internal")
    asked: list[str] = []
    with raw_stdio(deployment, MCP_GATEWAY_TOKEN=token) as session:
        session.initialize()
        for case in DUPLICATES:
            asked += fresh_customer()
            session.send(case.build(*asked[-2:]))
            check_refused(session.receive(), case)
        # What the stricter parser cannot read is not handed on either; a blank line is not a message.
        session.send("\n")
        session.send('{"jsonrpc":"2.0","id":8,"method":"tools/call","params":{"name":')
        assert session.receive() == {"jsonrpc": "2.0", "id": None, "error": PARSE_ERROR_BODY}
        session.send(call_line('{"customer_id":"c-100"}', request_id=9))  # the session carries on
        assert session.receive()["result"]["structuredContent"]["id"] == "c-100"
    assert not asked_for(example_api, *asked)


def test_duplicate_keys_are_refused_over_streamable_http(http_gateway: HttpGateway, example_api: ExampleApi) -> None:
    token = http_gateway.deployment.mint("alice", ("support",), "internal")
    asked: list[str] = []
    with streamable_session(http_gateway, token) as (client, headers):
        for case in DUPLICATES:
            asked += fresh_customer()
            refused = client.post("/mcp", content=case.build(*asked[-2:]), headers=headers)
            assert refused.status_code == 400, case.id
            check_refused(refused.json(), case)
        allowed = client.post("/mcp", content=call_line('{"customer_id":"c-100"}'), headers=headers)
        assert jsonrpc_body(allowed)["result"]["structuredContent"]["id"] == "c-100"
    assert not asked_for(example_api, *asked)


def test_duplicate_keys_are_refused_over_sse(http_gateway: HttpGateway, example_api: ExampleApi) -> None:
    token = http_gateway.deployment.mint("alice", ("support",), "internal")
    events: queue.Queue[str] = queue.Queue()
    auth = {"Authorization": f"Bearer {token}"}
    asked: list[str] = []
    with httpx.Client(base_url=http_gateway.url, trust_env=False, timeout=20) as client:
        with client.stream("GET", "/sse", headers=auth) as stream:

            def read() -> None:
                # Ends when the gateway is stopped after the test (closing the stream does not wake a blocked read).
                with suppress(httpx.HTTPError, httpx.StreamError, ValueError):
                    for line in stream.iter_lines():
                        if line.startswith("data:"):
                            events.put(line.removeprefix("data:").strip())

            threading.Thread(target=read, daemon=True).start()
            endpoint = events.get(timeout=20)
            post = {**auth, "Content-Type": "application/json"}
            assert client.post(endpoint, json=INITIALIZE, headers=post).status_code == 202
            assert "result" in json.loads(events.get(timeout=20))
            assert client.post(endpoint, json=INITIALIZED, headers=post).status_code == 202
            for case in DUPLICATES:
                asked += fresh_customer()
                refused = client.post(endpoint, content=case.build(*asked[-2:]), headers=post)
                assert refused.status_code == 400, case.id
                check_refused(refused.json(), case)
            allowed = client.post(endpoint, content=call_line('{"customer_id":"c-100"}'), headers=post)
            assert allowed.status_code == 202
            assert json.loads(events.get(timeout=20))["result"]["structuredContent"]["id"] == "c-100"
    assert not asked_for(example_api, *asked)


# Any JSON value; keys from a small alphabet so that objects often have several members.
SCALARS = st.none() | st.booleans() | st.integers(-1000, 1000) | st.text(alphabet="abcxyz ", max_size=8)
KEYS = st.text(alphabet="abkxy_", min_size=1, max_size=6)
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=3))


def objects_in(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + sum(objects_in(item) for item in value.values())
    if isinstance(value, list):
        return sum(objects_in(item) for item in value)
    return 0


def render(value: Any, target: int, escaped: bool, seen: list[int] | None = None) -> str:
    """JSON text for ``value`` in which the ``target``-th object (pre-order) names one member twice (none if -1).

    The second spelling of the name is \\u-escaped when ``escaped``: the same name to every JSON parser."""
    seen = [0] if seen is None else seen
    if isinstance(value, list):
        return "[" + ",".join(render(item, target, escaped, seen) for item in value) + "]"
    if not isinstance(value, dict):
        return json.dumps(value)
    index, seen[0] = seen[0], seen[0] + 1
    members = [f"{json.dumps(key)}:{render(item, target, escaped, seen)}" for key, item in value.items()]
    if index == target:
        key = next(iter(value), "k")
        spelled = '"' + "".join(f"\\u{ord(char):04x}" for char in key) + '"' if escaped else json.dumps(key)
        members += [f'{json.dumps(key)}:"first"'] * (key not in value) + [f'{spelled}:"second"']
    return "{" + ",".join(members) + "}"


@settings(max_examples=300, deadline=None, database=None)
@given(extra=st.dictionaries(KEYS, VALUES, max_size=4), data=st.data(), escaped=st.booleans())
def test_a_duplicate_key_at_any_depth_inside_arguments_is_refused(
    extra: dict[str, Any], data: Any, escaped: bool
) -> None:
    arguments = {"marker": "c-1", **extra}
    target = data.draw(st.integers(0, objects_in(arguments) - 1), label="object with the duplicate")
    error = refusal(call_line(render(arguments, target, escaped)))
    assert error is not None
    assert (error.id, error.error.code, error.error.data) == (7, INVALID_PARAMS, {"code": "duplicate_key"})
    clean = call_line(render(arguments, -1, escaped))
    assert refusal(clean) is None
    assert json.loads(clean)["params"]["arguments"] == arguments


@pytest.fixture
def echo_gateway(deployment: Deployment, example_api: ExampleApi) -> Iterator[HttpGateway]:
    """A gateway with a tool that accepts any further (nested) arguments, so a duplicate can sit at any depth."""
    path = deployment.root / "catalogs" / "internal.yaml"
    catalog = yaml.safe_load(path.read_text())
    catalog["tools"].append(
        {
            "name": "crm.echo",
            "title": "Echo a marker",
            "description": "Test tool: further arguments are accepted and not sent.",
            "input_schema": {
                "type": "object",
                "properties": {"marker": {"type": "string", "pattern": "^c-[0-9]{8,9}$"}},
                "required": ["marker"],
            },
            "annotations": {"read_only_hint": True},
            "backend": {
                "type": "http",
                "method": "GET",
                "url": f"{example_api.url}/echo/{{marker}}",
                "credential_env": "INVENTORY_API_KEY",
            },
        }
    )
    path.write_text(yaml.safe_dump(catalog))
    with serving_http(deployment) as served:
        yield served


@settings(max_examples=30, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(extra=st.dictionaries(KEYS, VALUES, max_size=4), data=st.data(), escaped=st.booleans())
def test_a_duplicate_key_at_any_depth_never_reaches_the_backend(
    echo_gateway: HttpGateway, example_api: ExampleApi, extra: dict[str, Any], data: Any, escaped: bool
) -> None:
    token = echo_gateway.deployment.mint("alice", ("support",), "internal")
    refused_marker, allowed_marker = fresh_customer()
    arguments = {"marker": refused_marker, **extra}
    target = data.draw(st.integers(0, objects_in(arguments) - 1), label="object with the duplicate")
    with streamable_session(echo_gateway, token) as (client, headers):
        refused = client.post(
            "/mcp", content=call_line(render(arguments, target, escaped), name="crm.echo"), headers=headers
        )
        assert refused.status_code == 400
        assert refused.json()["error"]["data"]["code"] == "duplicate_key"
        # The same arguments without the duplicate do reach it: the refusal is what kept the first call away.
        clean = render({**arguments, "marker": allowed_marker}, -1, escaped)
        allowed = client.post("/mcp", content=call_line(clean, name="crm.echo"), headers=headers)
        assert "result" in jsonrpc_body(allowed), allowed.text
    assert asked_for(example_api, allowed_marker)
    assert not asked_for(example_api, refused_marker)


# --- Token lifetime: minted longer than accepted, measured from a future nbf ---------------------------------


def test_a_future_nbf_without_iat_does_not_stretch_the_lifetime_cap(deployment: Deployment) -> None:
    settings = load_settings(deployment.config).identity
    verifier = build_verifier(load_settings(deployment.config))
    now = int(time.time())
    nbf = now + settings.leeway  # accepted now, within the leeway
    claims = {"iss": ISSUER, "aud": deployment.audience, "sub": "alice", "roles": ["support"], "catalog": "internal"}
    stretched = {**claims, "nbf": nbf, "exp": nbf + settings.max_token_lifetime + settings.leeway}
    key = deployment.key
    with pytest.raises(UnauthenticatedError) as refused:
        verifier.verify(jwt.encode(stretched, key.private_key, algorithm="EdDSA", headers={"kid": key.kid}))
    assert refused.value.reason == "lifetime too long"
    fitting = {**claims, "nbf": nbf, "exp": now + settings.max_token_lifetime}
    assert verifier.verify(jwt.encode(fitting, key.private_key, algorithm="EdDSA", headers={"kid": key.kid}))


def test_token_issue_does_not_mint_what_the_gateway_refuses(deployment: Deployment) -> None:
    cap = load_settings(deployment.config).identity.max_token_lifetime
    command = ["token", "issue", "-s", "alice", "-r", "support", "--catalog", "internal", "--ttl", str(cap + 1)]
    result = subprocess.run(
        [sys.executable, "-m", "mcp_gateway", *command],
        env=deployment.env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (result.returncode, result.stdout) == (2, "")
    assert "--ttl" in result.stderr


# --- Allowlisted addresses no connection should reach -----------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "flagged"),
    [
        # cloud metadata endpoints, link-local or not
        pytest.param("169.254.169.254", "cloud metadata", id="aws-gcp-azure-metadata"),
        pytest.param("169.254.170.2", "cloud metadata", id="ecs-task-metadata"),
        pytest.param("[fd00:ec2::254]", "cloud metadata", id="aws-metadata-ipv6"),
        pytest.param("100.100.100.200", "cloud metadata", id="alibaba-metadata"),
        pytest.param("168.63.129.16", "cloud metadata", id="azure-wireserver"),
        pytest.param("metadata.google.internal.", "metadata host name", id="gcp-metadata-name"),
        # the same address spelled otherwise
        pytest.param("2852039166", "169.254.169.254", id="decimal"),
        pytest.param("0xa9.0xfe.0xa9.0xfe", "169.254.169.254", id="hex"),
        pytest.param("0251.0376.0251.0376", "169.254.169.254", id="octal"),
        pytest.param("[::ffff:169.254.169.254]", "169.254.169.254", id="ipv4-mapped"),
        pytest.param("[64:ff9b::a9fe:a9fe]", "169.254.169.254", id="nat64"),
        pytest.param("[2002:a9fe:a9fe::1]", "169.254.169.254", id="6to4"),
        # other addresses nothing should be sent to
        pytest.param("169.254.1.1", "link-local", id="link-local"),
        pytest.param("[fe80::1]", "link-local", id="link-local-ipv6"),
        pytest.param("0.0.0.0", "unspecified", id="unspecified"),  # noqa: S104 - the address under test
        pytest.param("[::]", "unspecified", id="unspecified-ipv6"),
        pytest.param("224.0.0.1", "multicast", id="multicast"),
        pytest.param("240.0.0.1", "reserved", id="reserved"),
        # fine
        pytest.param("127.0.0.1", None, id="loopback"),
        pytest.param("[::1]", None, id="loopback-ipv6"),
        pytest.param("10.0.0.7", None, id="private"),
        pytest.param("api.internal.example", None, id="name"),
        pytest.param("deadbeef.example", None, id="hex-looking-name"),
    ],
)
def test_allowlist_entries_naming_addresses_no_connection_should_reach_are_flagged(
    host: str, flagged: str | None
) -> None:
    reason = literal_refusal(host)
    if flagged is None:
        assert reason is None
    else:
        assert reason is not None
        assert flagged in reason


@pytest.mark.parametrize(
    "resolved",
    [
        pytest.param("fd00:ec2::254", id="aws-metadata-ipv6"),
        pytest.param("100.100.100.200", id="alibaba-metadata"),
        pytest.param("168.63.129.16", id="azure-wireserver"),
        pytest.param("2002:a9fe:a9fe::1", id="6to4-link-local"),
    ],
)
async def test_a_name_resolving_to_a_metadata_endpoint_is_refused(resolved: str) -> None:
    async def resolver(host: str, port: int) -> list[str]:
        return [resolved]

    pinner = AddressPinner(EgressSettings(allow=("http://tools.internal.example:80",)), resolver=resolver)
    with pytest.raises(AddressRefusedError):
        await pinner.addresses("tools.internal.example", 80)
