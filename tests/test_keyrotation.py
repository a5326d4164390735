"""Key rotation: the JWKS is re-read on unknown kids (rate-limited) and on a timer; stale keys fail closed.

Every test fetches from a real JWKS server on 127.0.0.1 that counts its fetches, through the egress guard.
"""

from __future__ import annotations

import itertools
import json
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import hypothesis
import pytest
from hypothesis import strategies as st
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from mcp_gateway.config import EgressSettings, IdentitySettings
from mcp_gateway.devkeys import DevKey, ensure_dev_key
from mcp_gateway.errors import UNAUTHENTICATED, UnauthenticatedError
from mcp_gateway.identity import JwtVerifier
from mcp_gateway.jose import KEYS_STALE, UNKNOWN_KEY
from mcp_gateway.jwks import parse_jwks
from mcp_gateway.keyring import KeyRing, load_keyring
from tests.conftest import ISSUER as GATEWAY_ISSUER
from tests.conftest import ExampleApi, make_deployment, serving_http
from tests.jwks_server import JwksServer, serving_jwks
from tests.raw_mcp import raw_stdio

ISSUER = "https://idp.rotation.test"
AUDIENCE = "https://gateway.rotation.test/mcp"
MIN_REFRESH = 30.0
REFRESH = 300.0
MAX_STALE = 3600.0


class Monotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[DevKey, DevKey]:
    return ensure_dev_key(tmp_path_factory.mktemp("a")), ensure_dev_key(tmp_path_factory.mktemp("b"))


@pytest.fixture
def idp() -> Iterator[JwksServer]:
    with serving_jwks() as server:
        yield server


def identity(**overrides: Any) -> IdentitySettings:
    values: dict[str, Any] = {
        "issuer": ISSUER,
        "audience": AUDIENCE,
        "algorithms": ["EdDSA"],
        "jwks_min_refresh": MIN_REFRESH,
        "jwks_refresh": REFRESH,
        "jwks_max_stale": MAX_STALE,
        **overrides,
    }
    return IdentitySettings(**values)


def url_verifier(idp: JwksServer, clock: Monotonic) -> JwtVerifier:
    settings = identity(jwks_url=idp.url)
    egress = EgressSettings(allow=(idp.url.removesuffix("/jwks"),))
    ring = load_keyring(settings, egress)
    # The ring read at start-up; the clock is the test's from here on.
    ring_with_clock = KeyRing(settings, ring.current(), fetch=ring._fetch, clock=clock, document=idp.body)
    return JwtVerifier(settings, ring_with_clock)


def mint(key: DevKey, subject: str = "alice", **headers: Any) -> str:
    return key.mint(subject, roles=("support",), catalog="internal", issuer=ISSUER, audience=AUDIENCE, headers=headers)


async def accepted(verifier: JwtVerifier, token: str) -> bool:
    return await verifier.verify_token(token) is not None


async def test_a_rotation_is_picked_up_on_the_first_token_of_the_new_key(
    idp: JwksServer, keys: tuple[DevKey, DevKey]
) -> None:
    old, new = keys
    idp.publish(old.jwks())
    clock = Monotonic()
    verifier = url_verifier(idp, clock)
    assert idp.count() == 1  # the start-up read
    assert await accepted(verifier, mint(old))
    assert not await accepted(verifier, mint(new))  # under jwks_min_refresh since start-up: no fetch
    assert idp.count() == 1

    idp.publish(old.jwks(), new.jwks())
    clock.now += MIN_REFRESH
    assert await accepted(verifier, mint(new))
    assert idp.count() == 2
    assert await accepted(verifier, mint(old))  # both keys verify during the overlap
    assert idp.count() == 2


async def test_a_removed_key_stops_verifying_after_the_refresh_cached_tokens_included(
    idp: JwksServer, keys: tuple[DevKey, DevKey]
) -> None:
    old, new = keys
    idp.publish(old.jwks(), new.jwks())
    verifier = url_verifier(idp, Monotonic())
    cached = mint(old)
    assert await accepted(verifier, cached)
    assert await accepted(verifier, mint(new))

    idp.publish(new.jwks())
    assert await accepted(verifier, cached)  # until the re-read, the old key is still the IdP's word
    await verifier.keyring.refresh()
    assert not await accepted(verifier, cached)
    with pytest.raises(UnauthenticatedError) as refused:
        verifier.verify(mint(old))
    assert refused.value.reason == UNKNOWN_KEY
    assert await accepted(verifier, mint(new))


