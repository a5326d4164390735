"""The egress guard at start-up (JWKS fetch): allowlisted origins only, bounded, no redirects."""

from __future__ import annotations

import httpx
import pytest

from mcp_gateway.config import EgressSettings
from mcp_gateway.egress import EgressDeniedError, guarded_get
from tests.conftest import ExampleApi, free_port


def test_allowlisted_origin_is_fetched(example_api: ExampleApi) -> None:
    body = guarded_get(EgressSettings(allow=(example_api.url,)), f"{example_api.url}/health")
    assert body == b'{"status":"ok"}'


def test_origin_off_the_allowlist_is_refused_before_connecting(example_api: ExampleApi) -> None:
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens: a connection attempt would be ConnectError
    with pytest.raises(EgressDeniedError):
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
    with pytest.raises(EgressDeniedError):
        guarded_get(EgressSettings(allow=(example_api.url,)), url.format(port=port))


def test_response_over_the_cap_is_refused(example_api: ExampleApi) -> None:
    with pytest.raises(httpx.DecodingError):
        guarded_get(EgressSettings(allow=(example_api.url,)), f"{example_api.url}/_seen", max_bytes=1)


def test_error_status_is_an_error(example_api: ExampleApi) -> None:
    with pytest.raises(httpx.HTTPStatusError):
        guarded_get(EgressSettings(allow=(example_api.url,)), f"{example_api.url}/nope")
