"""The console over real HTTP against the real gateway process: sign-in, sessions, CSRF, and hostile input.

The browser walk (the IdP sign-in, every page, screenshots) is in test_console_browser.py.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError

from mcp_gateway.devkeys import DevKey
from tests.conftest import Deployment, ExampleApi, HttpGateway, serving_http
from tests.console_helpers import console_deployment, csrf_of, sign_in

PAGES = ("/console/access", "/console/changes", "/console/audit", "/console/health", "/console/audit/export")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, example_api: ExampleApi, dev_key: DevKey) -> Iterator[HttpGateway]:
    # One gateway for the module: each test signs in afresh, so they share nothing but the process.
    deployment = console_deployment(tmp_path_factory.mktemp("console"), example_api, dev_key, identity={"leeway": 0})
    with serving_http(deployment) as served:
        yield served


@pytest.fixture
def signed_in(site: HttpGateway) -> Iterator[Callable[[str], httpx.Client]]:
    clients: list[httpx.Client] = []

    def open_session(token: str) -> httpx.Client:
        clients.append(sign_in(site.url, token))
        return clients[-1]

    yield open_session
    for client in clients:
        client.close()


def auditor(deployment: Deployment, **overrides: object) -> str:
    return deployment.mint("ana", ("auditor",), "internal", **overrides)


@pytest.mark.parametrize("path", PAGES)
def test_no_session_means_the_sign_in_page(site: HttpGateway, path: str) -> None:
    answer = httpx.get(f"{site.url}{path}", trust_env=False)
    assert answer.status_code == 303
    assert answer.headers["location"] == "/console/login"


def test_a_session_cookie_is_httponly_strict_scoped_and_ends_with_the_token(site: HttpGateway) -> None:
    token = auditor(site.deployment, ttl=120)
    answer = httpx.post(
        f"{site.url}/console/login", data={"token": token}, headers={"Origin": site.url}, trust_env=False
    )
    assert answer.status_code == 303
    cookie = answer.headers["set-cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie or "SameSite=Strict" in cookie
    assert "Path=/console" in cookie
    max_age = int(re.search(r"Max-Age=(\d+)", cookie).group(1))  # type: ignore[union-attr]
    assert 0 < max_age <= 120


def test_every_page_forbids_script_and_framing(site: HttpGateway, signed_in: Callable[[str], httpx.Client]) -> None:
    client = signed_in(auditor(site.deployment))
    for path in PAGES[:4]:
        answer = client.get(path)
        assert answer.status_code == 200, path
        policy = answer.headers["content-security-policy"]
        assert "default-src 'none'" in policy
        assert "script-src" not in policy  # so default-src 'none' forbids every script
        assert "frame-ancestors 'none'" in policy
        assert "<script" not in answer.text.lower()
        assert answer.headers["cache-control"] == "no-store"


@pytest.mark.parametrize(
    ("make", "status", "shown"),
    [
        (lambda d: "not-a-token", 401, "not valid here"),
        (lambda d: d.mint("ana", ("auditor",), "internal", ttl=60, now=time.time() - 3600), 401, "not valid here"),
        (lambda d: d.mint("ana", ("auditor",), "internal", issuer="https://evil.example"), 401, "not valid here"),
        (lambda d: d.mint("ana", ("auditor",), "internal", audience="https://other/mcp"), 401, "not valid here"),
    ],
    ids=["malformed", "expired", "foreign-issuer", "wrong-audience"],
)
def test_an_invalid_token_does_not_sign_in(site: HttpGateway, make, status: int, shown: str) -> None:  # type: ignore[no-untyped-def]
    answer = httpx.post(
        f"{site.url}/console/login",
        data={"token": make(site.deployment)},
        headers={"Origin": site.url},
        trust_env=False,
    )
    assert answer.status_code == status
    assert shown in answer.text
    assert "set-cookie" not in answer.headers


def test_a_token_without_a_console_role_is_refused(site: HttpGateway, signed_in: Callable[[str], httpx.Client]) -> None:
    client = signed_in(site.deployment.mint("carl", ("support",), "internal"))
    answer = client.get("/console/access")
    assert answer.status_code == 403
    assert "none of the console&#39;s roles" in answer.text


def test_the_session_ends_when_the_token_expires(site: HttpGateway, signed_in: Callable[[str], httpx.Client]) -> None:
    client = signed_in(auditor(site.deployment, ttl=2))
    assert client.get("/console/health").status_code == 200
    time.sleep(2.5)
    assert client.get("/console/health").status_code == 303


@pytest.mark.parametrize("csrf", [None, "forged", ""], ids=["missing", "forged", "empty"])
def test_a_post_without_the_sessions_csrf_token_is_refused(
    site: HttpGateway, signed_in: Callable[[str], httpx.Client], csrf: str | None
) -> None:
    client = signed_in(auditor(site.deployment))
    data = {} if csrf is None else {"csrf": csrf}
    answer = client.post("/console/logout", data=data, headers={"Origin": site.url})
    assert answer.status_code == 403
    assert "CSRF" in answer.text
    assert client.get("/console/health").status_code == 200  # still signed in: the forged sign-out did nothing


def test_a_cross_origin_post_is_refused_even_with_the_right_csrf_token(
    site: HttpGateway, signed_in: Callable[[str], httpx.Client]
) -> None:
    client = signed_in(auditor(site.deployment))
    csrf = csrf_of(client.get("/console/health").text)
    answer = client.post("/console/logout", data={"csrf": csrf}, headers={"Origin": "http://evil.example"})
    assert answer.status_code == 403
    assert client.get("/console/health").status_code == 200
    assert client.post("/console/logout", data={"csrf": csrf}, headers={"Origin": site.url}).status_code == 303
    assert client.get("/console/health").status_code == 303


def test_a_cross_origin_token_sign_in_is_refused(site: HttpGateway) -> None:
    answer = httpx.post(
        f"{site.url}/console/login",
        data={"token": auditor(site.deployment)},
        headers={"Origin": "http://evil.example"},
        trust_env=False,
    )
    assert answer.status_code == 403
    assert "set-cookie" not in answer.headers


def test_a_request_for_another_host_name_is_refused(site: HttpGateway) -> None:
    answer = httpx.get(f"{site.url}/console/login", headers={"Host": "rebound.example:80"}, trust_env=False)
    assert answer.status_code == 421


async def test_script_in_a_subject_or_tool_name_renders_inert(
    site: HttpGateway, signed_in: Callable[[str], httpx.Client]
) -> None:
    hostile = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    token = site.deployment.mint(hostile[:60], ("support",), "internal")
    async with (
        create_mcp_http_client(headers={"Authorization": f"Bearer {token}"}) as http,
        Client(streamable_http_client(f"{site.url}/mcp", http_client=http)) as client,
    ):
        with pytest.raises(MCPError):
            await client.call_tool("crm.<img src=x onerror=alert(1)>", {})
        await client.call_tool("crm.customer_lookup", {"customer_id": "c-100", "x": "<script>alert(2)</script>"})
    viewer = signed_in(auditor(site.deployment))
    for path in ("/console/audit", "/console/audit?subject=" + httpx.QueryParams({"s": hostile[:60]})["s"]):
        body = viewer.get(path).text
        assert "<script>alert" not in body
        assert "<img src=x" not in body
        assert "&lt;script&gt;" in body or "&lt;img" in body