async def test_the_timer_rereads_the_jwks_while_serving(idp: JwksServer, keys: tuple[DevKey, DevKey]) -> None:
    old, new = keys
    idp.publish(old.jwks())
    settings = identity(jwks_url=idp.url, jwks_refresh=0.2, jwks_min_refresh=0.1)
    verifier = JwtVerifier(settings, load_keyring(settings, EgressSettings(allow=(idp.url.removesuffix("/jwks"),))))
    token = mint(old)
    assert await accepted(verifier, token)
    async with verifier.keyring.running():
        idp.publish(new.jwks())
        with anyio.fail_after(10):
            while await accepted(verifier, token):
                await anyio.sleep(0.05)
    assert idp.count() >= 2
    verifier.verify(mint(new))


async def test_a_thousand_forged_kids_cost_the_idp_one_fetch_per_window(
    idp: JwksServer, keys: tuple[DevKey, DevKey]
) -> None:
    old, _ = keys
    idp.publish(old.jwks())
    clock = Monotonic()
    verifier = url_verifier(idp, clock)
    results: list[bool] = []

    async def flood() -> None:
        async def one() -> None:
            results.append(await accepted(verifier, mint(old, kid=secrets.token_hex(8))))

        async with anyio.create_task_group() as group:
            for _ in range(1000):
                group.start_soon(one)

    clock.now += MIN_REFRESH
    await flood()
    assert idp.count() == 2  # start-up, then one fetch for the whole flood
    clock.now += MIN_REFRESH / 2
    await flood()
    assert idp.count() == 2  # still inside the window
    clock.now += MIN_REFRESH / 2
    await flood()
    assert idp.count() == 3
    assert results == [False] * 3000
    assert await accepted(verifier, mint(old))


async def test_a_herd_of_callers_with_the_new_key_shares_one_fetch(
    idp: JwksServer, keys: tuple[DevKey, DevKey]
) -> None:
    old, new = keys
    idp.publish(old.jwks())
    clock = Monotonic()
    verifier = url_verifier(idp, clock)
    idp.publish(old.jwks(), new.jwks())
    clock.now += MIN_REFRESH
    results: list[bool] = []

    async def one(subject: str) -> None:
        results.append(await accepted(verifier, mint(new, subject)))

    async with anyio.create_task_group() as group:
        for index in range(200):
            group.start_soon(one, f"user-{index}")
    assert results == [True] * 200  # those that arrived during the fetch waited for it
    assert idp.count() == 2


async def test_an_unreachable_idp_keeps_the_last_keys_until_max_stale_then_fails_closed(
    idp: JwksServer, keys: tuple[DevKey, DevKey]
) -> None:
    old, new = keys
    idp.publish(old.jwks())
    clock = Monotonic()
    verifier = url_verifier(idp, clock)
    cached = mint(old)
    assert await accepted(verifier, cached)

    idp.down = True
    clock.now += REFRESH
    await verifier.keyring.refresh()
    assert idp.count() == 2
    assert await accepted(verifier, mint(old, "bob"))  # the last good keys serve
    clock.now += MAX_STALE - REFRESH
    assert await accepted(verifier, cached)
    clock.now += 1
    for token in (cached, mint(old, "carol")):
        assert not await accepted(verifier, token)
        with pytest.raises(UnauthenticatedError) as refused:
            verifier.verify(token)
        assert refused.value.reason == KEYS_STALE
    # A token naming a new kid re-reads (rate-limited); still down, still refused.
    assert not await accepted(verifier, mint(new))

    idp.down = False
    clock.now += MIN_REFRESH
    await verifier.keyring.refresh()
    assert await accepted(verifier, cached)


async def test_a_garbage_answer_keeps_the_last_good_keys(idp: JwksServer, keys: tuple[DevKey, DevKey]) -> None:
    old, _ = keys
    idp.publish(old.jwks())
    verifier = url_verifier(idp, Monotonic())
    for body in (b"not json", b'{"keys": []}', json.dumps({"keys": [{"kty": "oct", "kid": "x", "k": "AA"}]}).encode()):
        idp.body = body
        await verifier.keyring.refresh()
        assert await accepted(verifier, mint(old, secrets.token_hex(4)))
    assert idp.count() == 4


