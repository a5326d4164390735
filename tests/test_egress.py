"""The egress guard on both HTTP stacks: allowlisted origins only, pinned addresses, no proxies, no redirects."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import httpx2
import pytest

from mcp_gateway.config import EgressSettings
from mcp_gateway.egress import (
    MODEL_HEADERS,
    EgressDeniedError,
    Httpx2EgressDeniedError,
    guarded_async_client,
    guarded_client,
    guarded_get,
    guarded_httpx2_client,
)
from mcp_gateway.errors import ConfigError
from tests.conftest import ExampleApi, free_port
from tests.test_upstream import RawServer


@contextmanager
def start_up_failure(cause: type[Exception]) -> Iterator[None]:
    """The start-up fetch fails as a ``ConfigError`` caused by ``cause`` (the ``httpx`` error it translated)."""
    with pytest.raises(ConfigError) as failed:
        yield
    assert isinstance(failed.value.__cause__, cause)


def test_allowlisted_origin_is_fetched(example_api: ExampleApi) -> None:
    body = guarded_get(EgressSettings(allow=(example_api.url,)), f"{example_api.url}/health")
    assert body == b'{"status":"ok"}'


def test_origin_off_the_allowlist_is_refused_before_connecting(example_api: ExampleApi) -> None:
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens: a connection attempt would be ConnectError
    with start_up_failure(EgressDeniedError):
        guarded_get(EgressSettings(allow=(example_api.url,)), f"{closed}/jwks.json")


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("http://127.0.0.1:{port}@evil.example/", id="userinfo-trick"),
        pytest.param("https://127.0.0.1:{port}/", id="other-scheme"),
        pytest.param("file:///etc/passwd", id="file-url"),
    ],
)
def test_lookalike_urls_are_refused(example_api: ExampleApi, url: str) -> None:
    port = example_api.url.rsplit(":", 1)[1]
    with start_up_failure(EgressDeniedError):
        guarded_get(EgressSettings(allow=(example_api.url,)), url.format(port=port))


def test_response_over_the_cap_is_refused(example_api: ExampleApi) -> None:
    with start_up_failure(httpx.DecodingError):
        guarded_get(EgressSettings(allow=(example_api.url,)), f"{example_api.url}/_seen", max_bytes=1)


def test_error_status_is_an_error(example_api: ExampleApi) -> None:
    with start_up_failure(httpx.HTTPStatusError):
        guarded_get(EgressSettings(allow=(example_api.url,)), f"{example_api.url}/nope")


def test_connect_failure_at_start_up_is_a_config_error() -> None:
    closed = f"http://127.0.0.1:{free_port()}"  # on the allowlist, but nothing listens
    with start_up_failure(httpx.ConnectError):
        guarded_get(EgressSettings(allow=(closed,)), f"{closed}/jwks.json")


# --- Address pinning, on both HTTP stacks ---------------------------------------------------------------------


class Resolver:
    """A scripted DNS edge: answers from a list, one answer per lookup, and counts lookups."""

    def __init__(self, *answers: list[str]) -> None:
        self.answers = list(answers)
        self.lookups: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        return self.sync(host, port)

    def sync(self, host: str, port: int) -> list[str]:
        self.lookups.append((host, port))
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


def named(api: ExampleApi) -> tuple[str, EgressSettings]:
    """The example API under a name only the scripted resolver knows (the system resolver would fail on it)."""
    port = api.url.rsplit(":", 1)[1]
    origin = f"http://inventory.gateway.test:{port}"
    return origin, EgressSettings(allow=(origin,))


async def fetch(stack: str, egress: EgressSettings, url: str, resolver: Resolver) -> int:
    if stack == "httpx":
        async with guarded_async_client(egress, resolver=resolver) as client:
            return (await client.get(url)).status_code
    async with guarded_httpx2_client(egress, resolver=resolver, headers=None) as client2:
        return (await client2.get(url)).status_code


STACKS = [pytest.param("httpx", id="httpx"), pytest.param("httpx2", id="httpx2")]
DENIED = (EgressDeniedError, Httpx2EgressDeniedError)


@pytest.mark.parametrize("stack", STACKS)
async def test_connection_goes_to_the_address_the_guard_checked(example_api: ExampleApi, stack: str) -> None:
    # The name does not exist in DNS: reaching the API proves the socket went to the checked address, and that
    # the replaced connection pool is the one each stack uses.
    origin, egress = named(example_api)
    resolver = Resolver(["127.0.0.1"])
    assert await fetch(stack, egress, f"{origin}/health", resolver) == 200
    assert resolver.lookups == [("inventory.gateway.test", int(origin.rsplit(":", 1)[1]))]


@pytest.mark.parametrize("stack", STACKS)
@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(["169.254.169.254"], id="cloud-metadata"),
        pytest.param(["127.0.0.1", "169.254.169.254"], id="mixed-answer"),
        pytest.param(["::ffff:169.254.169.254"], id="ipv4-mapped-metadata"),
        pytest.param(["0.0.0.0"], id="unspecified"),  # noqa: S104 - a resolver answer, not a bind
        pytest.param(["224.0.0.1"], id="multicast"),
        pytest.param(["fe80::1"], id="ipv6-link-local"),
        pytest.param([], id="no-address"),
    ],
)
async def test_name_resolving_to_a_forbidden_address_is_refused(
    example_api: ExampleApi, stack: str, answer: list[str]
) -> None:
    origin, egress = named(example_api)
    with pytest.raises(DENIED):
        await fetch(stack, egress, f"{origin}/health", Resolver(answer))


@pytest.mark.parametrize("stack", STACKS)
async def test_rebinding_between_connections_is_checked_again(example_api: ExampleApi, stack: str) -> None:
    # First lookup: the API. Next lookup (a new connection): the metadata address. The second is refused, and
    # no lookup happens between a check and its connect (one lookup per connection).
    origin, egress = named(example_api)
    resolver = Resolver(["127.0.0.1"], ["169.254.169.254"])
    assert await fetch(stack, egress, f"{origin}/health", resolver) == 200
    with pytest.raises(DENIED):
        await fetch(stack, egress, f"{origin}/health", resolver)
    assert len(resolver.lookups) == 2


@pytest.mark.parametrize("stack", STACKS)
async def test_origin_off_the_allowlist_is_refused_on_both_stacks(example_api: ExampleApi, stack: str) -> None:
    resolver = Resolver(["127.0.0.1"])
    egress = EgressSettings(allow=(example_api.url,))
    with pytest.raises(DENIED):
        await fetch(stack, egress, f"http://127.0.0.1:{free_port()}/x", resolver)
    assert resolver.lookups == []


@pytest.mark.parametrize("stack", STACKS)
async def test_proxy_variables_and_netrc_are_ignored(
    example_api: ExampleApi, stack: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with RawServer() as proxy:
        for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.setenv(name, proxy.url)
        netrc = tmp_path / "netrc"
        netrc.write_text("machine 127.0.0.1 login leak password leaked\n")
        monkeypatch.setenv("NETRC", str(netrc))
        egress = EgressSettings(allow=(example_api.url,))
        assert await fetch(stack, egress, f"{example_api.url}/health", Resolver(["127.0.0.1"])) == 200
        assert proxy.connections == 0


def test_start_up_fetch_pins_the_address_too(example_api: ExampleApi) -> None:
    origin, egress = named(example_api)
    assert guarded_get(egress, f"{origin}/health", resolver=Resolver(["127.0.0.1"]).sync) == b'{"status":"ok"}'
    with start_up_failure(EgressDeniedError):
        guarded_get(egress, f"{origin}/health", resolver=Resolver(["169.254.169.254"]).sync)


async def test_model_client_sends_only_allowlisted_headers(example_api: ExampleApi) -> None:
    egress = EgressSettings(allow=(example_api.url,))
    async with guarded_httpx2_client(egress) as client:
        response = await client.get(
            f"{example_api.url}/health", headers={"X-Leak": "1", "OpenAI-Organization": "org", "Accept": "*/*"}
        )
    assert response.status_code == 200
    assert response.request.headers.get("x-leak") is None
    assert response.request.headers.get("openai-organization") is None
    assert set(response.request.headers) <= MODEL_HEADERS


# --- One guard for every client: each refuses and fails with its own library's errors -------------------------

FACES = [*STACKS, pytest.param("httpx-sync", id="httpx-sync")]
LIBRARY = {"httpx": httpx, "httpx-sync": httpx, "httpx2": httpx2}
REFUSAL = {"httpx": EgressDeniedError, "httpx-sync": EgressDeniedError, "httpx2": Httpx2EgressDeniedError}


async def fetch_on(face: str, egress: EgressSettings, url: str, resolver: Resolver) -> int:
    if face != "httpx-sync":
        return await fetch(face, egress, url, resolver)
    with guarded_client(egress, resolver=resolver.sync) as client:
        return client.get(url).status_code


@pytest.mark.parametrize("face", FACES)
async def test_forbidden_address_is_refused_with_the_clients_own_error(example_api: ExampleApi, face: str) -> None:
    origin, egress = named(example_api)
    with pytest.raises(REFUSAL[face]) as refused:
        await fetch_on(face, egress, f"{origin}/health", Resolver(["169.254.169.254"]))
    # A RequestError of the client's own library, so that the caller's handler for that library catches it.
    assert isinstance(refused.value, LIBRARY[face].RequestError)


@pytest.mark.parametrize("face", FACES)
async def test_connect_failure_is_the_clients_own_error(example_api: ExampleApi, face: str) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(LIBRARY[face].ConnectError) as failed:
        await fetch_on(face, EgressSettings(allow=(closed,)), f"{closed}/x", Resolver(["127.0.0.1"]))
    assert type(failed.value) is LIBRARY[face].ConnectError


@pytest.mark.parametrize("face", FACES)
async def test_broken_body_is_the_clients_own_error(face: str) -> None:
    short = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nConnection: close\r\n\r\nshort"
    with RawServer({"/short": short}) as server:
        egress = EgressSettings(allow=(server.url,))
        with pytest.raises(LIBRARY[face].RemoteProtocolError) as failed:
            await fetch_on(face, egress, f"{server.url}/short", Resolver(["127.0.0.1"]))
    assert type(failed.value) is LIBRARY[face].RemoteProtocolError


# --- Pool size, and no state from one request to the next -------------------------------------------------------


async def _concurrently(stack: str, egress: EgressSettings, url: str, count: int) -> None:
    import anyio

    client: httpx.AsyncClient | httpx2.AsyncClient
    client = guarded_async_client(egress) if stack == "httpx" else guarded_httpx2_client(egress, headers=None)
    async with client:
        async with anyio.create_task_group() as group:
            for _ in range(count):
                group.start_soon(client.get, url)


@pytest.mark.parametrize("stack", STACKS)
async def test_pool_holds_egress_pool_size_connections(stack: str) -> None:
    with RawServer(delay=0.3) as server:
        await _concurrently(stack, EgressSettings(allow=(server.url,), pool_size=3), f"{server.url}/x", 8)
    assert server.connections == 8
    assert server.peak == 3


SETS_COOKIES = (
    b"HTTP/1.1 200 OK\r\nSet-Cookie: session=caller-a; Path=/\r\nSet-Cookie: other=1; Domain=127.0.0.1\r\n"
    b"Content-Length: 0\r\nConnection: close\r\n\r\n"
)


@pytest.mark.parametrize("stack", [*STACKS, pytest.param("blocking", id="blocking")])
async def test_client_keeps_no_cookie_from_one_request_for_the_next(example_api: ExampleApi, stack: str) -> None:
    # Cookies ignore ports: a cookie from one 127.0.0.1 service would be sent to every other one.
    with RawServer({"/set": SETS_COOKIES}) as setter:
        egress = EgressSettings(allow=(setter.url, example_api.url))
        if stack == "httpx":
            async with guarded_async_client(egress) as client:
                await client.get(f"{setter.url}/set")
                await client.get(f"{example_api.url}/products")
                assert len(client.cookies) == 0
        elif stack == "httpx2":
            async with guarded_httpx2_client(egress, headers=None) as client2:
                await client2.get(f"{setter.url}/set")
                await client2.get(f"{example_api.url}/products")
                assert len(client2.cookies) == 0
        else:
            with guarded_client(egress) as blocking:
                blocking.get(f"{setter.url}/set")
                blocking.get(f"{example_api.url}/products")
                assert len(blocking.cookies) == 0
    last = [request for request in example_api.seen() if request["path"] == "/products"][-1]
    assert "cookie" not in last["headers"]
