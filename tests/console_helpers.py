"""Shared by the console's tests: a deployment with the console on, the test IdP, and signing in."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from mcp_gateway.devkeys import DevKey
from tests.conftest import ROOT, Deployment, ExampleApi, make_deployment, stop, wait_http

ARTIFACTS = ROOT / "tests" / "artifacts" / "console"  # git-ignored: screenshots for a reviewer

USERS: dict[str, dict[str, Any]] = {
    "ana-auditor": {"roles": ["auditor"], "amr": ["pwd", "otp"]},
    "bob-approver": {"roles": ["breakglass-approver"], "amr": ["pwd", "hwk"]},
    "carl-nobody": {"roles": ["support"], "amr": ["pwd"]},
}


@dataclass(frozen=True)
class Idp:
    url: str


@contextmanager
def running_idp(key_dir: Path, audience: str, port: int) -> Iterator[Idp]:
    """The test OpenID Connect provider on 127.0.0.1:``port``, signing with the key in ``key_dir``."""
    command = [sys.executable, "-m", "tests.oidc_provider", "--port", str(port), "--key-dir", str(key_dir)]
    command += ["--audience", audience, "--users", json.dumps(USERS)]
    process = subprocess.Popen(command, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/.well-known/openid-configuration", process)
        yield Idp(url)
    finally:
        stop(process)


def console_deployment(
    root: Path, api: ExampleApi, key: DevKey, idp_port: int | None = None, **settings: Any
) -> Deployment:
    """A deployment whose IdP (issuer) is the test IdP on ``idp_port`` when given, with IdP sign-in on."""
    if idp_port is not None:
        issuer = f"http://127.0.0.1:{idp_port}"
        settings.setdefault("identity", {})["issuer"] = issuer
        settings.setdefault("egress", {})["allow"] = [api.url, issuer]
        settings.setdefault("console", {})["oidc_client_id"] = "console"
    return make_deployment(root, api, key, **settings)


def sign_in(base: str, token: str) -> httpx.Client:
    """An HTTP client holding a console session made by pasting ``token``."""
    client = httpx.Client(base_url=base, trust_env=False, follow_redirects=False)
    answer = client.post("/console/login", data={"token": token}, headers={"Origin": base})
    assert answer.status_code == 303, answer.text
    return client


def csrf_of(page: str) -> str:
    marker = 'name="csrf" value="'
    start = page.index(marker) + len(marker)
    return page[start : page.index('"', start)]