async def test_a_refetch_goes_through_the_egress_guard(idp: JwksServer, keys: tuple[DevKey, DevKey]) -> None:
    old, new = keys
    idp.publish(old.jwks())
    settings = identity(jwks_url=idp.url)
    ring = load_keyring(settings, EgressSettings(allow=(idp.url.removesuffix("/jwks"),)))
    # The same ring, its fetch built for an allowlist that no longer holds the IdP: nothing leaves.
    from mcp_gateway.keyring import url_fetcher

    clock = Monotonic()
    fenced = KeyRing(settings, ring.current(), fetch=url_fetcher(EgressSettings(allow=())), clock=clock)
    verifier = JwtVerifier(settings, fenced)
    idp.publish(old.jwks(), new.jwks())
    clock.now += MIN_REFRESH
    assert not await accepted(verifier, mint(new))
    assert idp.count() == 1


async def test_an_oversized_or_redirecting_answer_keeps_the_last_good_keys(
    idp: JwksServer, keys: tuple[DevKey, DevKey]
) -> None:
    old, new = keys
    idp.publish(old.jwks())
    clock = Monotonic()
    verifier = url_verifier(idp, clock)
    # Valid JSON holding the new key, padded past the 1 MiB bound: refused whole, not parsed.
    idp.body = json.dumps({"keys": new.jwks()["keys"], "padding": "x" * 1_100_000}).encode()
    clock.now += MIN_REFRESH
    assert not await accepted(verifier, mint(new))
    assert verifier.keyring.generation == 0
    idp.redirect = "http://127.0.0.1:9/elsewhere"  # never followed
    clock.now += MIN_REFRESH
    assert not await accepted(verifier, mint(new))
    assert idp.count() == 3
    assert await accepted(verifier, mint(old))


def write_atomically(path: Path, document: dict[str, Any]) -> None:
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps(document))
    os.replace(partial, path)


async def test_a_rotated_jwks_file_is_reread_when_it_changes(tmp_path: Path, keys: tuple[DevKey, DevKey]) -> None:
    old, new = keys
    path = tmp_path / "jwks.json"
    write_atomically(path, old.jwks())
    settings = identity(jwks_file=str(path))
    ring = load_keyring(settings, EgressSettings())
    clock = Monotonic()
    verifier = JwtVerifier(settings, KeyRing(settings, ring.current(), clock=clock, document=path.read_bytes()))
    cached = mint(old)
    assert await accepted(verifier, cached)
    await verifier.keyring.refresh()
    assert verifier.keyring.generation == 0  # unchanged bytes change nothing

    write_atomically(path, {"keys": [*old.jwks()["keys"], *new.jwks()["keys"]]})
    clock.now += MIN_REFRESH
    assert await accepted(verifier, mint(new))
    write_atomically(path, new.jwks())
    await verifier.keyring.refresh()
    assert not await accepted(verifier, cached)

    path.write_text('{"keys": [')  # a half-written file: the last good keys stay
    await verifier.keyring.refresh()
    assert await accepted(verifier, mint(new, "bob"))
    path.unlink()  # gone: the last good keys serve until max_stale, then nothing does
    await verifier.keyring.refresh()
    assert await accepted(verifier, mint(new, "carol"))
    clock.now += MAX_STALE + 1
    assert not await accepted(verifier, mint(new, "dave"))


async def test_a_running_gateway_picks_up_a_rotation_over_http(
    tmp_path: Path, example_api: ExampleApi, keys: tuple[DevKey, DevKey], idp: JwksServer
) -> None:
    old, new = keys
    idp.publish(old.jwks())
    origin = idp.url.removesuffix("/jwks")
    deployment = make_deployment(
        tmp_path,
        example_api,
        old,
        identity={"jwks_url": idp.url, "jwks_file": None, "jwks_refresh": 1.0, "jwks_min_refresh": 0.5},
        egress={"allow": [example_api.url, origin]},
    )

    async def tools(token: str) -> list[str]:
        async with (
            create_mcp_http_client(headers={"Authorization": f"Bearer {token}"}) as http,
            Client(streamable_http_client(f"{base}/mcp", http_client=http), read_timeout_seconds=20) as client,
        ):
            return sorted(tool.name for tool in (await client.list_tools()).tools)

    with serving_http(deployment) as served:
        base = served.url
        old_token = deployment.mint("alice", ("support",), "internal")
        assert "crm.customer_lookup" in await tools(old_token)
        idp.publish(old.jwks(), new.jwks())
        await anyio.sleep(0.6)  # past jwks_min_refresh since start-up
        new_token = new.mint(
            "bob", roles=("support",), catalog="internal", issuer=GATEWAY_ISSUER, audience=deployment.audience
        )
        assert "crm.customer_lookup" in await tools(new_token)

        idp.publish(new.jwks())
        async with httpx.AsyncClient() as http:
            with anyio.fail_after(15):
                while True:
                    answer = await http.post(
                        f"{base}/mcp", headers={"Authorization": f"Bearer {old_token}"}, content=b"{}"
                    )
                    if answer.status_code == 401:
                        break
                    await anyio.sleep(0.2)
        assert "crm.customer_lookup" in await tools(new_token)


