"""The console in a real browser: Playwright drives Debian's chromium against the real gateway and a real IdP.

Sign-in goes through the test OpenID Connect provider (authorization code with PKCE) on 127.0.0.1; the walk
visits every page, follows a search row to the call's story, signs out, and saves a screenshot of each page
under tests/artifacts/console/ for a reviewer. Any JavaScript dialog (an injected script running) fails it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError

from mcp_gateway.devkeys import DevKey
from tests.conftest import ExampleApi, HttpGateway, free_port, serving_http
from tests.console_helpers import ARTIFACTS, Idp, console_deployment, running_idp

playwright = pytest.importorskip("playwright.sync_api")

CHROMIUM = shutil.which("chromium")
HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; .ci/run installs it from Debian's packages")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    with playwright.sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def site(
    tmp_path_factory: pytest.TempPathFactory, example_api: ExampleApi, dev_key: DevKey
) -> Iterator[tuple[HttpGateway, Idp]]:
    port = free_port()
    deployment = console_deployment(tmp_path_factory.mktemp("console"), example_api, dev_key, idp_port=port)
    with running_idp(dev_key.key_path.parent, deployment.audience, port) as idp, serving_http(deployment) as served:
        yield served, idp


async def _traffic(served: HttpGateway, issuer: str) -> None:
    """Calls for the trail: one allowed, one refused, and one by a caller whose name is markup."""
    for subject in ("alice", HOSTILE):
        token = served.deployment.mint(subject, ("support",), "internal", issuer=issuer)
        async with (
            create_mcp_http_client(headers={"Authorization": f"Bearer {token}"}) as http,
            Client(streamable_http_client(f"{served.url}/mcp", http_client=http)) as client,
        ):
            await client.call_tool("crm.customer_lookup", {"customer_id": "c-100"})
            with pytest.raises(MCPError):
                await client.call_tool("hr.salary_lookup", {"employee_id": "e-1"})


def _shot(page: object, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)  # type: ignore[attr-defined]
    return path


def test_sign_in_with_the_idp_and_walk_every_page(site: tuple[HttpGateway, Idp], browser: object) -> None:
    # Synchronous: Playwright's sync API refuses to run inside an event loop, so the MCP traffic gets its own.
    served, idp = site
    with ThreadPoolExecutor(1) as thread:
        thread.submit(asyncio.run, _traffic(served, idp.url)).result()
    context = browser.new_context(viewport={"width": 1366, "height": 800})  # type: ignore[attr-defined]
    page = context.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    try:
        page.goto(f"{served.url}/console/")
        assert page.url.endswith("/console/login")
        _shot(page, "1-sign-in")
        page.get_by_role("link", name="Sign in with your organisation's IdP").click()
        assert page.url.startswith(f"{idp.url}/authorize")
        page.get_by_label("User").select_option("ana-auditor")
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(f"{served.url}/console/access")
        assert "Signed in as" in page.inner_text("header")
        assert "ana-auditor" in page.inner_text("header")

        assert page.locator("table.matrix").count() == 1
        assert "role:support" in page.inner_text("table.matrix")
        _shot(page, "2-access")
        page.goto(f"{served.url}/console/access?tool=crm.customer_lookup")
        assert "internal.csv" in page.inner_text("main")

        page.get_by_role("link", name="Audit").click()
        page.wait_for_url(f"{served.url}/console/audit")
        body = page.inner_text("main")
        assert "crm.customer_lookup" in body
        assert '<script>alert("x")</script>' in body  # shown as text: the markup is inert
        _shot(page, "3-audit-search")
        page.get_by_label("Subject").fill("alice")
        page.get_by_role("button", name="Search").click()
        rows = page.locator("main table tbody tr")
        assert rows.count() >= 3
        assert all("alice" in rows.nth(index).inner_text() for index in range(rows.count()))
        rows.first.locator("a").first.click()
        page.wait_for_url(f"{served.url}/console/calls/**")
        assert "One call's story" in page.inner_text("h1")
        _shot(page, "4-call-story")

        page.get_by_role("link", name="Changes").click()
        _shot(page, "5-changes")
        page.get_by_role("link", name="Health").click()
        assert "audit writer" in page.inner_text("main")
        _shot(page, "6-health")

        page.get_by_role("button", name="Sign out").click()
        page.wait_for_url(f"{served.url}/console/login")
        page.goto(f"{served.url}/console/health")
        assert page.url.endswith("/console/login")
    finally:
        context.close()
    assert dialogs == [], "a script ran in the console"


def test_every_page_is_labelled_and_reachable_by_keyboard(site: tuple[HttpGateway, Idp], browser: object) -> None:
    served, _ = site
    context = browser.new_context()  # type: ignore[attr-defined]
    page = context.new_page()
    try:
        page.goto(f"{served.url}/console/login")
        token = served.deployment.mint("ana", ("auditor",), "internal", issuer=site[1].url)
        page.get_by_label("Or paste a token").fill(token)
        page.keyboard.press("Tab")
        page.keyboard.press("Enter")
        page.wait_for_url(f"{served.url}/console/access")
        for path in ("access", "changes", "audit", "health"):
            page.goto(f"{served.url}/console/{path}")
            unlabelled = page.evaluate(
                """() => [...document.querySelectorAll('input:not([type=hidden]), select, textarea')]
                     .filter(e => !e.id || !document.querySelector(`label[for="${e.id}"]`)).map(e => e.name)"""
            )
            assert unlabelled == [], path
            page.keyboard.press("Tab")
            assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    finally:
        context.close()