@hypothesis.settings(
    max_examples=60, deadline=None, suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture]
)
@hypothesis.given(
    steps=st.lists(
        st.tuples(st.floats(min_value=0, max_value=2 * MIN_REFRESH), st.integers(min_value=1, max_value=30)),
        min_size=1,
        max_size=25,
    )
)
async def test_whatever_the_timing_of_forged_kids_fetches_are_min_refresh_apart(
    keys: tuple[DevKey, DevKey], steps: list[tuple[float, int]]
) -> None:
    old, _ = keys
    clock = Monotonic()
    fetched_at: list[float] = []
    document = json.dumps(old.jwks()).encode()

    async def fetch(url: str) -> bytes:
        fetched_at.append(clock.now)
        await anyio.sleep(0)  # let the rest of the burst arrive while this fetch is in flight
        return document

    settings = identity(jwks_url="http://127.0.0.1:9/jwks")
    verifier = JwtVerifier(settings, KeyRing(settings, parse_jwks(document), fetch=fetch, clock=clock))
    forged = [mint(old, kid=f"forged-{index}") for index in range(30)]
    for advance, burst in steps:
        clock.now += advance
        async with anyio.create_task_group() as group:
            for token in forged[:burst]:
                group.start_soon(verifier.verify_token, token)
    assert all(later - earlier >= MIN_REFRESH for earlier, later in itertools.pairwise(fetched_at))
    # The start-up read counts as an attempt: the first fetch comes a window after it at the earliest.
    assert len(fetched_at) <= (clock.now - 1000.0) // MIN_REFRESH


def test_a_stdio_gateway_picks_up_a_rotation_on_the_first_token_of_the_new_key(
    tmp_path: Path, example_api: ExampleApi, keys: tuple[DevKey, DevKey], idp: JwksServer
) -> None:
    # The timer (jwks_refresh) is far away: only the unknown kid can make the gateway re-read the JWKS.
    old, new = keys
    idp.publish(old.jwks())
    deployment = make_deployment(
        tmp_path,
        example_api,
        old,
        identity={"jwks_url": idp.url, "jwks_file": None, "jwks_refresh": 3600.0, "jwks_min_refresh": 0.5},
        egress={"allow": [example_api.url, idp.url.removesuffix("/jwks")]},
    )
    token_file = tmp_path / "token"
    token_file.write_text(deployment.mint("alice", ("support",), "internal"))
    new_token = new.mint(
        "bob", roles=("support",), catalog="internal", issuer=GATEWAY_ISSUER, audience=deployment.audience
    )
    forged = ensure_dev_key(tmp_path / "never-published").mint(
        "mallory", roles=("support",), catalog="internal", issuer=GATEWAY_ISSUER, audience=deployment.audience
    )
    with raw_stdio(deployment, MCP_GATEWAY_TOKEN_FILE=str(token_file)) as session:
        session.initialize()
        session.send({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
        assert "result" in session.receive()
        fetched = idp.fetches
        idp.publish(old.jwks(), new.jwks())
        time.sleep(0.6)  # past jwks_min_refresh since start-up
        token_file.write_text(new_token)
        session.send({"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
        listed = session.receive()
        assert "result" in listed, listed
        assert idp.fetches == fetched + 1
        # A kid the IdP never published is still refused, after (at most) one more read.
        time.sleep(0.6)
        token_file.write_text(forged)
        session.send({"jsonrpc": "2.0", "id": 3, "method": "tools/list"})
        assert session.receive()["error"]["code"] == UNAUTHENTICATED
        assert idp.fetches == fetched + 2
        stderr = session.close()
    refusals = [line for line in stderr.splitlines() if "request refused" in line]
    assert len(refusals) == 1, "the renewed token is not reported as refused; the forged one is, once"
    assert UNKNOWN_KEY in refusals[0]
